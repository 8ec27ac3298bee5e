"""The training loop: DDP (NCCL on GPUs, gloo on CPU), AMP, checkpoint/resume, early stopping.

Launched by ``torchrun --nproc-per-node N jobs/train.py --config FILE`` (or as a
plain process: one rank).  The model stays free of distribution concerns: DDP
wrapping happens here.  Only rank 0 logs progress and writes files.

Determinism: batches come from a permutation seeded by (seed, epoch) and the
dropout RNG is re-seeded from (seed, epoch, step, rank) wherever a run can resume
(each epoch's start and each checkpoint), so a run resumed from any checkpoint
takes exactly the steps of a run never stopped.

Throughput: a step reads nothing back from the device (the loss is summed there
and read once per logging interval), the classifier and its loss run as one
module (``LossModel``: one compiled graph, one DDP wrapper), AdamW is fused on
CUDA, and logged rates cover the last interval, with the first one (compilation,
warm-up) reported apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tsa_lib.config import PROJECT_ROOT, SuiteConfig, TrainConfig, to_dict
from tsa_lib.evaluation.metrics import average_precision, recall_at_fpr, roc_auc
from tsa_lib.features.encoders import Encoders, load_encoders
from tsa_lib.models.config import ModelConfig, load_model_preset, model_config
from tsa_lib.models.factory import build_model
from tsa_lib.training.artifact import code_commit, new_model_version, save_artifact
from tsa_lib.schedule import TrainingWindows, training_windows
from tsa_lib.training.data import (
    DataError,
    Shard,
    TrainingData,
    load_training_data,
    model_inputs,
    table_version,
)
from tsa_lib.tracking import TrainingRun, start_training_run

log = logging.getLogger(__name__)

STOP_AFTER_EPOCH_ENV = "TSA_TEST_STOP_AFTER_EPOCH"  # tests: hard-exit after this epoch's checkpoint
STOP_AFTER_STEP_ENV = "TSA_TEST_STOP_AFTER_STEP"    # tests: hard-exit after this global step's checkpoint


@dataclass(frozen=True)
class Plan:
    """Everything checked before any training starts."""

    cfg: SuiteConfig
    tc: TrainConfig
    enc: Encoders
    model_cfg: ModelConfig
    examples_path: str
    windows: TrainingWindows
    run_dir: Path

    @property
    def train(self) -> tuple[dt.date, dt.date]:
        return self.windows.train

    @property
    def valid(self) -> tuple[dt.date, dt.date]:
        return self.windows.valid


@dataclass
class State:
    epoch: int = 0
    step: int = 0                 # next step within ``epoch``
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False


def plan_training(cfg: SuiteConfig, encoders: Optional[str] = None, run_dir: Optional[str] = None,
                  run_date: Optional[dt.date] = None) -> Plan:
    """Validate the config, windows, encoders, model preset and data location; raise before training on
    any problem.  With ``run_date`` the windows may be relative to it and the examples must carry the
    labels known at its end (``tsa_lib.schedule``)."""
    tc = cfg.training
    windows = training_windows(cfg, run_date)
    if tc.amp == "fp16" and not torch.cuda.is_available():
        raise DataError("training.amp: 'fp16' needs a GPU; use 'bf16' or 'none' on CPU")
    enc = load_encoders(encoders or cfg.storage.artifacts_path("encoders"))
    model_cfg = model_config(load_model_preset(tc.model_preset), enc)
    path = cfg.storage.table_path("examples", PROJECT_ROOT)
    table_version(path)  # the table must exist
    rd = Path(run_dir) if run_dir else cfg.storage.artifacts_path(
        f"runs/{tc.model_name}" + (f"/{run_date.isoformat()}" if run_date else ""))
    return Plan(cfg=cfg, tc=tc, enc=enc, model_cfg=model_cfg, examples_path=path, windows=windows, run_dir=rd)


# ---- distribution helpers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=device)


@contextmanager
def distributed() -> Iterator[Dist]:
    """This process's place in the job (``init_distributed``); the process group is torn down on leaving.

    On success every rank first waits at a barrier, so that none leaves the group while another (rank 0
    writing the artifact) still works: a rank tearing down after its peers have exited can hang in
    ``destroy_process_group``.  On an error the group is left as it is: the process exits with the
    error and torchrun stops the other ranks, where a teardown against a peer still inside a
    collective would hang instead of failing.
    """
    d = init_distributed()
    yield d
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _all_sum(x: float, d: Dist) -> float:
    if d.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item())


def _label_counts(train_rows: int, train: np.ndarray, valid_rows: int, valid: np.ndarray, d: Dist
                  ) -> dict[str, int]:
    """Rows, known labels and positives of both windows (``train``/``valid``: the known labels),
    summed over the ranks in one all-reduce."""
    mine = [train_rows, len(train), int((train == 1).sum()), valid_rows, len(valid), int((valid == 1).sum())]
    if d.world > 1:
        t = torch.tensor(mine, dtype=torch.int64, device=d.device)
        dist.all_reduce(t)
        mine = [int(v) for v in t.tolist()]
    keys = ("train_rows", "train_known", "train_positives", "valid_rows", "valid_known", "valid_positives")
    return dict(zip(keys, mine))


def host_budget(tc: TrainConfig) -> int:
    """Bytes of host memory one rank may hold examples in (``training.host_memory_mb``, or half the
    memory available now, shared by this node's ranks)."""
    if tc.host_memory_mb is not None:
        return int(tc.host_memory_mb * (1 << 20))
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(avail * 0.5) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _all_min(x: int, d: Dist) -> int:
    if d.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.int64, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _gather(obj: Any, d: Dist) -> list[Any]:
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any, d: Dist) -> Any:
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ---- the loop --------------------------------------------------------------------------------------------

