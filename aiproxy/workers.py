"""``--workers N``: N server processes on one port (SO_REUSEPORT), supervised.

The supervisor forwards SIGTERM/SIGINT/SIGHUP to its workers, restarts one that crashes,
and gives up when a worker keeps dying at start (a broken config or port).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from aiproxy.observability import get_logger

__all__ = ["supervise"]

log = get_logger("aiproxy.workers")

# A worker that dies this soon after it started, this many times running, means giving up.
EARLY_DEATH = 2.0
MAX_EARLY_DEATHS = 3


def supervise(worker_argv: Sequence[str], count: int, grace: float) -> int:
    """Run ``count`` workers (``python -m aiproxy <worker_argv>``) until a signal stops them."""
    command = [sys.executable, "-m", "aiproxy", *worker_argv]
    workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    stopping: list[int] = []
    # Workers write their metrics here; /metrics, answered by any worker, adds them all up.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="aiproxy-metrics-")
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}

    def start(slot: int) -> None:
        proc = subprocess.Popen(command, env=env)  # noqa: S603 - our own argv
        workers[slot] = (proc, time.monotonic())

    def bury(pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        for proc, _ in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for slot in range(count):
        start(slot)
    log.info("workers_started", count=count, pids=[p.pid for p, _ in workers.values()])
    early_deaths = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for slot, (proc, started) in list(workers.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                early_deaths = early_deaths + 1 if time.monotonic() - started < EARLY_DEATH else 0
                log.warning("worker_exited", pid=proc.pid, code=code, restarting=True)
                bury(proc.pid)
                if early_deaths >= MAX_EARLY_DEATHS:
                    log.error("workers_failing", reason="workers keep dying at start")
                    forward(signal.SIGTERM, None)
                    return 1
                start(slot)
        deadline = time.monotonic() + grace + 5
        for proc, _ in workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0
    finally:
        for proc, _ in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
