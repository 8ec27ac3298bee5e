"""Benchmark: the encoding and scoring jobs on local[2] against direct calls in one process.

Needs the demo's tables and model (run `make demo` first). For the scored dates it times
  encode_job   - build_examples_frame (Spark, mapInArrow) written to the noop sink
  encode_direct- the same sequence rows encoded by tensorize in one process
  score_job    - score_frame (examples + model in mapInArrow, model cached per worker) to noop
  score_direct - the same model on the same encoded tensors, one process, batch 4096
  score_udf    - the pandas UDF (tsa_lib.scoring.udf.score_udf) on the same examples to noop
                 (scores only; the job also computes the explanations)
Run: PYTHONPATH=. .venv/bin/python bench/bench_scoring.py [--config conf/local.yaml]
Results are appended to bench/results/scoring.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

from tsa_lib.config import load_config  # noqa: E402
from tsa_lib.features.tensorize import encode_engineered, encode_sequence_batch, examples_to_batch  # noqa: E402
from tsa_lib.scoring.job import resolve_model_path, score_frame  # noqa: E402
from tsa_lib.scoring.predict import predict  # noqa: E402
from tsa_lib.scoring.udf import UDF_COLUMNS, score_udf  # noqa: E402
from tsa_lib.spark.examples import build_examples_frame  # noqa: E402
from tsa_lib.spark.session import get_spark  # noqa: E402
from tsa_lib.training.artifact import load_artifact  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--start-date", default="2026-02-20")
    p.add_argument("--end-date", default="2026-03-01")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--model", default=None, help="model artifact (default: the config's LATEST)")
    args = p.parse_args()
    cfg = load_config(args.config)
    a, b = dt.date.fromisoformat(args.start_date), dt.date.fromisoformat(args.end_date)
    dates = [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]
    spark = get_spark(cfg.spark, cfg.storage)
    loaded = load_artifact(resolve_model_path(spark, cfg, args.model))
    enc = loaded.encoders
    res: dict[str, object] = {"model": f"{loaded.name}/{loaded.version}", "dates": [args.start_date, args.end_date],
                              "model_type": loaded.config.model_type, "members": loaded.config.members}

    def best(fn) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    frame = build_examples_frame(spark, cfg, enc, dates, "bench", with_history_ids=True)
    n = frame.examples.count()
    res["rows"] = n
    res["encode_job_s"] = best(lambda: frame.examples.write.format("noop").mode("overwrite").save())
    seqs = {e: spark.read.format("delta").load(cfg.storage.table_path(f"sequences_{e}"))
            .filter(f"ds >= '{a}' AND ds <= '{b}'").toArrow() for e in ("customer", "card")}
    examples = frame.examples.toArrow()
    eng_raw = _eng_table(examples, enc)
    res["encode_direct_s"] = best(lambda: ([encode_sequence_batch(seqs[e], enc, True) for e in seqs],
                                           encode_engineered(eng_raw, enc)))
    scored, _ = score_frame(spark, cfg, loaded, dates, "bench")
    res["score_job_s"] = best(lambda: scored.write.format("noop").mode("overwrite").save())
    udf = score_udf(loaded.path, batch_size=cfg.scoring.batch_size, threads=cfg.scoring.torch_threads)
    by_udf = frame.examples.select("order_id", udf(*UDF_COLUMNS).alias("score"))
    res["score_udf_s"] = best(lambda: by_udf.write.format("noop").mode("overwrite").save())
    mb = examples_to_batch(examples, enc)
    torch.set_num_threads(2)
    res["score_direct_s"] = best(lambda: predict(loaded, mb, 4096))
    spark.stop()
    for k in ("encode_job", "encode_direct", "score_job", "score_direct", "score_udf"):
        res[f"{k}_rows_per_s"] = round(n / float(res[f"{k}_s"]))  # type: ignore[arg-type]
    res["encode_job_over_direct"] = round(float(res["encode_job_rows_per_s"]) / float(res["encode_direct_rows_per_s"]), 3)  # type: ignore[arg-type]
    res["score_job_over_direct"] = round(float(res["score_job_rows_per_s"]) / float(res["score_direct_rows_per_s"]), 3)  # type: ignore[arg-type]
    res["score_job_over_udf"] = round(float(res["score_job_rows_per_s"]) / float(res["score_udf_rows_per_s"]), 3)  # type: ignore[arg-type]
    path = write_result("scoring", res)
    print(res)
    print(f"appended to {path}")


def _eng_table(examples, enc):  # type: ignore[no-untyped-def]
    """Engineered values are already encoded in `examples`; time the encoder on same-sized raw columns."""
    import pyarrow as pa

    n = examples.num_rows
    return pa.table({c: pa.array([1.0] * n, pa.float64()) for c in enc.engineered})


if __name__ == "__main__":
    main()