def _lr_lambda(tc: TrainConfig, total_steps: int):  # type: ignore[no-untyped-def]
    def f(step: int) -> float:
        if tc.warmup_steps and step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        if tc.schedule == "cosine":
            prog = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog))
        return 1.0
    return f


def _class_weight(labels: np.ndarray, tc: TrainConfig, d: Dist) -> torch.Tensor:
    pos = _all_sum(float((labels == 1).sum()), d)
    neg = _all_sum(float((labels == 0).sum()), d)
    if pos == 0:
        raise DataError("training window has no positive (fraud) labels")
    ratio = neg / pos
    w = {"none": 1.0, "balanced": ratio, "sqrt": math.sqrt(ratio)}[tc.class_weighting]
    return torch.tensor([1.0, min(w, tc.max_pos_weight)], dtype=torch.float32, device=d.device)


def evaluate(model: torch.nn.Module, data: TrainingData, model_type: str, tc: TrainConfig, d: Dist,
             weight: torch.Tensor) -> dict[str, float]:
    """Validation loss and metrics over all ranks' shards."""
    model.eval()
    probs, labels = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    amp = _autocast(tc, d)
    with torch.no_grad():
        for b in data.batches(tc.eval_batch_size, 0, 0, shuffle=False):
            with amp:
                logits, _ = model(*model_inputs(b, model_type))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, b["label"], weight=weight, reduction="sum").double()
            probs.append(torch.softmax(logits, -1)[:, 1].cpu().numpy())
            labels.append(b["label"].cpu().numpy())
    p = np.concatenate(probs) if probs else np.zeros(0)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    parts = _gather((p, y, float(loss_sum)), d)
    p = np.concatenate([x[0] for x in parts])
    y = np.concatenate([x[1] for x in parts])
    return {"valid_loss": sum(x[2] for x in parts) / max(1, len(y)), "roc_auc": roc_auc(y, p),
            "average_precision": average_precision(y, p), "recall_at_1pct_fpr": recall_at_fpr(y, p, 0.01),
            "valid_n": float(len(y)), "valid_positives": float(y.sum())}


