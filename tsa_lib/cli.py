"""What every job's entry point shares: arguments, logging, run ids, date ranges.

A job file in ``jobs/`` stays thin: ``args = parse_args(...)``, build the config,
call one library function, stop Spark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import uuid
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from tsa_lib.errors import UserError

log = logging.getLogger(__name__)

MAX_RANGE_DAYS = 366


@dataclass(frozen=True)
class RunContext:
    """Identity of one job run: its id, its dates, and the config hash it ran with."""

    job: str
    run_id: str
    dates: tuple[dt.date, ...]
    started_at: dt.datetime

    def metadata(self, config_hash: str, **extra: object) -> dict[str, object]:
        """The commit userMetadata every table write of this run carries."""
        return {"job": self.job, "run_id": self.run_id, "config_hash": config_hash,
                "dates": [d.isoformat() for d in self.dates], "started_at": self.started_at.isoformat(), **extra}


def parse_date(key: str, value: str, today: Optional[dt.date] = None) -> dt.date:
    """Parse YYYY-MM-DD, or ``yesterday`` (the UTC day before ``today``, default now: what a
    scheduler that starts after midnight runs for); the error names the argument and the value."""
    if value == "yesterday":
        return (today or dt.datetime.now(dt.timezone.utc).date()) - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise UserError(f"{key}: {value!r} is not a YYYY-MM-DD date (or 'yesterday')") from e


def date_range(run_date: Optional[str], start_date: Optional[str], end_date: Optional[str]) -> tuple[dt.date, ...]:
    """The run dates from ``--run-date D`` or ``--start-date A --end-date B`` (inclusive)."""
    if run_date is not None:
        if start_date is not None or end_date is not None:
            raise UserError("--run-date cannot be combined with --start-date/--end-date")
        return (parse_date("--run-date", run_date),)
    if start_date is None or end_date is None:
        raise UserError(f"give --run-date, or both --start-date and --end-date (got start={start_date!r}, "
                         f"end={end_date!r})")
    a, b = parse_date("--start-date", start_date), parse_date("--end-date", end_date)
    if b < a:
        raise UserError(f"--end-date {end_date!r} is before --start-date {start_date!r}")
    n = (b - a).days + 1
    if n > MAX_RANGE_DAYS:
        raise UserError(f"date range {start_date}..{end_date} spans {n} days; at most {MAX_RANGE_DAYS} per run")
    return tuple(a + dt.timedelta(days=i) for i in range(n))


def fmt_dates(dates: Sequence[dt.date]) -> str:
    """'2026-01-01' or '2026-01-01..2026-02-19 (43 dates)' for messages."""
    ds = sorted(dates)
    if not ds:
        return "no dates"
    return ds[0].isoformat() if len(ds) == 1 else f"{ds[0].isoformat()}..{ds[-1].isoformat()} ({len(ds)} dates)"


def base_parser(description: str, dated: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="suite config YAML (e.g. conf/local.yaml)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--run-id", default=None, help="id recorded with every write (default: a new uuid)")
    if dated:
        p.add_argument("--run-date", default=None, help="YYYY-MM-DD: the date whose orders to process")
        p.add_argument("--start-date", default=None, help="YYYY-MM-DD: first date of a backfill (inclusive)")
        p.add_argument("--end-date", default=None, help="YYYY-MM-DD: last date of a backfill (inclusive)")
    return p


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "py4j.clientserver", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def make_context(job: str, args: argparse.Namespace, dates: Optional[tuple[dt.date, ...]] = None) -> RunContext:
    """The run's identity; ``dates`` from --run-date/--start-date/--end-date unless given."""
    if dates is None:
        dates = date_range(args.run_date, args.start_date, args.end_date) if hasattr(args, "start_date") else ()
    return RunContext(job=job, run_id=args.run_id or uuid.uuid4().hex[:12], dates=dates,
                      started_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0))


def main_guard(fn: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a job's main: user errors (``tsa_lib.errors.UserError``: config, arguments, input
    data, artifacts) and missing files print one clear line and exit 2; anything else keeps
    its traceback."""

    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return fn(argv)
        except (UserError, FileNotFoundError) as e:
            logging.getLogger(fn.__module__).error("%s: %s", type(e).__name__, e)
            return 2

    return wrapped
