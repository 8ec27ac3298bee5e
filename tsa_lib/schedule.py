"""Time in the nightly life: what a run date D means for windows, labels and training nights.

A job run for the logical date D runs after D is over, so what it may know is what was
known before ``as_of(D)`` = midnight (UTC) at the start of D + 1.  From D and the config:

- training windows (``training_windows``): validation is the ``training.window.valid_days``
  days ending at D - ``labels.mature_after_days``; training the ``train_days`` days before
  it.  Fixed dates in ``training`` are an override (the two cannot be mixed);
- the day whose labels matured at D (``matured_day``), the one the nightly evaluation scores;
- whether D is a training night (``is_training_night``).

A label is known at T when its label time, or else its order time plus
``labels.delay_days``, is strictly before T (``label_known``; the Spark form of the same
rule is ``tsa_lib.spark.labels``).  Pure Python (numpy for ``label_known``): no Spark, no torch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from tsa_lib.config import SuiteConfig
from tsa_lib.errors import ConfigError, UserError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TRAIN_WEEKDAYS = (6,)   # Sunday (Monday = 0)


def as_of(run_date: dt.date) -> dt.datetime:
    """The instant a run for ``run_date`` knows everything before: midnight UTC starting the next day."""
    return dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


def day_range(a: dt.date, b: dt.date) -> tuple[dt.date, ...]:
    """Every date from ``a`` to ``b`` inclusive."""
    return tuple(a + dt.timedelta(days=i) for i in range((b - a).days + 1))


@dataclass(frozen=True)
class TrainingWindows:
    """The dates a training run uses and the instant its labels are taken at."""

    train: tuple[dt.date, dt.date]
    valid: tuple[dt.date, dt.date]
    run_date: Optional[dt.date]
    labels_as_of: Optional[dt.datetime]   # None: fixed dates and no run date (labels as they are now)

    @property
    def dates(self) -> tuple[dt.date, ...]:
        """Every date of the training and validation windows (what build_examples encodes)."""
        return day_range(self.train[0], self.valid[1])

    def describe(self) -> str:
        s = f"train {self.train[0]}..{self.train[1]}, valid {self.valid[0]}..{self.valid[1]}"
        return s + (f", labels known before {self.labels_as_of:%Y-%m-%d %H:%M}" if self.labels_as_of else "")


def training_windows(cfg: SuiteConfig, run_date: Optional[dt.date]) -> TrainingWindows:
    """The windows of a training run for ``run_date`` (see the module docstring).

    Raises ConfigError naming what is missing: neither ``training.window`` nor fixed dates,
    a relative window without a run date, or a fixed window that ends after the run date.
    """
    tc = cfg.training
    fixed = (tc.train_start, tc.train_end, tc.valid_start, tc.valid_end)
    if tc.window is not None:
        if run_date is None:
            raise ConfigError("training.window is relative to the run date: give --run-date YYYY-MM-DD")
        valid_end = run_date - dt.timedelta(days=cfg.labels.mature_after_days)
        valid_start = valid_end - dt.timedelta(days=tc.window.valid_days - 1)
        train_end = valid_start - dt.timedelta(days=1)
        train_start = train_end - dt.timedelta(days=tc.window.train_days - 1)
        return TrainingWindows(train=(train_start, train_end), valid=(valid_start, valid_end), run_date=run_date,
                               labels_as_of=as_of(run_date))
    if any(v is None for v in fixed):
        missing = [k for k, v in zip(("train_start", "train_end", "valid_start", "valid_end"), fixed) if v is None]
        raise ConfigError(f"training: set training.window {{train_days, valid_days}} (relative to --run-date) or "
                          f"the fixed dates {['training.' + k for k in missing]}")
    d = dt.date.fromisoformat
    w = TrainingWindows(train=(d(fixed[0]), d(fixed[1])), valid=(d(fixed[2]), d(fixed[3])),  # type: ignore[arg-type]
                        run_date=run_date, labels_as_of=as_of(run_date) if run_date else None)
    if run_date is not None and w.valid[1] > run_date:
        raise ConfigError(f"training.valid_end {w.valid[1]} is after the run date {run_date}: its labels are not "
                          f"known yet")
    return w


def matured_day(cfg: SuiteConfig, run_date: dt.date) -> dt.date:
    """The day whose labels mature at ``run_date``: run_date - labels.mature_after_days."""
    return run_date - dt.timedelta(days=cfg.labels.mature_after_days)


def check_mature(cfg: SuiteConfig, days: Iterable[dt.date], run_date: dt.date) -> None:
    """Raise ValueError naming the first day whose labels are not mature at ``run_date``."""
    last = matured_day(cfg, run_date)
    early = sorted(d for d in days if d > last)
    if early:
        raise UserError(f"labels of {early[0]} are not mature at {run_date} (labels.mature_after_days="
                         f"{cfg.labels.mature_after_days}: the last mature day is {last})")


def is_training_night(logical_date: dt.date, weekdays: Iterable[int] = DEFAULT_TRAIN_WEEKDAYS,
                      conf: Optional[Mapping[str, Any]] = None) -> bool:
    """Training runs on ``weekdays`` (Monday = 0) or when the run is triggered with ``{"train": true}``."""
    days = tuple(weekdays)
    bad = [w for w in days if not (isinstance(w, int) and 0 <= w <= 6)]
    if bad:
        raise ConfigError(f"weekdays: {bad} are not weekday numbers 0 (Monday) .. 6 (Sunday)")
    return bool((conf or {}).get("train")) or logical_date.weekday() in days


def label_known(event_time_us: "np.ndarray", label_time_us: "Optional[np.ndarray]", delay_days: float,
                at: dt.datetime) -> "np.ndarray":
    """Numpy form of the one rule: known when label time (or, where it is missing, event time +
    ``delay_days``) is strictly before ``at``.  Times are int64 microseconds since the epoch
    (UTC), a missing label time is -1; ``at`` is an aware datetime."""
    import numpy as np

    ev = np.asarray(event_time_us, dtype=np.int64)
    known_at = ev + int(round(delay_days * 86400e6))
    if label_time_us is not None:
        lt = np.asarray(label_time_us, dtype=np.int64)
        if lt.shape != ev.shape:
            raise ValueError(f"label_time_us has shape {lt.shape}, event_time_us {ev.shape}")
        known_at = np.where(lt >= 0, lt, known_at)
    if at.tzinfo is None:
        raise ValueError(f"at: {at!r} has no time zone; give an aware (UTC) datetime")
    at_us = int((at - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds() * 1_000_000)
    return known_at < at_us