def _amp_dtype(tc: TrainConfig) -> Optional[torch.dtype]:
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.amp]


def _autocast(tc: TrainConfig, d: Dist) -> torch.autocast:
    dtype = _amp_dtype(tc)
    return torch.autocast(device_type=d.device.type, dtype=dtype, enabled=dtype is not None)


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                     scaler: Optional[torch.amp.GradScaler], st: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "state": {"epoch": st.epoch, "step": st.step, "global_step": st.global_step,
                  "best_metric": st.best_metric, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
                  "history": st.history, "done": st.done},
        "rng": {"torch": torch.get_rng_state()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                     scaler: Optional[torch.amp.GradScaler]) -> State:
    blob = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    if scaler is not None and blob["scaler"]:
        scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["rng"]["torch"])
    return State(**blob["state"])


def train(plan: Plan, resume: bool = False, d: Optional[Dist] = None) -> Optional[Path]:
    """Run training; returns the artifact folder on rank 0 (None elsewhere).  With ``tracking.mlflow``
    rank 0 logs the run to MLflow (``tsa_lib.tracking``; an unusable URI with ``on_unreachable: fail``
    raises here, before any data is read)."""
    d = d or init_distributed()
    run = start_training_run(plan) if d.main else None
    try:
        s = _set_up(plan, resume, d, run)
        while s.st.epoch < s.tc.epochs and not s.st.done:
            _run_epoch(s)
        return _finish(s)
    except BaseException:
        if run is not None:
            run.close(failed=True)
        raise


