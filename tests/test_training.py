"""Training: a real 2-process CPU torchrun (gloo) on a tiny planted-pattern examples table,
kill-and-resume equality, a safe artifact, and clear errors before any training."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from tsa_lib.config import PROJECT_ROOT, load_config
from tsa_lib.features.encoders import Encoders, Scaler
from tsa_lib.training.data import DataError

L, NC = 5, 2          # max_len 4 + target; two categorical columns
MARK = 3              # the planted token: "a risky merchant appeared in the customer's history"


def _encoders() -> Encoders:
    return Encoders(version="enc-train-test", config_hash="x", window_start="2026-01-01", window_end="2026-01-09",
                    categorical=("mcc", "channel"), numerical=("amount",), engineered=("age",),
                    vocab={"mcc": ("a", "risky", "b", "c"), "channel": ("web", "pos")},
                    numeric_scalers={"amount": Scaler(0.0, 1.0)}, engineered_scalers={"age": Scaler(0.0, 1.0)},
                    max_len=L - 1, max_history_days=30.0)


def _examples(n: int = 1400, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    c_len = rng.integers(0, L, n)
    cat = rng.choice([2, 4, 5], size=(n, L, NC))           # never the marker by chance
    cat[:, :, 1] = rng.choice([6, 7], size=(n, L))
    y = (rng.random(n) < 0.25).astype(np.int32)
    has_hist = c_len > 0
    y = y * has_hist
    for i in np.flatnonzero(y):                              # plant the marker somewhere in the history
        pos = rng.integers(L - 1 - c_len[i], L - 1)
        cat[i, pos, 0] = MARK
    mask = np.arange(L)[None, :] >= (L - 1 - c_len[:, None])
    cat = np.where(mask[:, :, None], cat, 0)
    num = np.where(mask[:, :, None], rng.random((n, L, 1)), 0).astype(np.float32)
    dtt = np.where(mask, rng.random((n, L)) * 5, 0).astype(np.float32)
    dtt[:, -1] = 0
    days = np.sort(rng.integers(0, 12, n))
    ts = [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=int(d), seconds=i)
          for i, d in enumerate(days)]

    def fl(a: np.ndarray, typ: pa.DataType) -> pa.ListArray:
        w = int(np.prod(a.shape[1:]))
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * w), pa.array(a.reshape(-1), typ))

    return pa.table({
        "order_id": [f"o{i}" for i in range(n)], "customer_id": [f"c{i % 50}" for i in range(n)],
        "card_id": [f"k{i % 70}" for i in range(n)], "event_time": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "label": pa.array(y, pa.int32()),
        "c_cat": fl(cat.astype(np.int32), pa.int32()), "c_num": fl(num, pa.float32()), "c_dt": fl(dtt, pa.float32()),
        "c_len": pa.array(c_len.astype(np.int32)),
        "k_cat": fl(np.zeros((n, L, NC), np.int32), pa.int32()), "k_num": fl(np.zeros((n, L, 1), np.float32),
                                                                           pa.float32()),
        "k_dt": fl(np.zeros((n, L), np.float32), pa.float32()), "k_len": pa.array(np.full(n, -1, np.int32)),
        "eng": fl(rng.random((n, 1)).astype(np.float32), pa.float32()),
        "encoder_version": ["enc-train-test"] * n, "run_id": ["r"] * n,
        "ds": pa.array([t.date() for t in ts], pa.date32()),
    })


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import deltalake

    root = tmp_path_factory.mktemp("train")
    wh = root / "wh"
    deltalake.write_deltalake(str(wh / "traintest" / "examples"), _examples(), partition_by=["ds"])
    _encoders().save(root / "artifacts" / "encoders")
    base = yaml.safe_load((PROJECT_ROOT / "conf" / "local.yaml").read_text())
    base["storage"] = {"warehouse": str(wh), "database": "traintest", "artifacts": str(root / "artifacts")}
    base["tracking"] = {"mlflow": True, "mlflow_uri": str(root / "mlruns")}   # tracked from torchrun's rank 0
    base["columns"].update(categorical=["mcc", "channel"], numerical=["amount"], engineered=["age"])
    base["quality"] = {}
    base["encoders"] = {}
    base["training"] = {"model_preset": "tiny", "model_name": "t", "train_start": "2026-01-01",
                        "train_end": "2026-01-09", "valid_start": "2026-01-10", "valid_end": "2026-01-12",
                        "epochs": 3, "batch_size": 64, "lr": 0.005, "warmup_steps": 5, "patience": 5,
                        "log_every_steps": 5, "checkpoint_every_steps": 7, "class_weighting": "sqrt"}
    cfg = root / "train.yaml"
    cfg.write_text(yaml.safe_dump(base))
    return {"root": root, "cfg": cfg}


def _torchrun(cfg: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), str(PROJECT_ROOT / "jobs" / "train.py"), "--config", str(cfg), "--run-dir",
           str(run_dir), *extra]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)


def _artifact(out: str) -> Path:
    line = [x for x in out.splitlines() if x.startswith("model artifact: ")]
    assert line, out
    return Path(line[-1].split(": ", 1)[1])


@pytest.fixture(scope="module")
def uninterrupted(setup: dict[str, Any]) -> Path:
    r = _torchrun(setup["cfg"], setup["root"] / "run_a")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return _artifact(r.stdout)


def test_two_rank_torchrun_trains_in_sync(uninterrupted: Path) -> None:
    from tsa_lib.training.artifact import load_artifact

    man = json.loads((uninterrupted / "manifest.json").read_text())
    assert man["world_size"] == 2 and man["ranks_in_sync"] is True
    assert man["data"]["examples_version"] == 0 and man["encoders_version"] == "enc-train-test"
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert len(metrics["history"]) == 3
    assert metrics["best"]["roc_auc"] > 0.8, metrics   # planted sequential pattern, clearly above chance
    loaded = load_artifact(uninterrupted)               # safetensors + JSON: nothing unpickled
    assert loaded.config.seq_len == L and loaded.config.vocab_size == _encoders().vocab_size
    assert loaded.name == "t" and loaded.version == uninterrupted.name


def test_kill_and_resume_reaches_the_same_result(setup: dict[str, Any], uninterrupted: Path) -> None:
    run_b = setup["root"] / "run_b"
    r = _torchrun(setup["cfg"], run_b, env={"TSA_TEST_STOP_AFTER_EPOCH": "1"})
    assert r.returncode != 0 and (run_b / "checkpoints" / "last.pt").is_file()
    r = _torchrun(setup["cfg"], run_b, "--resume")
    assert r.returncode == 0, r.stderr[-5000:]
    resumed = _artifact(r.stdout)
    a = json.loads((uninterrupted / "manifest.json").read_text())
    b = json.loads((resumed / "manifest.json").read_text())
    assert b["final_weights_digest"] == a["final_weights_digest"]
    ma = json.loads((uninterrupted / "metrics.json").read_text())["history"]
    mb = json.loads((resumed / "metrics.json").read_text())["history"]
    for x, y in zip(ma, mb):
        assert x["roc_auc"] == pytest.approx(y["roc_auc"], abs=1e-9)
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], rel=1e-9)


def test_errors_before_training(setup: dict[str, Any], tmp_path: Path) -> None:
    from tsa_lib.config import ConfigError
    from tsa_lib.features.encoders import EncoderError
    from tsa_lib.training.trainer import plan_training

    cfg = load_config(setup["cfg"])
    plan = plan_training(cfg)
    assert plan.model_cfg.n_cat_features == 2 and plan.train == (dt.date(2026, 1, 1), dt.date(2026, 1, 9))
    no_window = cfg.replace(training=cfg.training.__class__(model_preset="tiny"))
    with pytest.raises(ConfigError, match=r"set training.window \{train_days, valid_days\} .*'training.train_start'"):
        plan_training(no_window)
    other = cfg.replace(storage=cfg.storage.__class__(warehouse=str(tmp_path), database="none",
                                                      artifacts=cfg.storage.artifacts))
    with pytest.raises(DataError, match="cannot be opened"):
        plan_training(other)
    with pytest.raises(EncoderError, match="does not exist"):
        plan_training(cfg, encoders=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="valid_start"):
        load_config(setup["cfg"], overrides={"training": {"valid_start": "2026-01-05"}})
    from tsa_lib.training.trainer import Dist, train

    import torch

    few = plan_training(load_config(setup["cfg"], overrides={"training": {"min_known_labels": 100_000}}))
    with pytest.raises(DataError, match=r"training window 2026-01-01..2026-01-09 has \d+ known labels, fewer than "
                                        r"training.min_known_labels=100000"):
        train(few, d=Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    with pytest.raises(ConfigError, match="model preset 'huge' not found"):
        plan_training(cfg.replace(training=cfg.training.__class__(**{**cfg.training.__dict__,
                                                                      "model_preset": "huge"})))


def test_rank_shards_partition_the_window(setup: dict[str, Any]) -> None:
    from tsa_lib.training.data import read_examples

    path = str(setup["root"] / "wh" / "traintest" / "examples")
    a, b = dt.date(2026, 1, 1), dt.date(2026, 1, 9)
    full = read_examples(path, 0, a, b, _encoders())
    shards = [read_examples(path, 0, a, b, _encoders(), rank=r, world_size=2) for r in (0, 1)]
    ids = [set(s.order_id) for s in shards]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(full.order_id)
    assert min(len(s) for s in shards) > 0.3 * len(full)       # whole files per rank, roughly balanced
    few = read_examples(path, 0, dt.date(2026, 1, 10), dt.date(2026, 1, 10), _encoders(), rank=1, world_size=4)
    assert len(few) > 0                                           # fewer files than ranks: rows are split
    with pytest.raises(DataError, match="no rows for 2027-01-01"):
        read_examples(path, 0, dt.date(2027, 1, 1), dt.date(2027, 1, 2), _encoders())


def test_member_average_torchrun(setup: dict[str, Any], tmp_path: Path) -> None:
    """A ``members: 2`` preset through the real 2-rank job: ranks in sync, the artifact loads as the
    member average, and the pair learns the planted pattern."""
    from tsa_lib.models.config import load_model_preset
    from tsa_lib.models.members import MemberAverage
    from tsa_lib.training.artifact import load_artifact

    preset = tmp_path / "tiny_x2.yaml"
    preset.write_text(yaml.safe_dump({**load_model_preset("tiny").to_dict(), "members": 2}))
    base = yaml.safe_load(setup["cfg"].read_text())
    base["training"].update(model_preset=str(preset), model_name="t2")
    cfg = setup["root"] / "train_members.yaml"
    cfg.write_text(yaml.safe_dump(base))
    r = _torchrun(cfg, setup["root"] / "run_members")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    art = _artifact(r.stdout)
    man = json.loads((art / "manifest.json").read_text())
    assert man["world_size"] == 2 and man["ranks_in_sync"] is True
    loaded = load_artifact(art)
    assert isinstance(loaded.model, MemberAverage) and loaded.config.members == 2
    metrics = json.loads((art / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and metrics["best"]["roc_auc"] > 0.8, metrics


def test_examples_of_another_night_are_refused(tmp_path: Path) -> None:
    """Training for a night reads only examples whose labels were taken at the end of that night."""
    import deltalake

    from tsa_lib.schedule import as_of
    from tsa_lib.training.data import read_examples

    t = _examples(200)
    t = t.append_column("labels_as_of", pa.array([as_of(dt.date(2026, 1, 12))] * t.num_rows,
                                                 pa.timestamp("us", tz="UTC")))
    path = str(tmp_path / "examples")
    deltalake.write_deltalake(path, t, partition_by=["ds"])
    a, b = dt.date(2026, 1, 1), dt.date(2026, 1, 9)
    assert len(read_examples(path, 0, a, b, _encoders(), labels_as_of=as_of(dt.date(2026, 1, 12)))) > 0
    with pytest.raises(DataError, match=r"carry labels known before \['2026-01-13 00:00:00\+00:00'\], not before "
                                        r"2026-01-14 00:00:00\+00:00: re-run jobs/build_examples.py --run-date "
                                        r"2026-01-13 --window training"):
        read_examples(path, 0, a, b, _encoders(), labels_as_of=as_of(dt.date(2026, 1, 13)))


# ---- data: compact dtypes, streaming ----------------------------------------------------------------------

def _rows(batches: Any) -> list[tuple[float, ...]]:
    """Each batch row as a tuple of its engineered value and label (the engineered value is unique)."""
    out: list[tuple[float, ...]] = []
    for b in batches:
        out += [(float(e), int(y)) for e, y in zip(b["eng"][:, 0].tolist(), b["label"].tolist())]
    return out


def test_compact_dtypes_on_the_host_and_model_dtypes_in_batches(setup: dict[str, Any]) -> None:
    import torch

    from tsa_lib.training.data import TensorData, cat_dtype, labeled, read_examples

    assert cat_dtype(32_767) is np.int16 and cat_dtype(32_768) is np.int32
    path = str(setup["root"] / "wh" / "traintest" / "examples")
    batch = read_examples(path, 0, dt.date(2026, 1, 1), dt.date(2026, 1, 9), _encoders())
    data = TensorData.from_batch(labeled(batch), torch.device("cpu"), _encoders().vocab_size)
    t = data.tensors
    assert t["c_cat"].dtype == torch.int16 and t["c_mask"].dtype == torch.bool and t["label"].dtype == torch.int8
    wide = TensorData.from_batch(labeled(batch), torch.device("cpu"), 40_000)
    assert wide.tensors["k_cat"].dtype == torch.int32
    b = next(data.batches(16, 0, 0))
    assert b["c_cat"].dtype == torch.int32 and b["label"].dtype == torch.int64
    first = torch.randperm(data.n, generator=torch.Generator().manual_seed(0))[:16].numpy()
    assert np.array_equal(b["c_cat"].numpy(), labeled(batch).c_cat[first])    # values survive the narrowing
    assert data.labels().dtype == np.int64 and (data.labels() >= 0).all()


@pytest.mark.parametrize("world", [1, 2, 5])
def test_streamed_epoch_holds_every_labeled_row_exactly_once(setup: dict[str, Any], world: int) -> None:
    """Streaming from the files (chunks of 37 rows) gives each labeled row of each rank's shard once per
    epoch, the ranks partition the window (by file, or by row with more ranks than files), an epoch's
    order is reproducible, epochs differ, and a resumed epoch continues with exactly the same batches."""
    import torch

    from tsa_lib.training.data import Shard, StreamedData, labeled, read_examples

    path = str(setup["root"] / "wh" / "traintest" / "examples")
    a, b = dt.date(2026, 1, 8), dt.date(2026, 1, 9)       # two files: 5 ranks split rows
    full = labeled(read_examples(path, 0, a, b, _encoders()))
    expect = sorted((float(e), int(y)) for e, y in zip(full.eng[:, 0], full.label))
    seen: list[tuple[float, ...]] = []
    for rank in range(world):
        sh = Shard.open(path, 0, a, b, rank, world)
        assert sh.by_file == (1 < world <= 2)
        data = StreamedData(sh, _encoders(), torch.device("cpu"), chunk_rows=37)
        epoch0 = list(data.batches(16, seed=3, epoch=0))
        rows = _rows(epoch0)
        assert len(rows) == data.n and sorted(y for _, y in rows) == sorted(data.labels())
        assert [len(x["label"]) for x in epoch0[:-1]] == [16] * (len(epoch0) - 1)
        assert _rows(data.batches(16, seed=3, epoch=0)) == rows
        if data.n > 40:
            assert _rows(data.batches(16, seed=3, epoch=1)) != rows
        assert _rows(data.batches(16, seed=3, epoch=0, start_step=2)) == _rows(epoch0[2:])
        dropped = list(data.batches(16, seed=3, epoch=0, drop_last=True))
        assert len(dropped) == data.n // 16 and _rows(dropped) == rows[:16 * (data.n // 16)]
        seen += rows
    assert sorted(seen) == expect                         # nothing lost, nothing twice


def test_load_training_data_streams_what_does_not_fit(setup: dict[str, Any]) -> None:
    import torch

    from tsa_lib.training.data import Shard, StreamedData, TensorData, bytes_per_row, load_training_data

    path = str(setup["root"] / "wh" / "traintest" / "examples")
    sh = Shard.open(path, 0, dt.date(2026, 1, 1), dt.date(2026, 1, 9))
    big, rows = load_training_data(sh, _encoders(), torch.device("cpu"), 1 << 30)
    small, rows2 = load_training_data(sh, _encoders(), torch.device("cpu"), 100 * bytes_per_row(_encoders()) * 3)
    assert isinstance(big, TensorData) and isinstance(small, StreamedData)
    assert rows == rows2 == sh.count_rows() and small.n == big.n and sorted(small.labels()) == sorted(big.labels())
    assert small.chunk_rows == 25
    with pytest.raises(DataError, match="no rows for 2027-01-01"):
        StreamedData(Shard.open(path, 0, dt.date(2027, 1, 1), dt.date(2027, 1, 2)), _encoders(),
                     torch.device("cpu"), 10)


# ---- the training loop: no host sync inside a step; exact mid-epoch resume with dropout, streamed ------------

def _preset(tmp: Path, **changes: Any) -> Path:
    from tsa_lib.models.config import load_model_preset

    path = tmp / f"tiny-{abs(hash(json.dumps(changes, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump({**load_model_preset("tiny").to_dict(), **changes}))
    return path


@pytest.mark.parametrize("use_moe", [False, True])
def test_a_training_step_reads_nothing_back_from_the_device(setup: dict[str, Any], tmp_path: Path,
                                                           use_moe: bool) -> None:
    """Six training steps read one value back to Python: the summed loss, at the end of the logging
    interval.  Every ``float(t)``, ``t.item()``, ``if t:`` or ``t.tolist()`` of a one-element tensor
    dispatches ``aten::_local_scalar_dense`` (a host sync on a GPU); the only others allowed are the
    reads of the optimiser's step counters, which the CPU AdamW keeps on the host (the fused CUDA
    AdamW reads none).  The same holds with the MoE."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from tsa_lib.training.trainer import Dist, _set_up, plan_training, train_steps

    overrides = {"training": {"model_preset": str(_preset(tmp_path, dropout=0.1, use_moe=use_moe)),
                              "log_every_steps": 6, "max_steps_per_epoch": 6}, "tracking": {"mlflow": False}}
    plan = plan_training(load_config(setup["cfg"], overrides=overrides), run_dir=str(tmp_path / "run"))
    s = _set_up(plan, False, Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu")), None)
    s.loss_model.train()
    read: list[torch.Tensor] = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
                read.append(args[0])
            return func(*args, **(kwargs or {}))

    with Reads():
        tot = train_steps(s)
    counters = [state["step"] for state in s.opt.state.values()]
    others = [t for t in read if not any(t is c for c in counters)]
    assert tot.steps == 6 and s.st.global_step == 6
    assert len(others) == 1 and others[0].shape == (), [(t.shape, t.dtype) for t in others]
    assert len(read) > len(others)          # the check sees reads: the counters' are there


def _single(cfg: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, str(PROJECT_ROOT / "jobs" / "train.py"), "--config", str(cfg), "--run-dir", str(run_dir),
           *extra]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)


