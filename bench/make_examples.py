"""Write a synthetic ``examples`` Delta table, its encoders and a training config, without Spark.

For training benchmarks on machines without Java (GPU nodes): contract-shaped rows
(left-padded customer and card windows with random lengths, some orders without card
history, about 2% fraud) at the sizes asked for, by default the seed design's
(20 categorical with 50 values each, 15 numerical, 100 engineered, 50 past orders).

    python bench/make_examples.py --root /tmp/tsa_bench --rows 300000
    -> /tmp/tsa_bench/bench.yaml  (storage points at the table and the encoders; training dates set)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsa_lib.features.encoders import Encoders, Scaler  # noqa: E402

START = dt.date(2026, 1, 1)


def encoders(n_cat: int, n_num: int, n_eng: int, max_len: int, values: int) -> Encoders:
    cats = tuple(f"cat{i}" for i in range(n_cat))
    nums = tuple(f"num{i}" for i in range(n_num))
    engs = tuple(f"eng{i}" for i in range(n_eng))
    return Encoders(version="enc-bench", config_hash="bench", window_start=str(START), window_end=str(START),
                    categorical=cats, numerical=nums, engineered=engs,
                    vocab={c: tuple(f"v{j}" for j in range(values)) for c in cats},
                    numeric_scalers={c: Scaler(0.0, 1.0) for c in nums},
                    engineered_scalers={c: Scaler(0.0, 1.0) for c in engs}, max_len=max_len, max_history_days=90.0)


def table(enc: Encoders, rows: int, days: int, seed: int, first: int) -> "object":
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    length, nc, nn, ne = enc.seq_len, len(enc.cat_inputs), len(enc.num_inputs), len(enc.engineered)

    def window(empty: float) -> tuple[np.ndarray, ...]:
        lens = rng.integers(0, length, rows).astype(np.int32)
        lens[rng.random(rows) < empty] = -1
        mask = np.arange(length)[None, :] >= (length - 1 - lens[:, None])
        cat = np.where(mask[:, :, None], rng.integers(2, enc.vocab_size, (rows, length, nc), dtype=np.int32), 0)
        num = np.where(mask[:, :, None], rng.standard_normal((rows, length, nn), dtype=np.float32), 0)
        dtt = np.where(mask, np.sort(rng.random((rows, length), dtype=np.float32) * 30, axis=1)[:, ::-1], 0)
        return cat.astype(np.int32), num.astype(np.float32), dtt.astype(np.float32), lens

    def lists(a: np.ndarray, typ: "pa.DataType") -> "pa.ListArray":
        w = int(np.prod(a.shape[1:]))
        return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * w), pa.array(a.reshape(-1), typ))

    c_cat, c_num, c_dt, c_len = window(0.0)
    k_cat, k_num, k_dt, k_len = window(0.2)
    day = np.sort(rng.integers(0, days, rows))
    ts = (np.datetime64(START) + day.astype("timedelta64[D]")).astype("datetime64[us]") + \
        rng.integers(0, 86_400_000_000, rows).astype("timedelta64[us]")
    ids = np.arange(first, first + rows)
    return pa.table({
        "order_id": pa.array([f"o{i}" for i in ids]), "customer_id": pa.array([f"c{i % 50_000}" for i in ids]),
        "card_id": pa.array([f"k{i % 70_000}" for i in ids]), "event_time": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "label": pa.array((rng.random(rows) < 0.02).astype(np.int32)),
        "c_cat": lists(c_cat, pa.int32()), "c_num": lists(c_num, pa.float32()), "c_dt": lists(c_dt, pa.float32()),
        "c_len": pa.array(c_len), "k_cat": lists(k_cat, pa.int32()), "k_num": lists(k_num, pa.float32()),
        "k_dt": lists(k_dt, pa.float32()), "k_len": pa.array(k_len),
        "eng": lists(rng.standard_normal((rows, ne), dtype=np.float32), pa.float32()),
        "encoder_version": pa.array([enc.version] * rows), "run_id": pa.array(["bench"] * rows),
        "ds": pa.array(np.datetime64(START) + day.astype("timedelta64[D]"), pa.date32()),
    })


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder for the table, the encoders and bench.yaml")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--days", type=int, default=10, help="the last two are the validation window")
    p.add_argument("--cat", type=int, default=20)
    p.add_argument("--num", type=int, default=15)
    p.add_argument("--eng", type=int, default=100)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--values", type=int, default=50, help="values per categorical column")
    args = p.parse_args(argv)
    if args.days < 3 or args.rows < 10:
        p.error(f"--days must be >= 3 and --rows >= 10, got {args.days} and {args.rows}")
    import deltalake

    root = Path(args.root).resolve()
    enc = encoders(args.cat, args.num, args.eng, args.max_len, args.values)
    enc.save(root / "artifacts" / "encoders")
    path = root / "wh" / "bench" / "examples"
    chunk = 100_000
    for i, first in enumerate(range(0, args.rows, chunk)):
        deltalake.write_deltalake(str(path), table(enc, min(chunk, args.rows - first), args.days, i, first),
                                  partition_by=["ds"], mode="append")
    cfg = yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())
    cfg["storage"] = {"warehouse": str(root / "wh"), "database": "bench", "artifacts": str(root / "artifacts")}
    cfg["tracking"] = {"mlflow": False}
    last = START + dt.timedelta(days=args.days - 1)
    cfg["training"] = {**cfg.get("training", {}), "window": None, "train_start": str(START),
                       "train_end": str(last - dt.timedelta(days=2)), "valid_start": str(last - dt.timedelta(days=1)),
                       "valid_end": str(last), "min_known_labels": 1}
    (root / "bench.yaml").write_text(yaml.safe_dump(cfg))
    print(f"{args.rows} rows in {path}; config {root / 'bench.yaml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