class LossModel(torch.nn.Module):
    """The classifier and its training loss as one module: one forward, one compiled graph, one DDP
    wrapper.  Autocast covers the classifier; the loss is computed in fp32 as ``training_loss`` says."""

    def __init__(self, model: torch.nn.Module, model_type: str, device_type: str,
                 amp_dtype: Optional[torch.dtype]) -> None:
        super().__init__()
        self.model = model
        self.model_type = model_type
        self.device_type = device_type
        self.amp_dtype = amp_dtype

    def forward(self, batch: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits, _ = self.model(*model_inputs(batch, self.model_type))
        return self.model.training_loss(logits, batch["label"], weight)


@dataclass
class Session:
    """One training run in progress: data, model, optimiser and the position in the run."""

    plan: Plan
    d: Dist
    run: Optional[TrainingRun]
    version: int
    as_of: Optional[dt.datetime]
    counts: dict[str, int]
    train_data: TrainingData
    valid_data: TrainingData
    weight: torch.Tensor
    steps_per_epoch: int
    model: torch.nn.Module
    loss_model: torch.nn.Module          # LossModel, DDP-wrapped and compiled as configured
    eval_model: torch.nn.Module          # the classifier, compiled as configured
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Optional[torch.amp.GradScaler]
    st: State
    warmed_up: bool = False              # the first logging interval of this process (compilation) is over

    @property
    def tc(self) -> TrainConfig:
        return self.plan.tc

    @property
    def ckpt(self) -> Path:
        return self.plan.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.plan.run_dir / "checkpoints" / "best.pt"


def _set_up(plan: Plan, resume: bool, d: Dist, run: Optional[TrainingRun]) -> Session:
    """Read this rank's data, build the model, optimiser and schedule, and restore a checkpoint."""
    tc, mcfg = plan.tc, plan.model_cfg
    version = _broadcast(plan.tc.examples_version if plan.tc.examples_version is not None
                         else table_version(plan.examples_path), d)
    t0 = time.perf_counter()
    as_of = plan.windows.labels_as_of if plan.windows.run_date is not None else None
    budget = host_budget(tc)
    valid_data, valid_rows = load_training_data(
        Shard.open(plan.examples_path, version, *plan.valid, d.rank, d.world), plan.enc, d.device, budget, as_of)
    train_data, train_rows = load_training_data(
        Shard.open(plan.examples_path, version, *plan.train, d.rank, d.world), plan.enc, d.device,
        max(1, budget - valid_data.host_bytes), as_of)
    train_labels = train_data.labels()
    counts = _label_counts(train_rows, train_labels, valid_rows, valid_data.labels(), d)
    if d.main:
        log.info("labels known%s: train %d of %d orders (%d fraud), valid %d of %d (%d fraud); the orders whose "
                 "label is not known are left out", f" before {as_of:%Y-%m-%d %H:%M}" if as_of else "",
                 counts["train_known"], counts["train_rows"], counts["train_positives"], counts["valid_known"],
                 counts["valid_rows"], counts["valid_positives"])
    if counts["train_known"] < tc.min_known_labels:
        raise DataError(f"training window {plan.train[0]}..{plan.train[1]} has {counts['train_known']} known labels, "
                        f"fewer than training.min_known_labels={tc.min_known_labels}")
    weight = _class_weight(train_labels, tc, d)
    steps_per_epoch = _all_min(train_data.num_steps(tc.batch_size, drop_last=True), d)
    if tc.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise DataError(f"training window has fewer rows per rank ({train_data.n}) than one batch ({tc.batch_size})")
    if d.main:
        where = "streamed from the files" if train_data.streamed else "on " + (
            str(d.device) if train_data.on_device else "the host")
        log.info("data: examples v%d, train %d rows/rank (%d steps/epoch x %d ranks, %s), valid %d rows/rank, "
                 "pos weight %.2f, loaded in %.1fs", version, train_data.n, steps_per_epoch, d.world, where,
                 valid_data.n, float(weight[1]), time.perf_counter() - t0)

    torch.manual_seed(tc.seed)
    model = build_model(mcfg).to(d.device)
    loss_model: torch.nn.Module = LossModel(model, mcfg.model_type, d.device.type, _amp_dtype(tc))
    if d.world > 1:
        loss_model = torch.nn.parallel.DistributedDataParallel(
            loss_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                            fused=d.device.type == "cuda")
    if tc.schedule == "plateau":
        sched: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tc, steps_per_epoch * tc.epochs))
    scaler = torch.amp.GradScaler("cuda") if tc.amp == "fp16" else None
    s = Session(plan=plan, d=d, run=run, version=version, as_of=as_of, counts=counts, train_data=train_data,
                valid_data=valid_data, weight=weight, steps_per_epoch=steps_per_epoch, model=model,
                loss_model=torch.compile(loss_model) if tc.compile else loss_model,
                eval_model=torch.compile(model) if tc.compile else model,
                opt=opt, sched=sched, scaler=scaler, st=State())
    if resume:
        if not s.ckpt.is_file():
            raise DataError(f"--resume: no checkpoint at {str(s.ckpt)!r}")
        s.st = _load_checkpoint(s.ckpt, model, opt, sched, scaler)
        if d.main:
            log.info("resumed from %s at epoch %d step %d", s.ckpt, s.st.epoch, s.st.step)
    elif d.main and s.ckpt.exists():
        s.ckpt.unlink()
    return s


