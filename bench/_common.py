"""Shared bench helpers: peak memory of a process tree, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Result files go here; TSA_BENCH_RESULTS points a trial run (bench/gpu_check.sh SMOKE=1) elsewhere.
RESULTS = Path(os.environ.get("TSA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_rss_bytes(root: int | None = None) -> int:
    """Resident memory of ``root`` and all its descendants (the JVM and Python workers included)."""
    todo, total, seen = [root or os.getpid()], 0, set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        todo += _children(pid)
    return total


class PeakMemory:
    """Samples the process tree's RSS every ``interval`` seconds while active."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = tree_rss_bytes()
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    @property
    def gb(self) -> float:
        return round(self.peak / 2**30, 2)


@contextmanager
def timed(results: dict[str, Any], key: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    results[key] = round(time.perf_counter() - t, 2)


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
              "cpus": os.cpu_count(), **result}
    path = RESULTS / f"{name}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return path
