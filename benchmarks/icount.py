"""Instructions per request, counted with callgrind: a figure other load cannot move.

CPU time per request moves by ±5-10% on a shared machine; the number of instructions a server
executes for a fixed number of requests does not. ``run.py`` (``--icount-only``, or as its
last step) and ``ab.py --icount`` use this module; the method, for each server counted:

1. The server runs under ``valgrind --tool=callgrind --instr-atstart=no`` on the server core,
   with ``PYTHONHASHSEED=0`` (dict and set layouts, hence the work done on them, repeat from
   one run to the next). Without instrumentation valgrind only translates, so startup takes
   seconds, not minutes. The mock upstream stays native on the load core.
2. Warm-up: ``warmup`` requests uninstrumented (imports on first use, caches, the adaptive
   interpreter's specialisations), then ``callgrind_control -i on`` and ``warmup // 4`` more,
   counted but thrown away (the first instrumented requests cost a few % more).
3. Phases: ``callgrind_control -z`` (zero), exactly ``n`` requests from an aiohttp client in
   this process with ``conns`` requests in flight, ``callgrind_control -d`` (dump); the dump's
   ``totals:`` line (Ir, instructions executed in user space, all threads) divided by ``n``.
   Two phases by default; their mean is reported, with their relative difference
   (``spread``). Phases differ mostly by the full garbage collections that fall in one or
   the other; with the same code and hash seed that schedule repeats, so the mean of a run
   repeats more closely than two phases agree (runs of one tree: within ~0.5%).

What is counted: everything the server process executes while the phase runs, including the
access log's and the usage ledger's periodic flushes. Under valgrind the server is ~50 times
slower, so a periodic flush (every 0.5 s, 1 s) covers fewer requests than at full speed and
weighs a little more per request (all of the ledger's SQLite work, rows and commits, is ~3%
of aiproxy's count; the fixed cost per flush is a part of that). Kernel work (syscalls,
loopback TCP) is not counted: callgrind sees only user space. With ``conns`` requests always
waiting (the client is far ahead of a server under valgrind), each event-loop iteration
handles a steady batch, which is also what a server saturated by 32 connections does at
full speed.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import TypedDict

import aiohttp

VALGRIND = "valgrind"
CALLGRIND_CONTROL = "callgrind_control"


class Count(TypedDict):
    """Instructions per request of one path: the mean of the phases, each phase's figure."""

    per_request: float
    phases: list[float]
    spread: float
    requests: int  # a phase
    conns: int
    warmup: int


# aiproxy's environment under valgrind: a phase boundary (callgrind_control) can leave the
# client's pooled connections idle past the 15 s keep-alive default; the server then closes
# them and the next request on one is reset. The floors keep aiohttp's 75 s.
KEEP_CONNECTIONS = {"CLIENT_KEEPALIVE_TIMEOUT": "600", "CLIENT_HEADER_TIMEOUT": "600"}


def available() -> str | None:
    """None when callgrind can be used, else why not."""
    for tool in (VALGRIND, CALLGRIND_CONTROL):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install -y valgrind)"
    return None


def valgrind_argv(out_file: Path) -> list[str]:
    """The prefix that runs a command under callgrind, counting nothing until told to."""
    return [VALGRIND, "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out_file}", "--dump-line=no", "--compress-strings=no"]


def valgrind_env() -> dict[str, str]:
    return {"PYTHONHASHSEED": "0"}


def parse_totals(text: str) -> int:
    """The instructions (the first event, Ir) of one callgrind dump.

    ``totals:`` is the sum of the dump's cost lines, ``summary:`` the tool's own total; they
    agree except in a dump taken while a thread was mid-way (then ``totals:`` is what the
    cost lines hold). Raises ValueError when the text holds neither.
    """
    summary = None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("totals", "summary") and rest.split():
            value = int(rest.split()[0])
            if key == "totals":
                return value
            summary = value
    if summary is None:
        raise ValueError("no totals: or summary: line in the callgrind dump")
    return summary


def spread(values: list[float]) -> float:
    """(max - min) / mean: how far apart repeated counts are (0.01 is 1%)."""
    if not values:
        return float("nan")
    mean = sum(values) / len(values)
    return (max(values) - min(values)) / mean if mean else float("nan")


class Callgrind:
    """One process running under callgrind, steered with ``callgrind_control``."""

    def __init__(self, pid: int, out_file: Path) -> None:
        self.pid, self.out_file = pid, out_file

    def _control(self, flag: str, *extra: str) -> None:
        # callgrind_control reaches valgrind through vgdb; it returns once the command ran.
        proc = subprocess.run([CALLGRIND_CONTROL, flag, *extra, str(self.pid)],
                              capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0 or "Error" in proc.stdout + proc.stderr:
            raise RuntimeError(f"callgrind_control {flag} {self.pid} failed: "
                               f"{(proc.stdout + proc.stderr).strip()}")

    def instrument(self) -> None:
        self._control("-i", "on")

    def zero(self) -> None:
        self._control("-z")

    def dump(self) -> int:
        """Dump the counts since the last zero or dump; the instructions they hold."""
        before = set(self._dumps())
        self._control("-d")
        new = sorted(set(self._dumps()) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            raise RuntimeError(f"callgrind wrote no dump next to {self.out_file}")
        return parse_totals(new[-1].read_text(errors="replace"))

    def _dumps(self) -> list[Path]:
        # Dumps on request go to <out>.1, <out>.2, ...; <out> itself is written at exit.
        return list(self.out_file.parent.glob(self.out_file.name + ".*"))


async def drive(session: aiohttp.ClientSession, url: str, req_body: str, n: int, conns: int,
                headers: dict[str, str], *, stream: bool = False) -> None:
    """Exactly ``n`` requests, ``conns`` in flight; every answer read to its end, checked."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=req_body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status} while counting: {data[:200]!r}")
                if stream and not data.rstrip().endswith(b"data: [DONE]"):
                    raise RuntimeError(f"a counted stream did not end: {data[-200:]!r}")

    await asyncio.gather(*(worker() for _ in range(min(conns, n))))


async def _count(grind: Callgrind, url: str, req_body: str, headers: dict[str, str], *,
                 n: int, warmup: int, conns: int, phases: int, stream: bool) -> list[float]:
    # One session for all phases: the counted phases reuse the warm-up's keep-alive
    # connections, as wrk's do, so no phase pays for connection setup.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await drive(session, url, req_body, max(conns, warmup), conns, headers, stream=stream)
        grind.instrument()  # the control calls block this loop: nothing is in flight then
        await drive(session, url, req_body, max(conns, warmup // 4), conns, headers,
                    stream=stream)
        per_request: list[float] = []
        for _ in range(phases):
            grind.zero()
            await drive(session, url, req_body, n, conns, headers, stream=stream)
            per_request.append(grind.dump() / n)
    return per_request


def count(grind: Callgrind, url: str, req_body: str, headers: dict[str, str], *, n: int,
          warmup: int, conns: int, phases: int = 2, stream: bool = False) -> Count:
    """Instructions per request of the server behind ``grind`` (see the module docstring)."""
    per_request = asyncio.run(_count(grind, url, req_body, headers, n=n, warmup=warmup,
                                     conns=conns, phases=phases, stream=stream))
    return Count(per_request=sum(per_request) / len(per_request), phases=per_request,
                 spread=spread(per_request), requests=n, conns=conns, warmup=warmup)