def train_step(s: Session, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimisation step; returns the loss, still on the device (reading it would sync)."""
    loss = s.loss_model(batch, s.weight)
    s.opt.zero_grad(set_to_none=True)
    if s.scaler is not None:
        s.scaler.scale(loss).backward()
        s.scaler.unscale_(s.opt)
    else:
        loss.backward()
    if s.tc.grad_clip:
        for group in s.model.clip_groups():
            torch.nn.utils.clip_grad_norm_(group, s.tc.grad_clip)
    if s.scaler is not None:
        s.scaler.step(s.opt)      # fp16 only: the scaler reads its inf check, a host sync
        s.scaler.update()
    else:
        s.opt.step()
    if not isinstance(s.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        s.sched.step()
    return loss.detach()


@dataclass
class EpochTotals:
    loss_sum: torch.Tensor    # on the device
    steps: int
    samples: int              # all ranks
    seconds: float            # the steady part: the first logging interval of the process excluded
    steady_samples: int
    warmup_s: float           # the first logging interval of the process when this epoch held it, else 0


def train_steps(s: Session) -> EpochTotals:
    """The steps of the current epoch from ``s.st.step`` on, with progress logs and mid-epoch checkpoints.

    Nothing is read back from the device between logs: the loss is summed on the device and read
    every ``log_every_steps``.  The dropout RNG is re-seeded from (seed, epoch, step, rank) at the
    start of each epoch and after each checkpoint, the only places a run can resume from, so a resumed
    run draws exactly the dropout masks of a run never stopped.  Logged rates are over the last
    interval; the first interval of the process (compilation, warm-up) is logged and timed apart.
    """
    tc, d, st = s.tc, s.d, s.st
    first = st.step
    loss_sum = torch.zeros((), device=d.device)
    steps = samples = steady_samples = interval_samples = 0
    steady_s = warmup_s = 0.0
    tick = time.perf_counter()
    for b in s.train_data.batches(tc.batch_size, tc.seed, st.epoch, st.step, drop_last=True,
                                  steps=s.steps_per_epoch):
        if st.step == first or st.global_step % tc.checkpoint_every_steps == 0:
            torch.manual_seed(_step_seed(tc.seed, st.epoch, st.step, d.rank))
        loss_sum += train_step(s, b)
        st.step += 1
        st.global_step += 1
        steps += 1
        n = len(b["label"]) * d.world
        samples += n
        interval_samples += n
        if st.global_step % tc.log_every_steps == 0 or st.step == s.steps_per_epoch:
            mean_loss = float(loss_sum) / steps / s.plan.model_cfg.members   # the sync, once per interval
            now = time.perf_counter()
            el, tick = now - tick, now
            if not s.warmed_up:
                s.warmed_up, warmup_s = True, el
                kind = "warm-up, compilation included"
            else:
                steady_s += el
                steady_samples += interval_samples
                kind = "last interval"
            rate = interval_samples / max(el, 1e-9)
            interval_samples = 0
            if d.main and st.global_step % tc.log_every_steps == 0:
                left = (tc.epochs - st.epoch) * s.steps_per_epoch - st.step
                log.info("epoch %d step %d/%d loss %.4f  %.0f samples/s (%s)  eta %.0fs", st.epoch, st.step,
                         s.steps_per_epoch, mean_loss, rate, kind,
                         left * tc.batch_size * d.world / max(rate, 1e-9))
        if st.global_step % tc.checkpoint_every_steps == 0 and st.step < s.steps_per_epoch and d.main:
            _save_checkpoint(s.ckpt, s.model, s.opt, s.sched, s.scaler, st)
            if os.environ.get(STOP_AFTER_STEP_ENV) == str(st.global_step):
                os._exit(17)  # tests: die like a killed job, after the checkpoint
    return EpochTotals(loss_sum=loss_sum, steps=steps, samples=samples, seconds=steady_s,
                       steady_samples=steady_samples, warmup_s=warmup_s)


def _run_epoch(s: Session) -> None:
    """Train one epoch, validate, apply early stopping, checkpoint."""
    tc, d, st = s.tc, s.d, s.st
    s.loss_model.train()
    t0 = time.perf_counter()
    tot = train_steps(s)
    wall = time.perf_counter() - t0
    members = s.plan.model_cfg.members
    train_loss = _all_sum(float(tot.loss_sum), d) / max(1.0, _all_sum(float(tot.steps), d)) / members
    m = evaluate(s.eval_model, s.valid_data, s.plan.model_cfg.model_type, tc, d, s.weight)
    # steady rate; an epoch that is all warm-up (shorter than one logging interval) reports its wall rate
    rate = tot.steady_samples / tot.seconds if tot.seconds > 0 else tot.samples / max(wall, 1e-9)
    m.update(epoch=float(st.epoch), train_loss=train_loss, train_samples_per_s=rate,
             train_warmup_s=tot.warmup_s,
             lr=s.opt.param_groups[0]["lr"])
    st.history.append(m)
    metric = m[tc.early_stopping_metric]
    if isinstance(s.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        s.sched.step(metric)
    improved = metric > st.best_metric + 1e-6
    if improved:
        st.best_metric, st.best_epoch, st.bad_epochs = metric, st.epoch, 0
        if d.main:
            s.best_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(s.model.state_dict(), s.best_path)
    else:
        st.bad_epochs += 1
        st.done = st.bad_epochs > tc.patience
    if d.main:
        log.info("epoch %d: train loss %.4f, valid loss %.4f, AUC %.4f, AP %.4f, recall@1%%FPR %.4f, "
                 "%.0f samples/s%s", st.epoch, train_loss, m["valid_loss"], m["roc_auc"], m["average_precision"],
                 m["recall_at_1pct_fpr"], rate, " (best)" if improved else "")
        if s.run is not None:
            s.run.log_epoch(st.epoch, m)
    st.epoch += 1
    st.step = 0
    if d.main:
        _save_checkpoint(s.ckpt, s.model, s.opt, s.sched, s.scaler, st)
    if d.world > 1:
        dist.barrier()
    if os.environ.get(STOP_AFTER_EPOCH_ENV) == str(st.epoch):
        os._exit(17)  # tests: die like a killed job, after the checkpoint


def _finish(s: Session) -> Optional[Path]:
    """Check the ranks agree, then on rank 0 write the artifact (best epoch's weights) and close the run."""
    plan, tc, d, st, model = s.plan, s.tc, s.d, s.st, s.model
    digests = _gather(weights_digest(model), d)
    if not d.main:
        return None
    if st.done:
        log.info("early stopping after epoch %d (best epoch %d)", st.epoch - 1, st.best_epoch)
    final_digest = digests[0]
    if s.best_path.is_file():
        model.load_state_dict(torch.load(s.best_path, map_location="cpu", weights_only=True))
    else:
        log.warning("no epoch improved %s (metric undefined?): the artifact holds the last weights",
                    tc.early_stopping_metric)
    best = next((h for h in st.history if int(h["epoch"]) == st.best_epoch), st.history[-1] if st.history else {})
    metrics = {"best_epoch": st.best_epoch, "best": best, "history": st.history,
               "early_stopping_metric": tc.early_stopping_metric}
    mcfg = plan.model_cfg
    version_name = new_model_version()
    manifest = {
        "model_name": tc.model_name, "version": version_name, "model_type": mcfg.model_type,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), "code_commit": code_commit(),
        "torch_version": torch.__version__, "world_size": d.world, "device": d.device.type,
        "ranks_in_sync": len(set(digests)) == 1, "final_weights_digest": final_digest,
        "run_date": plan.windows.run_date.isoformat() if plan.windows.run_date else None,
        "data": {"examples_path": plan.examples_path, "examples_version": s.version,
                 "train": [x.isoformat() for x in plan.train], "valid": [x.isoformat() for x in plan.valid],
                 "labels_as_of": s.as_of.isoformat() if s.as_of else None, **s.counts},
        "encoders_version": plan.enc.version, "suite_config": to_dict(plan.cfg), "config_hash": plan.cfg.hash,
    }
    folder = save_artifact(plan.cfg.storage.artifacts_path(f"models/{tc.model_name}") / version_name, model, mcfg,
                           plan.enc, metrics, manifest)
    if s.run is not None:
        s.run.finish(folder, manifest, metrics)     # never raises: an MLflow failure is a warning
    return folder


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2**62)