def test_streamed_training_killed_mid_epoch_resumes_exactly(setup: dict[str, Any], tmp_path: Path) -> None:
    """One process, dropout on, a host memory budget far below the window (so the examples are
    streamed from the files): killed right after the checkpoint of step 10 (mid-epoch) and resumed, it
    ends with the weights of the run never stopped, and it still learns the planted pattern."""
    base = yaml.safe_load(setup["cfg"].read_text())
    base["training"].update(model_preset=str(_preset(tmp_path, dropout=0.1)), model_name="ts", host_memory_mb=0.05,
                            checkpoint_every_steps=10)
    base["tracking"] = {"mlflow": False}
    cfg = tmp_path / "stream.yaml"
    cfg.write_text(yaml.safe_dump(base))
    r = _single(cfg, tmp_path / "a")
    assert r.returncode == 0, r.stderr[-5000:]
    assert "streaming them from the files" in r.stderr and "streamed from the files" in r.stderr
    whole = _artifact(r.stdout)
    r = _single(cfg, tmp_path / "b", env={"TSA_TEST_STOP_AFTER_STEP": "10"})
    assert r.returncode == 17 and (tmp_path / "b" / "checkpoints" / "last.pt").is_file(), r.stderr[-3000:]
    r = _single(cfg, tmp_path / "b", "--resume")
    assert r.returncode == 0, r.stderr[-5000:]
    assert "resumed from" in r.stderr and "epoch 0 step 10" in r.stderr
    a = json.loads((whole / "manifest.json").read_text())
    b = json.loads((_artifact(r.stdout) / "manifest.json").read_text())
    assert b["final_weights_digest"] == a["final_weights_digest"]
    assert b["data"]["train_rows"] == a["data"]["train_rows"] > 0
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["best"]["roc_auc"] > 0.8, metrics


def test_a_model_and_encoders_that_disagree_are_named() -> None:
    from tsa_lib.errors import ArtifactError
    from tsa_lib.models.config import DataSizes, load_model_preset, model_config
    from tsa_lib.training.artifact import check_compatible

    enc = _encoders()
    cfg = model_config(load_model_preset("tiny"), enc)
    assert cfg.sizes() == DataSizes.of(enc) == DataSizes(NC, 1, 1, enc.vocab_size, L)
    check_compatible(cfg, enc, "scoring")
    with pytest.raises(ArtifactError, match=rf"scoring: model config and encoders disagree: vocab_size model=99 "
                                            rf"encoders={enc.vocab_size}, seq_len model=9 encoders={L}"):
        check_compatible(cfg.replace(vocab_size=99, seq_len=9), enc, "scoring")
