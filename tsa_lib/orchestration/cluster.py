"""A real standalone Spark cluster on this machine: one master and one worker daemon.

pip's pyspark ships no ``sbin/start-master.sh``, but its ``bin/spark-class`` runs the
standalone daemons.  ``start_cluster`` starts both in their own process groups, with
``PYTHONPATH`` removed from their environment and their working directory (and the
executors') in a folder outside the checkout, so executors import only what a job ships
(``--py-files``).  It returns once the worker has registered with the master;
``StandaloneCluster.stop`` kills both process groups.

    with start_cluster(Path("artifacts/replay/cluster")) as c:
        subprocess.run(["./spark-submit.sh", "--target", "standalone", ...],
                       env={**os.environ, "TSA_SPARK_MASTER": c.master_url})
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Callable, Optional

from tsa_lib.errors import InternalError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(InternalError):
    """The cluster did not come up (the message names the daemon and its log)."""


def free_port() -> int:
    """A TCP port that was free a moment ago on ``HOST``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    """The pip-installed pyspark folder, which holds ``bin/spark-class`` and the jars."""
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").is_file():
        raise ClusterError(f"no bin/spark-class in the pyspark installation {str(home)!r}")
    return home


@dataclass
class StandaloneCluster:
    """A running master + worker; ``stop`` (or leaving the ``with`` block) ends both."""

    master_url: str
    web_url: str
    log_dir: Path
    scratch: Path                      # daemons' cwd and the worker's work dir, outside the checkout
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def state(self) -> dict[str, object]:
        """The master's JSON status (workers, applications)."""
        with urllib.request.urlopen(self.web_url + "/json/", timeout=5) as r:
            return json.loads(r.read().decode())

    def stop(self) -> None:
        """Kill the daemons' process groups (executors included), then remove the scratch folder."""
        for p in reversed(self.procs):
            _kill_group(p)
        for f in self.logs:
            f.close()
        self.procs.clear()
        self.logs.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)
        log.info("stopped the standalone cluster %s", self.master_url)

    def __enter__(self) -> "StandaloneCluster":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=15)
    except ProcessLookupError:
        pass


def daemon_env(python: str, home: Path) -> dict[str, str]:
    """The daemons' environment: no PYTHONPATH, the given interpreter for Python workers, loopback only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_HOME", "PYTHONSTARTUP")}
    env.update(SPARK_HOME=str(home), PYSPARK_PYTHON=python, SPARK_LOCAL_IP=HOST, SPARK_NO_DAEMONIZE="1")
    return env


def start_cluster(log_dir: Path, cores: int = 2, memory: str = "3g", python: Optional[str] = None,
                  timeout_s: float = 120.0) -> StandaloneCluster:
    """Start a master and one worker (``cores``, ``memory``) and wait until the worker has registered.

    Daemon logs go to ``log_dir``; the daemons run in a fresh temporary folder outside the
    checkout.  Raises ClusterError naming the daemon's log if either does not come up in
    ``timeout_s`` seconds (both are stopped then).
    """
    if cores < 1:
        raise ValueError(f"cores: must be >= 1, got {cores!r}")
    home = spark_home()
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tsa-spark-"))
    env = daemon_env(python or sys.executable, home)
    port, web, worker_web = free_port(), free_port(), free_port()
    c = StandaloneCluster(master_url=f"spark://{HOST}:{port}", web_url=f"http://{HOST}:{web}", log_dir=log_dir,
                          scratch=scratch)
    try:
        _spawn(c, home, env, "master", [MASTER_CLASS, "--host", HOST, "--port", str(port), "--webui-port", str(web)])
        _wait(lambda: _port_open(port), timeout_s, c, "master")
        (scratch / "work").mkdir()
        _spawn(c, home, env, "worker", [WORKER_CLASS, "--host", HOST, "--cores", str(cores), "--memory", memory,
                                        "--work-dir", str(scratch / "work"), "--webui-port", str(worker_web),
                                        c.master_url])
        _wait(lambda: _alive_workers(c) >= 1, timeout_s, c, "worker")
    except BaseException:
        c.stop()
        raise
    log.info("standalone cluster %s up (UI %s, worker %d cores %s, logs %s)", c.master_url, c.web_url, cores,
             memory, log_dir)
    return c


def _spawn(c: StandaloneCluster, home: Path, env: dict[str, str], name: str, args: list[str]) -> None:
    out = open(c.log_dir / f"{name}.log", "wb")
    c.logs.append(out)
    c.procs.append(subprocess.Popen([str(home / "bin" / "spark-class"), *args], cwd=c.scratch, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True))


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _alive_workers(c: StandaloneCluster) -> int:
    try:
        return int(c.state().get("aliveworkers", 0))  # type: ignore[call-overload]
    except (OSError, ValueError):
        return 0


def _wait(ready: Callable[[], bool], timeout_s: float, c: StandaloneCluster, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if c.procs[-1].poll() is not None:
            raise ClusterError(f"the standalone {name} exited with code {c.procs[-1].returncode}; see "
                               f"{c.log_dir / (name + '.log')}")
        if ready():
            return
        time.sleep(0.5)
    raise ClusterError(f"the standalone {name} was not ready after {timeout_s:.0f}s; see "
                       f"{c.log_dir / (name + '.log')}")


__all__ = ["ClusterError", "StandaloneCluster", "daemon_env", "free_port", "spark_home", "start_cluster"]
