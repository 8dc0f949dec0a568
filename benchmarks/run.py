"""aiproxy's performance targets, measured in one command.

    .venv/bin/python benchmarks/run.py [--quick] [--duration S] [--soak] [--repeat N]
        [--workers N] [--no-icount | --icount-only]

Starts (as subprocesses, on free 127.0.0.1 ports) the mock upstream, the floor references
(``floor_passthrough.py``, ``floor_sse_relay.py``), aiproxy without limits, with in-memory
limits and with Redis limits (when ``redis-server`` exists), then drives each with ``wrk``
(non-stream and 50-chunk stream, 1 and 32 connections), measures per-chunk delay and memory
with small asyncio clients, counts instructions per request under callgrind (``icount.py``),
and prints the headline figures (instructions and CPU per request, aiproxy / floor), a table
and the targets with PASS/FAIL. The table is also written to ``benchmarks/results/latest.md``
and ``latest.json`` (``icount.md`` / ``.json`` for ``--icount-only``). See
docs/performance.md.

Every aiproxy row runs as users run it: the access log at ``--log-level`` (INFO), metrics,
and the usage ledger (an SQLite file of each process's own, as the CLI's default next to the
config); the "ledger rows" column counts the usage records the process took during the row
(from its /metrics), and the header lists each row's settings.

Pinning (with ``taskset`` and 2+ CPUs): the server under test (aiproxy or a floor) runs on
core 0; wrk, the mock upstream, redis-server and this script's own clients on core 1.
``--workers N`` scaling is measured only with 4+ CPUs (N workers on cores 0..N-1, the load
on the others); below that the rows are shown, unpinned, and the line says why there is no
scaling figure. Every process started here is stopped at the end, whatever happens (also on
Ctrl-C or SIGTERM). Exit status: 0 all targets pass, 1 a target fails or the harness
failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import importlib.util
import itertools
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import icount

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "wrk_post.lua"
TOKEN = "bench"
MODEL = "openai/gpt-4o-mini"  # as in the example config: upstream gets "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me a joke about proxies."},
]
CHUNKS = 50
SHORT_STREAM = 2  # chunks of the short streams counted beside the CHUNKS-long ones
# Paced streams under callgrind: chunks this far apart and this many streams in flight, so
# that the server (~50x slower under valgrind) still idles between the mock's ticks, as in
# the per-chunk test: each chunk then arrives alone and costs a loop wake-up, a read and a
# write of its own, where an unpaced stream's chunks share them.
PACED_MS = 20.0
PACED_CONNS = 4
PACED_STREAMS = 16  # a phase: 4 s at 4 in flight
PACED_MODE = f"stream, paced ({PACED_MS:g} ms, {PACED_CONNS} in flight)"
# Targets 4 and 3: (row label, its short name, the throughput it must leave, its key in the
# pairs and co-located results).
LIMITS_TARGETS = (("aiproxy + in-memory limits", "in-memory", 0.9, "memory"),
                  ("aiproxy + Redis limits", "Redis", 0.85, "redis"))
STAMP_RE = re.compile(rb'"x_sent_ns":(\d+)')

SERVER_CORE, LOAD_CORE = "0", "1"
# aiproxy picks uvloop when it is installed (--loop auto); the floors choose the same way.
AIPROXY_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def body(model: str = MODEL, stream: bool = False, **extra: object) -> str:
    data: dict[str, object] = {"model": model, "messages": MESSAGES, "temperature": 0.7,
                               "max_tokens": 64}
    if stream:
        data["stream"] = True
    data.update(extra)
    return json.dumps(data, separators=(",", ":"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- processes


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of these processes (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def busy_seconds() -> float:
    """CPU time all processes spent (all cores), from /proc/stat: user, nice and system.
    irq/softirq (loopback networking, charged to no process) and steal are left out."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / CLK_TCK


def core_times(core: str | None) -> tuple[float, float]:
    """Seconds one core (``None``: all) was busy (user, nice, system, irq, softirq) and was
    stolen (its vCPU wanted to run and the hypervisor ran something else), from /proc/stat."""
    name = "cpu" if core is None else f"cpu{core}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == name:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (
                    int(x) for x in (fields[1:9] + ["0"] * 8)[:8])
                return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK
    return 0.0, 0.0


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


class Proc:
    """A started server process, killed by its own id (its process group) at the end."""

    all: list[Proc] = []
    aiproxy = False  # an aiproxy process: its rows report the usage ledger's records

    def __init__(self, name: str, argv: list[str], *, core: str | None, port: int,
                 env: dict[str, str] | None = None, workdir: Path, ready_path: str = "") -> None:
        self.name, self.port, self.core = name, port, core
        self.ready_path = ready_path
        self.stderr_path = workdir / f"{name}.stderr"
        cmd = (["taskset", "-c", core] if core is not None else []) + argv
        self.cmd = cmd
        with self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                          env={**os.environ, **(env or {})}, cwd=workdir,
                                          start_new_session=True)
        Proc.all.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        """VmRSS of the process and its children (``--workers`` supervisors have some)."""
        return sum(_status_kb(p, "VmRSS") for p in process_tree(self.pid)) / 1024

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.pid))

    def fds(self) -> int:
        total = 0
        for p in process_tree(self.pid):
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{p}/fd"))
        return total

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n"
                                   f"{self.stderr_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout}s")

    def _exited(self) -> bool:
        """True once the leader has exited; it stays a zombie (its pid, our group id, is not
        reused) until :meth:`stop` reaps it."""
        try:
            return os.waitid(os.P_PID, self.pid,
                             os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
        except ChildProcessError:
            return True

    def stop(self) -> None:
        if self.popen.returncode is None:  # not reaped yet: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.02)
            # The group also holds --workers children: none may outlive the run.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        if self in Proc.all:
            Proc.all.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in reversed(list(cls.all)):
            with contextlib.suppress(Exception):
                proc.stop()


# --------------------------------------------------------------------------- configs


def bench_config(mock_port: int, *, limits: bool) -> str:
    lines = ["models:",
             f"  - name: {MODEL}",
             "    provider: openai",
             f"    url: http://127.0.0.1:{mock_port}/v1",
             "    token: upstream-token"]
    if limits:
        # Huge: nothing is ever refused, but every request goes through the limiter.
        lines.append("    requests_per_minute: 1000000000")
    return "\n".join(lines) + "\n"


def ten_model_config(mock_port: int) -> str:
    """The shape of config/provider-config.example.yaml, every upstream being the mock."""
    base = f"http://127.0.0.1:{mock_port}"
    return f"""models:
  - name: "deepseek/deepseek-r1:free"
    provider: openrouter
    priority: 1
    requests_per_minute: 20
    requests_per_hour: 1000
    requests_per_day: 1000
    url: "{base}/v1/chat/completions"
    token: t
    max_request_length: 167731
    model_size: BIG
    http_client_config: {{timeout_seconds: 30, idle_conn_timeout_seconds: 90}}
    options: {{http_referer: "https://example.com", x_title: "my app"}}
  - name: {MODEL}
    provider: openai
    priority: 2
    requests_per_minute: 100000
    tokens_per_minute: 100000000
    url: "{base}/v1"
    token: t
    model_size: SMALL
  - name: groq/llama-3.3-70b-versatile
    provider: groq
    priority: 1
    requests_per_minute: 30
    requests_per_day: 14400
    url: "{base}/v1"
    token: t
    max_request_length: 120000
    model_size: BIG
  - name: huggingface/meta-llama/Llama-3.1-8B-Instruct
    provider: huggingface
    priority: 3
    requests_per_minute: 10
    url: "{base}/v1"
    token: t
    model_size: SMALL
  - name: gemini/gemini-2.0-flash
    provider: gemini
    priority: 2
    requests_per_minute: 15
    requests_per_day: 1500
    url: "{base}/v1beta"
    token: t
    model_size: BIG
    timeouts: {{connect: 5, first_token: 30, idle: 30, total: 120}}
  - name: command-r-plus
    provider: cohere
    priority: 3
    requests_per_minute: 20
    url: "{base}"
    token: t
    model_size: BIG
  - name: GigaChat
    provider: gigachat
    priority: 4
    requests_per_minute: 10
    url: "{base}/api/v1"
    token: "id:secret"
    model_size: SMALL
    options: {{scope: GIGACHAT_API_PERS, oauth_url: "{base}/oauth"}}
  - name: "@cf/meta/llama-3.1-8b-instruct"
    provider: cloudflare
    priority: 2
    requests_per_minute: 50
    url: "{base}/client/v4"
    token: t
    model_size: SMALL
    options: {{account_id: acc}}
  - name: "@cf/black-forest-labs/flux-1-schnell"
    provider: cloudflare
    priority: 1
    requests_per_minute: 10
    url: "{base}/client/v4"
    token: t
    serves: [images]
    options: {{account_id: acc}}
  - name: openai/gpt-4o
    provider: openai
    priority: 1
    requests_per_minute: 500
    url: "{base}/v1"
    token: t
    model_size: BIG
groups:
  fast: [groq/llama-3.3-70b-versatile, "@cf/meta/llama-3.1-8b-instruct"]
"""


def workers_plan(cpus: int, n: int) -> tuple[dict[int, str], str, int] | None:
    """Cores for the ``--workers`` scaling scenario, or None when the machine is too small.

    Scaling means something only when the load generator and the mock upstream do not share
    the workers' cores: N workers on cores 0..N-1 (1 worker on core 0), wrk and the mock on
    the rest, at least two of them, on a machine of at least 4 cores. Returns the cores of
    each worker count (taskset lists), the load's cores, and wrk's threads (one per load
    core, up to 4).
    """
    if cpus < 4 or cpus - n < 2:
        return None
    cores = {1: "0", n: f"0-{n - 1}"}
    return cores, f"{n}-{cpus - 1}", min(4, cpus - n)


# --------------------------------------------------------------------------- wrk


def _against(floor: Proc, proxy: Proc, memory: Proc | None,
             redis: Proc | None) -> list[tuple[str, Proc, Proc]]:
    """``(key, reference, subject)`` of the ratio targets at 32 connections: aiproxy against
    the floor pass-through (target 1), aiproxy with in-memory and with Redis limits against
    aiproxy without (targets 4 and 3), those that run."""
    return [("32", floor, proxy)] + [(name, proxy, proc) for name, proc in
                                     (("memory", memory), ("redis", redis)) if proc]


# aiproxy serves with the cyclic collector's young threshold raised (aiproxy/http/app.py,
# GC_YOUNG_THRESHOLD; tests/test_benchmark_harness.py keeps the two equal). A second floor
# runs with the same, so that the co-located runs also say what target 1's ratio is against
# a reference given that tuning too: the part of the gain the floor would have had as well.
FLOOR_GC_YOUNG = 10_000


def run_wrk(url: str, req_body: str, conns: int, duration: float, *, core: str | None,
            max_requests: int = 0, body2: str = "", every: int = 10, threads: int = 1) -> dict:
    env = {**os.environ, "WRK_BODY": req_body, "WRK_TOKEN": TOKEN,
           "WRK_MAX_REQUESTS": str(max_requests), "WRK_BODY2": body2, "WRK_EVERY": str(every)}
    cmd = (["taskset", "-c", core] if core is not None else []) + [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "--latency", "-s", str(LUA), url]
    started = time.monotonic()
    elapsed = None
    if max_requests:
        # Counted run: wrk's Lua prints WRK_DONE after max_requests answers; wrk's main thread
        # would still sleep for all of -d, so interrupt it (it then prints its summary).
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) as wrk:
            lines = []
            try:
                assert wrk.stdout is not None
                for line in wrk.stdout:
                    lines.append(line)
                    if line.startswith("WRK_DONE") and elapsed is None:
                        elapsed = time.monotonic() - started
                        wrk.send_signal(signal.SIGINT)
                err = wrk.stderr.read() if wrk.stderr else ""
                wrk.wait(timeout=30)
            finally:
                if wrk.poll() is None:
                    wrk.kill()
        stdout, returncode = "".join(lines), wrk.returncode
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=duration + 120, check=False)
        stdout, err, returncode = proc.stdout, proc.stderr, proc.returncode
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            raw = json.loads(line[len("WRK_JSON "):])
            seconds = elapsed or raw["duration_us"] / 1e6
            errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
            return {"requests": raw["requests"], "rps": raw["requests"] / seconds,
                    "p50": raw["p50_us"] / 1000, "p90": raw["p90_us"] / 1000,
                    "p99": raw["p99_us"] / 1000, "p999": raw["p999_us"] / 1000,
                    "max": raw["max_us"] / 1000, "errors": errors, "non2xx": raw["status"]}
    raise RuntimeError(f"wrk gave no summary (rc {returncode}):\n{stdout}\n{err}")


# --------------------------------------------------------------------------- the usage ledger


def run_wrk_at_once(targets: dict[str, tuple[Proc, str]], req_body: str, conns: int,
                    duration: float, *, core: str | None) -> dict[str, dict]:
    """wrk against several servers at the same time (one run each, in threads), keyed as
    ``targets`` (``name: (server, url)``); each result also has ``cpu_us``, the server's CPU
    time per request over the run."""
    before = {name: proc.cpu() for name, (proc, _) in targets.items()}
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        jobs = {name: pool.submit(run_wrk, url, req_body, conns, duration, core=core)
                for name, (_, url) in targets.items()}
        res = {name: job.result() for name, job in jobs.items()}
    for name, (proc, _) in targets.items():
        res[name]["cpu_us"] = (proc.cpu() - before[name]) / max(1, res[name]["requests"]) * 1e6
    return res


def ledger_records(metrics_text: str) -> float | None:
    """Usage records a proxy has taken (written to its database, or queued for it), from its
    /metrics; None when the text has no ledger counters (a ledger that is off)."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("aiproxy_usage_records_written_total", "aiproxy_usage_records_queued"):
            found[name] = found.get(name, 0.0) + float(value)
    if "aiproxy_usage_records_written_total" not in found:
        return None
    return sum(found.values())


def proxy_ledger_records(port: int) -> float | None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return ledger_records(resp.read().decode())
    except OSError:
        return None


# --------------------------------------------------------------------------- async clients


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def _check(url: str, model: str, stream: bool) -> str | None:
    """One request, checked; an error message or None."""
    async with aiohttp.ClientSession() as session, session.post(
            url, data=body(model, stream), headers=_headers(),
            timeout=aiohttp.ClientTimeout(total=15)) as resp:
        data = await resp.read()
        if resp.status != 200:
            return f"HTTP {resp.status}: {data[:300]!r}"
        if stream:
            if not data.rstrip().endswith(b"data: [DONE]"):
                return f"stream did not end with [DONE]: {data[-200:]!r}"
            if data.count(b"\ndata: ") + 1 < CHUNKS:
                return f"stream has {data.count(b'data: ')} events, expected {CHUNKS}+"
        elif b'"choices"' not in data:
            return f"no choices in {data[:200]!r}"
    return None


def check(url: str, model: str, stream: bool) -> str | None:
    try:
        return asyncio.run(_check(url, model, stream))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[k]


async def _chunk_samples(url: str, model: str, streams: int, concurrency: int,
                         delay_ms: float, *, stagger: int | None = None,
                         ) -> tuple[list[float], list[float], int, list[float], list[float]]:
    """Per-chunk one-way delays (client arrival time minus the mock's x_sent_ns stamp) and
    inter-arrival gaps, in ms, of ``streams`` stamped streams; the failed streams; the
    delays of the mid-stream chunks alone (all but each stream's first and last two: those
    meet the other streams' openings and settlements, the rest only their chunks); and the
    delays of each stream's first and last chunk.

    ``stagger`` None: a closed loop, ``concurrency`` streams at a time, each started the
    moment another ends (all the same length, they open and end nearly together). A seed:
    an open loop, streams started at random times (exponential gaps, the same schedule for
    every path given the same seed) at a rate that keeps ``concurrency`` open on average,
    as independent clients arrive."""
    delays: list[float] = []
    gaps: list[float] = []
    middle: list[float] = []
    ends: list[float] = []
    failures = 0
    req = body(model, True, mock_stamp=True, mock_chunk_delay_ms=delay_ms)
    # Closed: a stream starts when one of ``concurrency`` slots is free. Staggered: at its
    # time on the schedule (a stream lasts ~CHUNKS-1 gaps, so this rate keeps ``concurrency``
    # open on average).
    sem = asyncio.Semaphore(concurrency) if stagger is None else contextlib.nullcontext()
    starts: list[float] = []
    if stagger is not None:
        rng = random.Random(stagger)
        mean_gap = (CHUNKS - 1) * delay_ms / 1000 / concurrency
        starts = list(itertools.accumulate(rng.expovariate(1 / mean_gap)
                                           for _ in range(streams)))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def one(i: int) -> None:
            nonlocal failures
            if starts:
                await asyncio.sleep(max(0.0, began + starts[i] - loop.time()))
            async with sem:
                try:
                    async with session.post(url, data=req, headers=_headers(),
                                            timeout=aiohttp.ClientTimeout(total=60)) as resp:
                        last = None
                        mine: list[float] = []
                        async for line in resp.content:
                            now = time.monotonic_ns()
                            match = STAMP_RE.search(line)
                            if match is None:
                                continue
                            mine.append((now - int(match.group(1))) / 1e6)
                            if last is not None:
                                gaps.append((now - last) / 1e6)
                            last = now
                        delays.extend(mine)
                        middle.extend(mine[1:-2])
                        ends.extend(mine[:1] + mine[-1:] if len(mine) > 1 else mine)
                except (aiohttp.ClientError, TimeoutError):
                    failures += 1

        await asyncio.gather(*(one(i) for i in range(streams)))
    return delays, gaps, failures, middle, ends


def chunk_stats(delays: list[float], gaps: list[float], failures: int, streams: int,
                middle: list[float] | None = None, ends: list[float] | None = None) -> dict:
    delays, gaps, middle = sorted(delays), sorted(gaps), sorted(middle or [])
    p99 = pct(delays, 99)
    res = {"chunks": len(delays), "streams": streams, "failures": failures,
           "p50": pct(delays, 50), "p90": pct(delays, 90), "p99": p99,
           "max": delays[-1] if delays else float("nan"),
           "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99),
           "mid_p99": pct(middle, 99) if middle else float("nan")}
    # Where the tail is: the share of the chunks at or past the p99 that are a stream's
    # first or last (2 of its CHUNKS chunks: 4% of all).
    tail = sum(1 for d in delays if d >= p99)
    res["ends_p50"] = pct(sorted(ends or []), 50)
    res["ends_tail_share"] = sum(1 for d in ends or () if d >= p99) / tail if tail else 0.0
    return res


async def _chunk_delays(url: str, model: str, streams: int, concurrency: int,
                        delay_ms: float, *, stagger: int | None = None) -> dict:
    delays, gaps, failures, middle, ends = await _chunk_samples(
        url, model, streams, concurrency, delay_ms, stagger=stagger)
    return chunk_stats(delays, gaps, failures, streams, middle, ends)


async def _hold_streams(url: str, model: str, count: int, proc: Proc, hold: float) -> dict:
    """Open ``count`` slow streams through ``proc``; sample its RSS while all are open."""
    opened = 0
    all_open = asyncio.Event()
    failures: list[str] = []
    sem = asyncio.Semaphore(64)  # opening pace: the listen backlog is finite
    req = body(model, True, mock_chunks=100000, mock_chunk_delay_ms=1000)
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector)

    async def one() -> None:
        nonlocal opened
        try:
            await sem.acquire()
            released = False
            try:
                async with session.post(url, data=req, headers=_headers()) as resp:
                    if resp.status != 200:
                        failures.append(f"HTTP {resp.status}")
                        return
                    async for _line in resp.content:
                        if not released:
                            released = True
                            sem.release()
                            opened += 1
                            if opened == count:
                                all_open.set()
            finally:
                if not released:
                    sem.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(type(exc).__name__)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    samples: list[float] = []
    fds_open = 0
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_open.wait(), timeout=90)
        end = time.monotonic() + hold
        while time.monotonic() < end:
            samples.append(proc.rss_mb())
            await asyncio.sleep(0.25)
        fds_open = proc.fds()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    await asyncio.sleep(3)  # let the proxy see the disconnects and release upstreams
    return {"opened": opened, "failures": len(failures), "rss_max": max(samples, default=0.0),
            "fds_open": fds_open, "rss_after": proc.rss_mb(), "fds_after": proc.fds()}


# --------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
        self.server_core = SERVER_CORE if self.pin else None
        self.load_core = LOAD_CORE if self.pin else None
        self.workdir = Path(tempfile.mkdtemp(prefix="aiproxy-bench-"))
        self.rows: list[dict] = []
        self.extra: dict[str, object] = {}
        self.targets: list[dict] = []
        self.notes: list[str] = []
        # scenario label -> the settings its rows ran with (the report's header lists them)
        self.settings: dict[str, str] = {}
        env = {"AUTH_TOKEN": TOKEN, "LOG_LEVEL": args.log_level, "LOG_FORMAT": "json"}
        if args.proxy_src:
            env["PYTHONPATH"] = str(Path(args.proxy_src).resolve())
        self.proxy_env = env

    # -- processes

    def start(self, name: str, argv: list[str], *, core: str | None, port: int,
              env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, core=core, port=port, env=env, workdir=self.workdir)
        proc.wait_ready()
        return proc

    def start_mock(self, name: str = "mock", core: str | None = "load") -> Proc:
        port = free_port()
        return self.start(name, [sys.executable, str(HERE / "mock_upstream.py"), "--port",
                                 str(port), "--chunks", str(CHUNKS)],
                          core=self.load_core if core == "load" else core, port=port)

    def start_floor(self, kind: str, mock: Proc, *extra: str) -> Proc:
        port = free_port()
        script = "floor_sse_relay.py" if kind == "floor-sse" else "floor_passthrough.py"
        return self.start(kind, [sys.executable, str(HERE / script), "--port", str(port),
                                 "--upstream", f"http://127.0.0.1:{mock.port}/v1", *extra],
                          core=self.server_core, port=port)

    def proxy_argv(self, name: str, config: str, port: int,
                   env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """How aiproxy ``name`` is started: its argv and environment. Each process has its
        own usage ledger, an SQLite file as the CLI's default is (next to the config), so two
        proxies of one run never share a database."""
        path = self.workdir / f"{name}.yaml"
        path.write_text(config)
        ledger = f"sqlite:///{self.workdir / f'{name}-usage.db'}"
        return ([sys.executable, "-m", "aiproxy", "--config", str(path),
                 "--addr", f"127.0.0.1:{port}"],
                {**self.proxy_env, "DATABASE_URL": ledger, **(env or {})})

    def start_proxy(self, name: str, config: str, *, env: dict[str, str] | None = None,
                    extra: list[str] | None = None, core: str | None = "server") -> Proc:
        port = free_port()
        argv, penv = self.proxy_argv(name, config, port, env)
        proc = self.start(name, [*argv, *(extra or [])],
                          core=self.server_core if core == "server" else core, port=port,
                          env=penv)
        proc.aiproxy = True
        return proc

    def proxy_settings(self, *, log_level: str | None = None, limits: str = "none",
                       workers: int = 0) -> str:
        """The settings an aiproxy row ran with, as the report's header lists them."""
        level = (log_level or self.args.log_level).upper()
        ledger = ("SQLite, one file shared by the workers" if workers
                  else "SQLite, a file of its own")
        metrics = "on (Prometheus multiprocess mode)" if workers > 1 else "on"
        return (f"LOG_LEVEL={level} (access log as JSON to /dev/null), metrics {metrics}, "
                f"usage ledger on ({ledger}), limits {limits}, event loop {AIPROXY_LOOP}")

    def start_redis(self) -> tuple[Proc | None, str]:
        binary = shutil.which("redis-server")
        if binary is None:
            return None, "redis-server not found (apt-get install -y redis-server)"
        try:
            import redis  # noqa: F401 - aiproxy's optional dependency
        except ImportError:
            return None, "the redis package is not installed (pip install -e '.[redis]')"
        port = free_port()
        proc = self.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no",
                                    "--dir", str(self.workdir)],
                          core=self.load_core, port=port)
        return proc, f"redis://127.0.0.1:{port}/0"

    @staticmethod
    def url(proc: Proc) -> str:
        return f"http://127.0.0.1:{proc.port}/v1/chat/completions"

    # -- measuring

    def measure(self, label: str, proc: Proc, model: str, stream: bool, conns: int, *,
                load_core: str | None = "load", wrk_threads: int = 1) -> dict:
        args = self.args
        req = body(model, stream)
        load_core = self.load_core if load_core == "load" else load_core
        run_wrk(self.url(proc), req, conns, args.warmup, core=load_core, threads=wrk_threads)
        ledger_before = proxy_ledger_records(proc.port) if proc.aiproxy else None
        results = []
        for _ in range(args.repeat):
            ours = [p for p in Proc.all if p.alive()]
            before, ours_before = proc.cpu(), sum(p.cpu() for p in ours)
            busy, wrk_cpu, start = busy_seconds(), children_cpu(), time.monotonic()
            res = run_wrk(self.url(proc), req, conns, args.duration, core=load_core,
                          threads=wrk_threads)
            # CPU the server under test spent per request: steadier than req/s when other
            # work shares the machine (10 ms clock ticks: fine over seconds of load).
            res["cpu_us"] = (proc.cpu() - before) / max(1, res["requests"]) * 1e6
            # Cores kept busy by processes that are not ours (other jobs on a shared box).
            foreign = (busy_seconds() - busy) - (sum(p.cpu() for p in ours) - ours_before) \
                - (children_cpu() - wrk_cpu)
            res["other_load"] = max(0.0, foreign / (time.monotonic() - start))
            results.append(res)
        best = sorted(results, key=lambda r: r["rps"])[len(results) // 2]  # the median run
        row = {"scenario": label, "mode": "stream" if stream else "non-stream",
               "conns": conns, **best, "rss_mb": proc.rss_mb(), "pid": proc.pid,
               "runs_rps": [round(r["rps"], 1) for r in results],
               "ledger": self.ledger_delta(proc, ledger_before)}
        self.rows.append(row)
        err = "" if not (row["errors"] or row["non2xx"]) else \
            f"  ERRORS {row['errors']} socket, {row['non2xx']} non-2xx"
        log(f"  {label:<28} {row['mode']:<17} c={conns:<3} {row['rps']:>9.1f} req/s  "
            f"p50 {row['p50']:.3f}  p90 {row['p90']:.3f}  p99 {row['p99']:.3f} ms  "
            f"CPU {row['cpu_us']:.0f} us/req  RSS {row['rss_mb']:.1f} MB  "
            f"other load {row['other_load']:.2f} cores{err}")
        return row

    def paired(self, floor: Proc, proxy: Proc, memory: Proc | None,
               redis: Proc | None) -> None:
        """The ratio targets measured again as interleaved pairs: the reference and the
        subject take turns (R S, S R, R S, ...) in short runs, and each pair gives one ratio
        of CPU per request, one of throughput and one p50 difference; the medians are the
        targets' figures. A shared VM drifts by tens of percent over the minutes between two
        rows of the table; within a pair, both sides meet the same machine. Pairs: floor
        pass-through and aiproxy at 32 connections and at 1 (targets 1, 2), aiproxy and
        aiproxy with in-memory and with Redis limits at 32 (targets 3, 4)."""
        args = self.args
        if args.pairs <= 0:
            return
        log(f"\ninterleaved pairs: {args.pairs} pairs of {args.pair_duration:g} s runs, the "
            "reference and the subject taking turns:")
        req = body(MODEL, False)
        paired: dict[str, list[dict]] = {}
        sets = [(key, reference, subject, 32)
                for key, reference, subject in _against(floor, proxy, memory, redis)]
        sets.insert(1, ("1", floor, proxy, 1))
        for key, reference, subject, conns in sets:
            pairs = paired[key] = []
            for i in range(args.pairs):
                order = (("reference", reference), ("subject", subject))
                got: dict[str, dict] = {}
                for side, proc in (order if i % 2 == 0 else order[::-1]):
                    before = proc.cpu()
                    res = run_wrk(self.url(proc), req, conns, args.pair_duration,
                                  core=self.load_core)
                    got[side] = {"rps": res["rps"], "p50": res["p50"],
                                 "cpu_us": (proc.cpu() - before) / max(1, res["requests"])
                                 * 1e6, "errors": res["errors"] + res["non2xx"]}
                f, a = got["reference"], got["subject"]
                pair = {"reference": f, "subject": a,
                        "cpu_ratio": a["cpu_us"] / f["cpu_us"] if f["cpu_us"] else None,
                        "rps_ratio": a["rps"] / f["rps"] if f["rps"] else None,
                        "p50_added": a["p50"] - f["p50"]}
                pairs.append(pair)
                log(f"  {key:<6} c={conns:<3} pair {i + 1}: CPU {a['cpu_us']:.0f} / "
                    f"{f['cpu_us']:.0f} "
                    f"us/req = {pair['cpu_ratio'] or float('nan'):.3f}; "
                    f"{a['rps']:.0f} / {f['rps']:.0f} req/s; "
                    f"p50 {a['p50']:.3f} - {f['p50']:.3f} ms")
        self.extra["paired"] = paired

    def colocated(self, floor: Proc, proxy: Proc, memory: Proc | None,
                  redis: Proc | None, floor_gc: Proc | None = None) -> None:
        """The CPU ratios of targets 1, 3 and 4 measured with both servers under load at the
        same time: two wrk runs at once, one a server, both servers on the server core. Each
        run's two figures of CPU per request then come from the same seconds of the same
        machine, however it drifts (the pairs' two halves are seconds apart, and a shared VM
        moves by tens of percent within seconds). The servers share the core, so this is not
        the throughput of one alone: it is printed beside the scored figures, as a check."""
        args = self.args
        if args.colocated <= 0:
            return
        log(f"\nco-located: {args.colocated} runs of {args.pair_duration:g} s, the reference and "
            "the subject loaded at once on the server core:")
        req = body(MODEL, False)
        out: dict[str, list[dict]] = {}
        against = _against(floor, proxy, memory, redis)
        if floor_gc is not None:
            against.insert(1, ("32gc", floor_gc, proxy))
        for key, reference, subject in against:
            runs = out[key] = []
            for i in range(args.colocated):
                res = run_wrk_at_once({side: (proc, self.url(proc)) for side, proc in
                                       (("reference", reference), ("subject", subject))},
                                      req, 32, args.pair_duration, core=self.load_core)
                got = {side: {"rps": r["rps"], "cpu_us": r["cpu_us"],
                              "errors": r["errors"] + r["non2xx"]} for side, r in res.items()}
                f, a = got["reference"], got["subject"]
                run = {"reference": f, "subject": a,
                       "cpu_ratio": a["cpu_us"] / f["cpu_us"] if f["cpu_us"] else None}
                runs.append(run)
                log(f"  {key:<6} c=32  run {i + 1}: CPU {a['cpu_us']:.0f} / {f['cpu_us']:.0f} "
                    f"us/req = {run['cpu_ratio'] or float('nan'):.3f}; "
                    f"{a['rps']:.0f} + {f['rps']:.0f} req/s")
        self.extra["colocated"] = out

    @staticmethod
    def ledger_delta(proc: Proc, before: float | None) -> str:
        """The usage records ``proc`` took during the row's measured runs, from its /metrics
        ("-" for a floor, "off" without ledger counters): the proof that the row ran with the
        ledger on. It matches the row's requests (of all its runs with --repeat) plus the
        requests in flight when wrk stops, after the warm-up and after the run (up to twice
        the connections)."""
        if not proc.aiproxy:
            return "-"
        after = proxy_ledger_records(proc.port)
        if before is None or after is None:
            return "off"
        return f"{after - before:.0f}"

    def row(self, label: str, mode: str, conns: int) -> dict | None:
        return next((r for r in self.rows if r["scenario"] == label and r["mode"] == mode
                     and r["conns"] == conns), None)

    def target(self, name: str, measured: str, value: float | None, limit: str,
               ok: bool | None, rows: tuple[dict | None, ...] = (), *,
               headline: bool = False) -> None:
        if any(r is None for r in rows) or value is None:
            result = "N/A"
        elif any(r is not None and (r["errors"] or r["non2xx"]) for r in rows):
            result = "FAIL (errors)"
        else:
            result = "PASS" if ok else "FAIL"
        self.targets.append({"target": name, "measured": measured, "value": value,
                             "limit": limit, "result": result, "headline": headline})

    # -- the whole run

    def run(self) -> None:
        args = self.args
        log(f"aiproxy benchmark: {os.cpu_count()} CPUs, {platform.python_implementation()} "
            f"{platform.python_version()}, aiohttp {aiohttp.__version__}, work dir "
            f"{self.workdir}")
        if self.pin:
            log(f"pinning: aiproxy / floor under test on core {SERVER_CORE}; wrk, mock "
                f"upstream, redis-server and the asyncio clients on core {LOAD_CORE}")
            os.sched_setaffinity(0, {int(LOAD_CORE)})
        else:
            log("pinning: none (fewer than 2 CPUs, no taskset, or --no-pin)")
        log(f"aiproxy from: {self.aiproxy_origin()}; LOG_LEVEL={args.log_level} "
            "(access log to /dev/null)")
        self.settings["floor pass-through / floor SSE relay"] = (
            "no auth, parsing, logs, metrics, ledger or limits; "
            f"event loop {AIPROXY_LOOP}, as aiproxy's")
        if args.icount_only:
            self.settings["aiproxy"] = self.proxy_settings()
            self.icount(self.start_mock())
            self.evaluate()
            return
        mock = self.start_mock()
        floor = self.start_floor("floor", mock)
        relay = self.start_floor("floor-sse", mock)
        cfg = bench_config(mock.port, limits=False)
        cfg_limits = bench_config(mock.port, limits=True)
        proxy = self.start_proxy("aiproxy", cfg)
        self.settings["aiproxy"] = self.proxy_settings()
        proxy_mem = self.start_proxy("aiproxy-mem", cfg_limits)
        self.settings["aiproxy + in-memory limits"] = self.proxy_settings(
            limits="in memory (requests_per_minute 10^9: every request is counted, none "
                   "refused)")
        redis_proc, redis_url = self.start_redis()
        proxy_redis = None
        if redis_proc is not None:
            proxy_redis = self.start_proxy("aiproxy-redis", cfg_limits,
                                           env={"REDIS_URL": redis_url})
            self.settings["aiproxy + Redis limits"] = self.proxy_settings(
                limits="on Redis (the same limit; REDIS_URL to a local redis-server on the "
                       "load core)")
        else:
            self.notes.append(f"Redis scenarios skipped: {redis_url}")
        quiet = None
        if args.log_level.upper() == "INFO":
            quiet = self.start_proxy("aiproxy-nolog", cfg, env={"LOG_LEVEL": "WARNING"})
            self.settings["aiproxy (LOG_LEVEL=WARNING)"] = self.proxy_settings(
                log_level="WARNING")

        targets: list[tuple[str, Proc, str]] = [("direct (mock upstream)", mock, "gpt-4o-mini"),
                                                ("floor pass-through", floor, MODEL),
                                                ("floor SSE relay", relay, MODEL),
                                                ("aiproxy", proxy, MODEL),
                                                ("aiproxy + in-memory limits", proxy_mem, MODEL)]
        if proxy_redis is not None:
            targets.append(("aiproxy + Redis limits", proxy_redis, MODEL))
        for label, proc, model in targets:
            for stream in (False, True):
                problem = check(self.url(proc), model, stream)
                if problem:
                    raise RuntimeError(f"{label} fails a {'stream' if stream else 'plain'} "
                                       f"request: {problem}\n{proc.stderr_tail()}")

        for stream in (False, True):
            for conns in (1, 32):
                log(f"\n{f'stream ({CHUNKS} chunks)' if stream else 'non-stream'}, "
                    f"{conns} connection{'s' if conns > 1 else ''}:")
                for label, proc, model in targets:
                    # Each floor is the reference of one mode only.
                    if (stream and proc is floor) or (not stream and proc is relay):
                        continue
                    self.measure(label, proc, model, stream, conns)
                if quiet is not None and not stream and conns == 32:
                    self.measure("aiproxy (LOG_LEVEL=WARNING)", quiet, MODEL, False, 32)

        self.paired(floor, proxy, proxy_mem, proxy_redis)
        floor_gc = (self.start_floor("floor-gc", mock, "--gc-young", str(FLOOR_GC_YOUNG))
                    if args.colocated > 0 else None)
        self.colocated(floor, proxy, proxy_mem, proxy_redis, floor_gc)
        for proc in (floor, floor_gc, proxy_mem, proxy_redis, quiet, redis_proc):
            if proc is not None:
                proc.stop()  # idle, but nothing else may run on the cores now
        self.chunk_delay(mock, relay, proxy)
        relay.stop()

        self.memory(mock)
        self.workers(mock)
        if args.soak:
            self.soak(proxy)
        proxy.stop()
        if not args.no_icount:
            self.icount(mock)
        self.evaluate()

    def chunk_delay(self, mock: Proc, relay: Proc, proxy: Proc) -> None:
        """Per-chunk one-way delay of paced, stamped streams: direct, floor relay, aiproxy.
        The three paths take turns in rounds, so that noise hits them alike. Twice: in a
        closed loop (``concurrency`` streams at a time, each opened as another ends: they
        open and end nearly together; target 6 is scored on it), then with the stream starts
        staggered (an open loop at the same mean concurrency, as independent clients
        arrive: informational)."""
        args = self.args
        rounds = 4
        paths = (("direct (mock upstream)", mock, "gpt-4o-mini"),
                 ("floor SSE relay", relay, MODEL), ("aiproxy", proxy, MODEL))
        for key, staggered in (("chunk_delay", False), ("chunk_delay_staggered", True)):
            log(f"\nper-chunk delay (stamped chunks every {args.chunk_delay_ms:g} ms, "
                f"{args.streams} streams a path in {rounds} interleaved rounds, "
                + (f"started at random, {args.stream_concurrency} open on average):"
                   if staggered else f"{args.stream_concurrency} at a time):"))
            # Per path: delays, gaps, middle, ends (lists pooled over the rounds); failures.
            samples = {label: ([], [], [], []) for label, _, _ in paths}
            failed = dict.fromkeys(samples, 0)
            # The CPU each server spent on its streams (the mock's, for the direct path): a
            # paced stream's cost, where each chunk arrives alone and pays for a wake-up, a
            # read, a task step and a write of its own (see "Paced and unpaced" in
            # docs/performance.md).
            cpu_s, opened = dict.fromkeys(samples, 0.0), dict.fromkeys(samples, 0)
            per_round = max(1, args.streams // rounds)
            ours = [p for p in Proc.all if p.alive()]
            busy, mine = busy_seconds(), sum(p.cpu() for p in ours) + self_cpu()
            core_busy, core_stolen = core_times(self.server_core)
            start = time.monotonic()
            for r in range(rounds):
                for label, proc, model in paths:
                    before = proc.cpu()
                    delays, gaps, failures, middle, ends = asyncio.run(_chunk_samples(
                        self.url(proc), model, per_round, args.stream_concurrency,
                        args.chunk_delay_ms, stagger=r if staggered else None))
                    cpu_s[label] += proc.cpu() - before
                    opened[label] += per_round
                    for pooled, got in zip(samples[label], (delays, gaps, middle, ends),
                                           strict=True):
                        pooled.extend(got)
                    failed[label] += failures
            foreign = (busy_seconds() - busy) - (sum(p.cpu() for p in ours) + self_cpu()
                                                  - mine)
            other = max(0.0, foreign / (time.monotonic() - start))
            now_busy, now_stolen = core_times(self.server_core)
            stolen, ran = now_stolen - core_stolen, now_busy - core_busy
            # The servers' core: how much of the time it wanted to run the hypervisor gave
            # to another guest (on a shared VM, stalls that land on random chunks).
            steal = stolen / (stolen + ran) if stolen + ran > 0 else 0.0
            chunk: dict[str, dict] = {}
            for label, (delays, gaps, middle, ends) in samples.items():
                res = chunk[label] = chunk_stats(delays, gaps, failed[label], args.streams,
                                                 middle, ends)
                res["other_load"], res["steal"] = other, steal
                res["cpu_ms_stream"] = 1000 * cpu_s[label] / max(1, opened[label])
                log(f"  {label:<28} {res['chunks']} chunks: one-way delay p50 "
                    f"{res['p50']:.3f}  p90 {res['p90']:.3f}  p99 {res['p99']:.3f}  max "
                    f"{res['max']:.3f} ms (mid-stream p99 {res['mid_p99']:.3f}; first/last "
                    f"chunks p50 {res['ends_p50']:.3f}, {100 * res['ends_tail_share']:.0f}% "
                    f"of the chunks at or past the p99); inter-arrival p99 "
                    f"{res['gap_p99']:.3f} ms; CPU a stream {res['cpu_ms_stream']:.2f} ms; "
                    f"failures {res['failures']}")
            log(f"  other load during the test: {other:.2f} cores; the server core's time "
                f"stolen by the hypervisor: {100 * steal:.1f}% of what it ran")
            self.extra[key] = chunk

    def icount(self, mock: Proc) -> None:
        """Instructions per request under callgrind (see icount.py): the floor and aiproxy,
        non-stream, then (unless --icount-no-stream) the floor SSE relay and aiproxy's
        stream path. One server at a time on the server core; the mock stays native."""
        args = self.args
        why = icount.available()
        if why:
            self.notes.append(f"instruction counts skipped: {why}")
            log(f"\ninstructions per request: skipped ({why})")
            return
        log(f"\ninstructions per request (callgrind; {args.icount_requests} requests a "
            f"phase, {args.icount_phases} phases, {args.icount_conns} in flight, "
            f"{args.icount_warmup} warm-up; streams: {args.icount_streams} a phase):")
        upstream = f"http://127.0.0.1:{mock.port}/v1"
        stream_too = not args.icount_no_stream
        # One server process per kind; aiproxy counts both paths in one process (a startup
        # under valgrind costs ~15 s).
        # A case: (label, stream, chunks a stream: 0 the mock's CHUNKS, paced). Streams are
        # also counted at SHORT_STREAM chunks, so that a stream's fixed cost (its opening and
        # end: what the per-chunk test's first and last chunks wait behind) and its cost a
        # chunk come apart (two lengths, one line through them); and paced (PACED_MS), as
        # the per-chunk test's streams are.
        Case = tuple[str, bool, int, bool]
        streams: list[Case] = [("aiproxy", True, 0, False), ("aiproxy", True, SHORT_STREAM, False),
                               ("aiproxy", True, 0, True)]
        servers: list[tuple[str, list[Case]]] = [
            ("floor", [("floor pass-through", False, 0, False)]),
            ("aiproxy", [("aiproxy", False, 0, False)] + (streams if stream_too else []))]
        if stream_too:
            servers.insert(1, ("floor-sse", [("floor SSE relay", True, 0, False),
                                             ("floor SSE relay", True, SHORT_STREAM, False),
                                             ("floor SSE relay", True, 0, True)]))
        # The noise-free side of the limits targets: the same proxy with in-memory limits,
        # and with Redis limits.
        servers.append(("aiproxy-memory", [("aiproxy + in-memory limits", False, 0, False)]))
        if shutil.which("redis-server") and importlib.util.find_spec("redis"):
            servers.append(("aiproxy-redis", [("aiproxy + Redis limits", False, 0, False)]))
        results: list[dict] = []
        self.extra["icount"] = results
        started = time.monotonic()
        for kind, cases in servers:
            port = free_port()
            name = f"icount-{kind}"
            redis_proc = None
            if kind.startswith("aiproxy"):
                limited = kind in ("aiproxy-memory", "aiproxy-redis")
                extra_env: dict[str, str] = {}
                if kind == "aiproxy-redis":
                    redis_proc, redis_url = self.start_redis()
                    extra_env["REDIS_URL"] = redis_url
                argv, env = self.proxy_argv(name, bench_config(mock.port, limits=limited), port,
                                            env=extra_env)
                env = {**env, **icount.KEEP_CONNECTIONS}
            else:
                script = "floor_passthrough.py" if kind == "floor" else "floor_sse_relay.py"
                argv = [sys.executable, str(HERE / script), "--port", str(port),
                        "--upstream", upstream]
                env = {}
            out = self.workdir / f"{name}.callgrind"
            proc = Proc(name, [*icount.valgrind_argv(out), *argv], core=self.server_core,
                        port=port, env={**env, **icount.valgrind_env()}, workdir=self.workdir)
            proc.aiproxy = kind.startswith("aiproxy")
            try:
                proc.wait_ready(timeout=300)  # startup under valgrind: seconds to a minute
                grind = icount.Callgrind(proc.pid, out)
                for label, stream, chunks, paced in cases:
                    problem = check(self.url(proc), MODEL, stream)
                    if problem:
                        raise RuntimeError(f"{name} under valgrind: {problem}\n"
                                           f"{proc.stderr_tail()}")
                    n = args.icount_streams if stream else args.icount_requests
                    warmup = max(1, args.icount_warmup // (10 if stream else 1))
                    conns = args.icount_conns
                    extra: dict[str, object] = {"mock_chunks": chunks} if chunks else {}
                    if chunks:  # more streams a phase: a quarter of the long phase's chunks
                        n = max(n, n * CHUNKS // chunks // 4)
                    if paced:  # stamped, as the per-chunk test's chunks are
                        extra.update(mock_chunk_delay_ms=PACED_MS, mock_stamp=True)
                        n, warmup, conns = PACED_STREAMS, PACED_CONNS, PACED_CONNS
                    res = icount.count(grind, self.url(proc), body(MODEL, stream, **extra),
                                       _headers(), n=n, warmup=warmup, conns=conns,
                                       phases=args.icount_phases, stream=stream)
                    mode = "non-stream" if not stream else (
                        PACED_MODE if paced else
                        f"stream ({chunks} chunks)" if chunks else "stream")
                    row = {"scenario": label, "mode": mode, **res}
                    results.append(row)
                    phases = ", ".join(f"{p / 1e3:,.1f}k" for p in res["phases"])
                    log(f"  {label:<28} {row['mode']:<17} {res['per_request'] / 1e3:>9,.1f}k "
                        f"instructions/{'stream' if stream else 'request'} (phases {phases}: "
                        f"spread {100 * res['spread']:.2f}%)")
            finally:
                proc.stop()
                if redis_proc is not None:
                    redis_proc.stop()
        log(f"  ({time.monotonic() - started:.0f} s)")

    def aiproxy_origin(self) -> str:
        out = subprocess.run([sys.executable, "-c", "import aiproxy; print(aiproxy.__file__)"],
                             capture_output=True, text=True, check=False,
                             env={**os.environ, **self.proxy_env}, cwd=self.workdir)
        return (out.stdout.strip() or out.stderr.strip()).removesuffix("/__init__.py")

    def memory(self, mock: Proc) -> None:
        args = self.args
        log("\nmemory (config shaped like config/provider-config.example.yaml, 10 models):")
        proxy = self.start_proxy("aiproxy-10models", ten_model_config(mock.port))
        problem = check(self.url(proxy), MODEL, True)
        if problem:
            raise RuntimeError(f"aiproxy-10models: {problem}\n{proxy.stderr_tail()}")
        time.sleep(1.0)
        rest = {"rss_mb": proxy.rss_mb(), "fds": proxy.fds()}
        log(f"  at rest: RSS {rest['rss_mb']:.1f} MB, {rest['fds']} fds")
        held = asyncio.run(_hold_streams(self.url(proxy), MODEL, args.open_streams, proxy,
                                         args.hold))
        log(f"  {held['opened']}/{args.open_streams} streams open: RSS max {held['rss_max']:.1f} "
            f"MB, {held['fds_open']} fds; after closing them: RSS {held['rss_after']:.1f} MB, "
            f"{held['fds_after']} fds; failures {held['failures']}")
        self.extra["memory"] = {"rest": rest, "streams": held, "open_streams": args.open_streams}
        proxy.stop()

    def workers(self, mock: Proc) -> None:
        n = self.args.workers
        helptext = subprocess.run([sys.executable, "-m", "aiproxy", "--help"],
                                  capture_output=True, text=True, check=False,
                                  env={**os.environ, **self.proxy_env}, cwd=self.workdir).stdout
        if "--workers" not in helptext:
            log(f"\n--workers {n} scaling: not available (aiproxy has no --workers flag)")
            self.extra["workers"] = None
            return
        cpus = os.cpu_count() or 1
        plan = workers_plan(cpus, n) if self.pin else None
        if plan is None:
            log(f"\n--workers scaling: {cpus} CPUs, too few to give {n} workers and the load "
                f"generator cores of their own (>= {max(4, n + 2)} needed); the rows below "
                "run unpinned, for reference, not as a scaling figure:")
            cores, load_core, wrk_threads, load_mock = {1: None, n: None}, self.load_core, 1, mock
        else:
            cores, load_core, wrk_threads = plan
            log(f"\n--workers scaling: workers on cores {cores[n]}, wrk and a mock upstream of "
                f"their own on cores {load_core}:")
            load_mock = self.start_mock("mock-workers", core=load_core)
        res: dict[str, object] = {"n": n, "cpus": cpus, "pinned": plan is not None,
                                  "one": None, "many": None}
        try:
            for key, count in (("one", 1), ("many", n)):
                label = (f"aiproxy --workers {count}"
                         + (f" (cores {cores[count]})" if plan else " (unpinned)"))
                self.settings[label] = self.proxy_settings(workers=count)
                proc = self.start_proxy(f"aiproxy-w{count}", bench_config(load_mock.port,
                                                                          limits=False),
                                        extra=["--workers", str(count)], core=cores[count])
                try:
                    problem = check(self.url(proc), MODEL, False)
                    if problem:
                        log(f"  --workers {count}: {problem}")
                        continue
                    res[key] = self.measure(label, proc, MODEL, False, 32, load_core=load_core,
                                            wrk_threads=wrk_threads)
                finally:
                    proc.stop()
        finally:
            if load_mock is not mock:
                load_mock.stop()
        self.extra["workers"] = res

    def soak(self, proxy: Proc) -> None:
        args = self.args
        total, first = args.soak_requests, min(10_000, args.soak_requests // 10)
        log(f"\nsoak: {total} requests (1 in 10 streamed), 32 connections, RSS and fds "
            f"sampled after {first} and {total}:")
        url = self.url(proxy)
        samples = []
        for count in (first, total - first):
            res = run_wrk(url, body(MODEL), 32, 3600, core=self.load_core, max_requests=count,
                          body2=body(MODEL, True), every=10)
            time.sleep(1.0)
            samples.append({"requests": res["requests"], "errors": res["errors"] +
                            res["non2xx"], "rss_mb": proxy.rss_mb(), "fds": proxy.fds(),
                            "rps": res["rps"]})
            done = sum(s["requests"] for s in samples)
            log(f"  after {done} requests: RSS {samples[-1]['rss_mb']:.1f} MB, "
                f"{samples[-1]['fds']} fds ({res['rps']:.0f} req/s, "
                f"{samples[-1]['errors']} errors)")
        self.extra["soak"] = samples

    # -- verdicts

    def evaluate(self) -> None:
        self.targets = []
        t = self.target
        self.evaluate_icount()
        if not self.rows:  # --icount-only
            return
        level = self.args.log_level.upper()
        floor = self.row("floor pass-through", "non-stream", 32)
        prox = self.row("aiproxy", "non-stream", 32)
        if not self.evaluate_paired(level):
            cpu = (prox["cpu_us"] / floor["cpu_us"]
                   if floor and prox and floor["cpu_us"] else None)
            ratio = prox["rps"] / floor["rps"] if floor and prox else None
            t(f"non-stream, 32 conns (LOG_LEVEL={level}, metrics, ledger): aiproxy / floor "
              "pass-through CPU per request",
              f"CPU {prox['cpu_us']:.0f} / {floor['cpu_us']:.0f} us/req; throughput ratio "
              f"{ratio:.3f}" if cpu and ratio else "-", cpu,
              "<= 1.33", cpu is not None and cpu <= 1.33, (floor, prox), headline=True)
            t("non-stream, 32 conns: aiproxy / floor pass-through throughput",
              f"{prox['rps']:.0f} / {floor['rps']:.0f} req/s" if ratio else "-", ratio,
              ">= 0.75", ratio is not None and ratio >= 0.75, (floor, prox), headline=True)

            direct1 = self.row("direct (mock upstream)", "non-stream", 1)
            prox1 = self.row("aiproxy", "non-stream", 1)
            floor1 = self.row("floor pass-through", "non-stream", 1)
            added = prox1["p50"] - floor1["p50"] if floor1 and prox1 else None
            direct = f"; direct {direct1['p50']:.3f}" if direct1 else ""
            t("1 conn, non-stream: p50 aiproxy - floor pass-through",
              f"{prox1['p50']:.3f} - {floor1['p50']:.3f} ms{direct}" if added is not None
              else "-", added, "<= 0.1 ms",
              # wrk's percentiles are in 0.1 us: compare at that resolution, not binary floats.
              added is not None and round(added, 4) <= 0.1, (floor1, prox1))

        paired = self.extra.get("paired") or {}
        for label, _, limit, key in LIMITS_TARGETS:
            pairs = paired.get(key)
            if pairs:
                ratios = [p["rps_ratio"] for p in pairs if p["rps_ratio"] is not None]
                cpus = [p["cpu_ratio"] for p in pairs if p["cpu_ratio"] is not None]
                ratio = statistics.median(ratios) if ratios else None
                bad = any(p["reference"]["errors"] or p["subject"]["errors"] for p in pairs)
                t(f"non-stream, 32 conns: {label} / aiproxy without limits, throughput, "
                  "median of interleaved pairs",
                  f"{len(pairs)} pairs: {', '.join(f'{r:.3f}' for r in ratios)}; CPU "
                  f"{statistics.median(cpus):.2f}x" if ratio is not None and cpus else "-",
                  ratio, f">= {limit:.2f}", ratio is not None and ratio >= limit and not bad)
                continue
            lim = self.row(label, "non-stream", 32)
            ratio = lim["rps"] / prox["rps"] if lim and prox else None
            cpu = (f"; CPU {lim['cpu_us']:.0f} / {prox['cpu_us']:.0f} us/req = "
                   f"{lim['cpu_us'] / prox['cpu_us']:.2f}x" if ratio and prox["cpu_us"]
                   else "")
            t(f"non-stream, 32 conns: {label} / aiproxy without limits, throughput",
              f"{lim['rps']:.0f} / {prox['rps']:.0f} req/s{cpu}" if ratio else "-", ratio,
              f">= {limit:.2f}", ratio is not None and ratio >= limit, (lim, prox))

        relay = self.row("floor SSE relay", "stream", 32)
        sprox = self.row("aiproxy", "stream", 32)
        ratio = sprox["rps"] / relay["rps"] if relay and sprox else None
        t(f"stream ({CHUNKS} chunks), 32 conns: aiproxy / floor SSE relay throughput",
          f"{sprox['rps']:.0f} / {relay['rps']:.0f} streams/s; CPU {sprox['cpu_us']:.0f} / "
          f"{relay['cpu_us']:.0f} us/stream" if ratio else "-", ratio,
          ">= 1.00", ratio is not None and ratio >= 1.0, (relay, sprox))

        chunk = self.extra.get("chunk_delay") or {}
        cd, cp = chunk.get("direct (mock upstream)"), chunk.get("aiproxy")
        cf = chunk.get("floor SSE relay")
        added = cp["p99"] - cd["p99"] if cd and cp and cd["chunks"] and cp["chunks"] else None
        floor_added = f"; the floor adds {cf['p99'] - cd['p99']:.3f}" if cf and cd else ""
        t("stream: added per-chunk delay p99 (aiproxy - direct, one-way)",
          f"{cp['p99']:.3f} - {cd['p99']:.3f} ms{floor_added}" if added is not None else "-",
          added, "<= 1.0 ms", added is not None and added <= 1.0 and not cp["failures"])
        self.evaluate_paced_cpu(chunk, relay, sprox)
        staggered = self.extra.get("chunk_delay_staggered") or {}
        sd, sp = staggered.get("direct (mock upstream)"), staggered.get("aiproxy")
        sf = staggered.get("floor SSE relay")
        if sd and sp and sd["chunks"] and sp["chunks"]:
            floor_added = f"; the floor adds {sf['p99'] - sd['p99']:.3f}" if sf else ""
            self.targets.append({
                "target": "stream: added per-chunk delay p99, stream starts staggered (the "
                          "same streams opened at random times, as independent clients do)",
                "measured": f"{sp['p99']:.3f} - {sd['p99']:.3f} ms{floor_added}"
                            + ("; FAILURES" if sp["failures"] else ""),
                "value": sp["p99"] - sd["p99"], "limit": "(informational)", "result": "-",
                "headline": False})

        self.evaluate_colocated()
        self.evaluate_memory()
        self.evaluate_workers()

    def evaluate_paced_cpu(self, chunk: dict, relay: dict | None, sprox: dict | None) -> None:
        """Informational, beside target 6: the CPU a stream of the per-chunk test (paced:
        each chunk arrives alone) of aiproxy against the floor relay's, and the same ratio of
        the unpaced throughput test, whose chunks share reads, task steps and writes. The
        paced ratio is the one the per-chunk p99 waits behind."""
        cp, cf = chunk.get("aiproxy") or {}, chunk.get("floor SSE relay") or {}
        paced, floor = cp.get("cpu_ms_stream"), cf.get("cpu_ms_stream")
        if not paced or not floor:
            return  # a run from before it was measured
        unpaced = (f"; unpaced (the throughput test, 32 conns): {sprox['cpu_us'] / 1000:.2f} / "
                   f"{relay['cpu_us'] / 1000:.2f} ms = {sprox['cpu_us'] / relay['cpu_us']:.2f}x"
                   if relay and sprox and relay["cpu_us"] else "")
        self.targets.append({
            "target": "stream, paced (the per-chunk test's closed loop): CPU a stream, "
                      "aiproxy / floor SSE relay",
            "measured": f"{paced:.2f} / {floor:.2f} ms{unpaced}", "value": paced / floor,
            "limit": "(informational)", "result": "-", "headline": False})

    def evaluate_colocated(self) -> None:
        """The co-located CPU ratios (:meth:`colocated`): informational lines beside targets
        1, 3 and 4, each with the bound its target implies for a CPU ratio."""
        colocated = self.extra.get("colocated") or {}
        for key, label, bound in (
                ("32", "aiproxy / floor pass-through", "target 1: <= 1.33"),
                ("32gc", "aiproxy / floor pass-through run with aiproxy's collector "
                 f"threshold (gc young {FLOOR_GC_YOUNG:,})",
                 "target 1 against a reference tuned alike: <= 1.33"),
                ("memory", "aiproxy + in-memory limits / aiproxy without limits",
                 "target 4 as CPU: <= 1/0.90 = 1.11"),
                ("redis", "aiproxy + Redis limits / aiproxy without limits",
                 "target 3 as CPU: <= 1/0.85 = 1.18")):
            runs = colocated.get(key)
            if not runs:
                continue
            ratios = [r["cpu_ratio"] for r in runs if r["cpu_ratio"] is not None]
            bad = any(r["reference"]["errors"] or r["subject"]["errors"] for r in runs)
            measured = f"{len(runs)} runs: {', '.join(f'{r:.3f}' for r in ratios)}" \
                + ("; ERRORS" if bad else "") if ratios else "-"
            self.targets.append({
                "target": f"non-stream, 32 conns: {label} CPU per request, co-located (both "
                          f"loaded at once on the server core), median of {len(runs)} runs",
                "measured": measured,
                "value": statistics.median(ratios) if ratios else None,
                "limit": f"(informational; {bound})", "result": "-", "headline": False})

    def evaluate_paired(self, level: str) -> bool:
        """Targets 1 and 2 from the interleaved pairs (:meth:`paired`), if they ran: the
        median over the pairs of each figure."""
        paired = self.extra.get("paired")
        if not paired or not paired.get("32") or not paired.get("1"):
            return False
        t = self.target

        def median(pairs: list[dict], key: str) -> float | None:
            values = [p[key] for p in pairs if p[key] is not None]
            return statistics.median(values) if values else None

        def listed(pairs: list[dict], key: str, fmt: str) -> str:
            return ", ".join(format(p[key], fmt) for p in pairs if p[key] is not None)

        def errors(pairs: list[dict]) -> bool:
            return any(p["reference"]["errors"] or p["subject"]["errors"] for p in pairs)

        many, one = paired["32"], paired["1"]
        cpu, ratio = median(many, "cpu_ratio"), median(many, "rps_ratio")
        t(f"non-stream, 32 conns (LOG_LEVEL={level}, metrics, ledger): aiproxy / floor "
          "pass-through CPU per request, median of interleaved pairs",
          f"{len(many)} pairs: {listed(many, 'cpu_ratio', '.3f')}; throughput ratio "
          f"{ratio:.3f}" if cpu is not None and ratio is not None else "-", cpu, "<= 1.33",
          cpu is not None and cpu <= 1.33 and not errors(many), headline=True)
        t("non-stream, 32 conns: aiproxy / floor pass-through throughput, median of "
          "interleaved pairs", f"{len(many)} pairs: {listed(many, 'rps_ratio', '.3f')}",
          ratio, ">= 0.75", ratio is not None and ratio >= 0.75 and not errors(many),
          headline=True)
        added = median(one, "p50_added")
        direct1 = self.row("direct (mock upstream)", "non-stream", 1)
        direct = f"; direct {direct1['p50']:.3f} ms" if direct1 else ""
        t("1 conn, non-stream: p50 aiproxy - floor pass-through, median of interleaved pairs",
          f"{len(one)} pairs: {listed(one, 'p50_added', '.3f')} ms{direct}", added,
          "<= 0.1 ms",
          # wrk's percentiles are in 0.1 us: compare at that resolution, not binary floats.
          added is not None and round(added, 4) <= 0.1 and not errors(one))
        return True

    def evaluate_icount(self) -> None:
        """The instruction-count lines (informational: the issue sets no limit)."""
        counts = self.extra.get("icount")
        if not counts:
            self.targets.append({
                "target": "instructions per request: aiproxy / floor pass-through",
                "measured": "-", "value": None, "limit": "(informational)",
                "result": "not run" + (" (--no-icount)" if self.args.no_icount else ""),
                "headline": True})
            return
        by = {(c["scenario"], c["mode"]): c for c in counts}
        for mode, floor_label, unit in (("non-stream", "floor pass-through", "request"),
                                        ("stream", "floor SSE relay", "stream")):
            ours, floor = by.get(("aiproxy", mode)), by.get((floor_label, mode))
            if not ours or not floor:
                continue
            ratio = ours["per_request"] / floor["per_request"]
            self.targets.append({
                "target": f"instructions per {unit} ({mode}): aiproxy / {floor_label}",
                "measured": (f"{ours['per_request'] / 1e3:,.0f}k / "
                             f"{floor['per_request'] / 1e3:,.0f}k (phases within "
                             f"{100 * ours['spread']:.1f}% / {100 * floor['spread']:.1f}%)"),
                "value": ratio, "limit": "(informational)", "result": "-", "headline": True})
        # A stream's fixed cost (its opening and end) and its cost a chunk, from the counts
        # at two lengths. In the per-chunk test's closed loop, the streams' first and last
        # chunks wait behind the other streams' openings and ends: this is their noise-free
        # side.
        split: dict[str, tuple[float, float]] = {}
        for label in ("aiproxy", "floor SSE relay"):
            full = by.get((label, "stream"))
            short = by.get((label, f"stream ({SHORT_STREAM} chunks)"))
            if full and short:
                chunk = (full["per_request"] - short["per_request"]) / (CHUNKS - SHORT_STREAM)
                split[label] = (short["per_request"] - SHORT_STREAM * chunk, chunk)
        if len(split) == 2:
            (ours, ours_chunk), (floor, floor_chunk) = split["aiproxy"], split["floor SSE relay"]
            self.targets.append({
                "target": "instructions per stream, its opening and end (streams of "
                          f"{SHORT_STREAM} and {CHUNKS} chunks): aiproxy / floor SSE relay",
                "measured": f"{ours / 1e3:,.0f}k / {floor / 1e3:,.0f}k; a chunk "
                            f"{ours_chunk / 1e3:,.1f}k / {floor_chunk / 1e3:,.1f}k",
                "value": ours / floor, "limit": "(informational)", "result": "-",
                "headline": True})
        # Paced, as the per-chunk test's streams are: what a chunk that arrives alone costs
        # (the per-chunk p99 waits behind it), against the unpaced count of the same stream.
        paced = {label: (by.get((label, PACED_MODE)), by.get((label, "stream")))
                 for label in ("aiproxy", "floor SSE relay")}
        (ours_p, ours_u), (floor_p, floor_u) = paced["aiproxy"], paced["floor SSE relay"]
        if ours_p and floor_p:
            more = ""
            if ours_u and floor_u:  # what pacing adds, spread over the stream's chunks
                added = [(p["per_request"] - u["per_request"]) / 1e3 / CHUNKS
                         for p, u in ((ours_p, ours_u), (floor_p, floor_u))]
                more = f"; pacing adds {added[0]:,.1f}k / {added[1]:,.1f}k a chunk"
            self.targets.append({
                "target": f"instructions per stream paced ({PACED_MS:g} ms, {PACED_CONNS} in "
                          "flight): aiproxy / floor SSE relay",
                "measured": f"{ours_p['per_request'] / 1e3:,.0f}k / "
                            f"{floor_p['per_request'] / 1e3:,.0f}k{more}",
                "value": ours_p["per_request"] / floor_p["per_request"],
                "limit": "(informational)", "result": "-", "headline": True})
        plain = by.get(("aiproxy", "non-stream"))
        for label, name, limit, _ in LIMITS_TARGETS:
            limited = by.get((label, "non-stream"))
            if not plain or not limited:
                continue
            # What throughput the limiter leaves, where the proxy is CPU-bound: the inverse
            # ratio of the instructions a request costs with and without it.
            ratio = plain["per_request"] / limited["per_request"]
            self.targets.append({
                "target": f"instructions per request (non-stream): aiproxy / {label} (the "
                          f"{name} target, noise-free)",
                "measured": f"{plain['per_request'] / 1e3:,.0f}k / "
                            f"{limited['per_request'] / 1e3:,.0f}k",
                "value": ratio, "limit": f">= {limit:.2f}",
                "result": "PASS" if ratio >= limit else "FAIL"})

    def evaluate_memory(self) -> None:
        t = self.target
        mem = self.extra.get("memory") or {}
        rest = (mem.get("rest") or {}).get("rss_mb")
        t("RSS at rest, 10-model config", f"{rest:.1f} MB" if rest else "-", rest, "<= 80 MB",
          rest is not None and rest <= 80)
        held = mem.get("streams") or {}
        peak = held.get("rss_max")
        n = mem.get("open_streams", 0)
        complete = held.get("opened") == n and not held.get("failures")
        t(f"RSS with {n} concurrent open streams",
          f"{peak:.1f} MB ({held.get('opened')} open)" if peak else "-", peak, "<= 150 MB",
          peak is not None and peak <= 150 and complete)

        soak = self.extra.get("soak")
        if soak:
            growth = soak[1]["rss_mb"] - soak[0]["rss_mb"]
            fd_growth = soak[1]["fds"] - soak[0]["fds"]
            done = soak[0]["requests"] + soak[1]["requests"]
            errors = soak[0]["errors"] + soak[1]["errors"]
            t(f"soak (ledger on): RSS growth from request {soak[0]['requests']} to {done}",
              f"{soak[0]['rss_mb']:.1f} -> {soak[1]['rss_mb']:.1f} MB", growth, "<= 5 MB",
              growth <= 5 and not errors)
            # Pooled upstream keep-alive connections come and go (up to one per client
            # connection, 32); a leak grows with the requests between the samples instead.
            t("soak: open fds growth", f"{soak[0]['fds']} -> {soak[1]['fds']}", fd_growth,
              "<= 32 (the upstream pool)", fd_growth <= 32 and not errors)
        else:
            self.targets.append({"target": "soak: RSS growth over 100,000 requests",
                                 "measured": "-", "value": None, "limit": "<= 5 MB",
                                 "result": "not run (use --soak)"})

    def evaluate_workers(self) -> None:
        workers = self.extra.get("workers")
        if workers is None:
            self.targets.append({"target": "--workers scaling", "measured": "not available",
                                 "value": None, "limit": "(informational)", "result": "-"})
            return
        n, one, many = workers["n"], workers.get("one"), workers.get("many")
        name = f"--workers {n} / --workers 1 throughput (non-stream, 32 conns)"
        rows = (f"{many['rps']:.0f} / {one['rps']:.0f} req/s" if one and many
                else "a row failed")
        if not workers.get("pinned"):
            self.targets.append({
                "target": name,
                "measured": (f"not measurable here: {workers['cpus']} CPUs cannot give the "
                             f"load generator cores of its own (>= {max(4, n + 2)} needed); "
                             f"the rows, unpinned, for reference only: {rows}"),
                "value": None, "limit": "(informational)", "result": "-"})
            return
        ratio = many["rps"] / one["rps"] if one and many else None
        self.targets.append({"target": name, "measured": rows, "value": ratio,
                             "limit": "(informational)", "result": "-"})

    # -- reporting

    def report(self) -> str:
        args = self.args
        head = ["| scenario | mode | conns | req/s | p50 ms | p90 ms | p99 ms | CPU us/req "
                "| RSS MB | errors | ledger rows | other load |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                "| ---: |"]
        lines = list(head) if self.rows else []
        for r in self.rows:
            errs = r["errors"] + r["non2xx"]
            lines.append(f"| {r['scenario']} | {r['mode']} | {r['conns']} | {r['rps']:.0f} | "
                         f"{r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | "
                         f"{r['cpu_us']:.0f} | {r['rss_mb']:.1f} | {errs} | "
                         f"{r.get('ledger', '?')} | {r['other_load']:.2f} |")
        counts = self.extra.get("icount") or []
        if counts:
            c0 = counts[0]
            lines += [""] * bool(lines) + [f"Instructions per request (callgrind, user space; "
                      f"{len(c0['phases'])} counted phases a path, "
                      f"{c0['conns']} requests in flight; see benchmarks/icount.py):", "",
                      "| path | mode | requests a phase | instructions / request | phases "
                      "| spread |",
                      "| --- | --- | ---: | ---: | --- | ---: |"]
            for c in counts:
                phases = ", ".join(f"{p:,.0f}" for p in c["phases"])
                lines.append(f"| {c['scenario']} | {c['mode']} | {c['requests']} | "
                             f"{c['per_request']:,.0f} | {phases} | "
                             f"{100 * c['spread']:.2f}% |")
        for key, how in (("chunk_delay", f"{args.stream_concurrency} at a time, each opened "
                                         "as another ended"),
                         ("chunk_delay_staggered", "started at random times, "
                                                   f"{args.stream_concurrency} open on average")):
            chunk = self.extra.get(key) or {}
            if not chunk:
                continue
            lines += ["", f"Per-chunk one-way delay (mock stamps each chunk, chunks every "
                      f"{args.chunk_delay_ms:g} ms, {args.streams} streams, {how}):", "",
                      "| path | chunks | p50 ms | p90 ms | p99 ms | p99 mid-stream ms | "
                      "first/last chunk p50 ms | share of the p99 tail that is first/last "
                      "chunks | max ms | failures |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for label, c in chunk.items():
                mid = c.get("mid_p99")  # absent from runs before it was measured
                ends, share = c.get("ends_p50"), c.get("ends_tail_share")
                lines.append(f"| {label} | {c['chunks']} | {c['p50']:.3f} | {c['p90']:.3f} | "
                             f"{c['p99']:.3f} | {'-' if mid is None else f'{mid:.3f}'} | "
                             f"{'-' if ends is None else f'{ends:.3f}'} | "
                             f"{'-' if share is None else f'{100 * share:.0f}%'} | "
                             f"{c['max']:.3f} | {c['failures']} |")
            first = next(iter(chunk.values()))
            other, steal = first.get("other_load"), first.get("steal")
            if other is not None:
                lines += ["", f"Other load during this test: {other:.2f} cores"
                          + (f"; the server core's time stolen by the hypervisor: "
                             f"{100 * steal:.1f}% of the time it ran." if steal is not None
                             else ".")]
        if self.extra.get("chunk_delay"):
            lines += ["", "Mid-stream: all chunks but each stream's first and last two (those "
                      "meet the other streams' openings and settlements). First/last: each "
                      "stream's first and last chunk, 2 of its "
                      f"{CHUNKS} (4% of the chunks, so they can make the whole p99)."]
        lines += [""] * bool(lines) + ["| target | measured | value | limit | result |",
                  "| --- | --- | ---: | --- | --- |"]
        for tg in self.targets:
            value = tg["value"]
            shown = "-" if value is None else f"{value:.3f}"
            lines.append(f"| {tg['target']} | {tg['measured']} | {shown} | {tg['limit']} | "
                         f"**{tg['result']}** |")
        return "\n".join(lines)

    def headline(self) -> list[str]:
        """The figures to read first: instructions per request and CPU per request, each as
        aiproxy / floor (printed before the table)."""
        out = []
        for tg in self.targets:
            if not tg.get("headline"):
                continue
            value = "-" if tg["value"] is None else f"{tg['value']:.3f}"
            verdict = ("informational" if tg["limit"] == "(informational)"
                       else f"target {tg['limit']}: {tg['result']}")
            out.append(f"{tg['target']} = {value}  [{tg['measured']}; {verdict}]")
        return out

    def write(self, table: str, name: str = "latest") -> Path:
        args = self.args
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = self.meta()
        header = [
            "# aiproxy benchmark: latest run", "",
            f"- date: {meta['date']}; git {meta['git']}",
            f"- machine: {meta['cpus']} CPUs ({meta['cpu']}), {meta['kernel']}; "
            f"Python {meta['python']}, aiohttp {meta['aiohttp']}",
            f"- pinning: {meta['pinning']}",
            f"- {args.duration:g} s per scenario (median of {args.repeat}), "
            f"{args.warmup:g} s warm-up; aiproxy LOG_LEVEL={args.log_level}, access log to "
            "/dev/null",
            f"- command: `{meta['command']}`",
            "- settings of each row (every aiproxy row has the usage ledger on; its "
            "\"ledger rows\" column counts the usage records the process took during the "
            "row, from its /metrics):",
            *(f"  - {label}: {text}" for label, text in meta.get("settings", {}).items()),
            "- CPU us/req: CPU time (user + system) of the server under test per request (per "
            "stream in stream rows), from /proc/<pid>/stat; steadier than req/s on a shared "
            "machine. other load: cores kept busy by processes the benchmark did not start.",
        ] + [f"- note: {n}" for n in self.notes] + [""]
        top = [f"**{line}**" for line in self.headline()]
        (out / f"{name}.md").write_text("\n".join([*header, *top, ""]) + "\n" + table + "\n")
        (out / f"{name}.json").write_text(json.dumps(
            {"meta": meta, "rows": self.rows, "targets": self.targets, **self.extra},
            indent=1, default=str) + "\n")
        return out / f"{name}.md"

    def load(self, path: Path) -> None:
        """Results of an earlier run (its JSON), to score and report again (--rescore)."""
        data = json.loads(path.read_text())
        self.rows = data["rows"]
        self.loaded_meta = data["meta"]
        self.notes = []
        for key in ("chunk_delay", "chunk_delay_staggered", "memory", "soak", "icount",
                    "paired"):
            if data.get(key) is not None:
                self.extra[key] = data[key]
        workers = data.get("workers")
        if isinstance(workers, dict) and "n" not in workers:  # a run before --workers N
            workers = {"n": 2, "cpus": data["meta"].get("cpus"), "pinned": False,
                       "one": workers.get("1"), "many": workers.get("2")}
        self.extra["workers"] = workers

    def meta(self) -> dict:
        if getattr(self, "loaded_meta", None):
            return self.loaded_meta
        git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=False).stdout.strip()
        cpu = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "git": git or "?", "cpus": os.cpu_count(), "cpu": cpu,
                "kernel": f"{platform.system()} {platform.release()}",
                "python": platform.python_version(), "aiohttp": aiohttp.__version__,
                "pinning": (f"server under test on core {SERVER_CORE}; wrk, mock, redis, "
                            f"clients on core {LOAD_CORE}") if self.pin else "none",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "settings": self.settings, "args": vars(self.args)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs (~2 s a scenario, fewer streams): a smoke check")
    parser.add_argument("--duration", type=float, help="seconds per scenario (default 5)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scenario; the median is reported")
    parser.add_argument("--pairs", type=int, default=5,
                        help="interleaved floor/aiproxy pairs for targets 1 and 2 (0: judge "
                             "them by the table's rows instead)")
    parser.add_argument("--pair-duration", type=float, default=3.0,
                        help="seconds of each run of a pair (and of a co-located run)")
    parser.add_argument("--colocated", type=int, default=3,
                        help="co-located runs (reference and aiproxy loaded at once) for the "
                             "CPU ratios printed beside targets 1, 3 and 4 (0: none)")
    parser.add_argument("--soak", action="store_true",
                        help="also send --soak-requests requests and check RSS/fd growth")
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--open-streams", type=int, default=1000)
    parser.add_argument("--log-level", default="INFO",
                        help="aiproxy LOG_LEVEL (INFO keeps the access log: its cost counts)")
    parser.add_argument("--proxy-src", metavar="DIR",
                        help="run aiproxy from this source tree (PYTHONPATH) instead of the "
                             "installed one: for A/B tests of a change")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", default=str(HERE / "results"),
                        help="where latest.md / latest.json go")
    parser.add_argument("--rescore", metavar="JSON",
                        help="score and report the results of an earlier run again (its "
                             "latest.json), without measuring")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the work dir (configs, stderr of every process)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="the --workers scaling scenario compares N workers with 1 "
                             "(default 2)")
    icount_opts = parser.add_argument_group(
        "instructions per request (callgrind; see benchmarks/icount.py)")
    icount_opts.add_argument("--no-icount", action="store_true",
                             help="skip the instruction counts")
    icount_opts.add_argument("--icount-only", action="store_true",
                             help="only the instruction counts (~2-3 min): a quick, noise-free "
                                  "check of a change; written to icount.md / icount.json")
    icount_opts.add_argument("--icount-requests", type=int,
                             help="non-stream requests per counted phase (default 800; 150 "
                                  "with --quick)")
    icount_opts.add_argument("--icount-streams", type=int,
                             help="streams per counted phase (default 50; 25 with --quick "
                                  "--icount-only: --quick alone counts non-stream only)")
    icount_opts.add_argument("--icount-phases", type=int, default=2,
                             help="counted phases per server; their spread shows repeatability")
    icount_opts.add_argument("--icount-conns", type=int, default=32,
                             help="requests in flight while counting")
    icount_opts.add_argument("--icount-warmup", type=int,
                             help="uninstrumented warm-up requests (default 200; 100 with "
                                  "--quick); streams take a tenth")
    icount_opts.add_argument("--icount-no-stream", action="store_true",
                             help="count the non-stream path only")
    args = parser.parse_args(argv)
    if args.no_icount and args.icount_only:
        parser.error("--no-icount and --icount-only exclude each other")
    if args.icount_requests is None:
        args.icount_requests = 150 if args.quick else 800
    if args.icount_streams is None:
        args.icount_streams = 25 if args.quick else 50
    if args.quick and not args.icount_only:
        # A smoke run stays within ~3 min: the stream count (and its two servers' startups
        # under valgrind) is left to full runs and --icount-only.
        args.icount_no_stream = True
    if args.icount_warmup is None:
        args.icount_warmup = 100 if args.quick else 200
    args.icount_phases = max(1, args.icount_phases)
    args.workers = max(2, args.workers)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    args.warmup = 0.5 if args.quick else 1.0
    args.streams = 64 if args.quick else 200
    args.stream_concurrency = 16
    args.chunk_delay_ms = 10.0
    args.hold = 1.0 if args.quick else 2.5
    args.repeat = max(1, args.repeat)
    if args.quick:
        args.pairs = min(args.pairs, 3)
        args.colocated = min(args.colocated, 1)
        args.pair_duration = min(args.pair_duration, 1.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rescore:
        bench = Bench(args)
        shutil.rmtree(bench.workdir, ignore_errors=True)
        bench.load(Path(args.rescore))
        meta = bench.loaded_meta
        for key in ("duration", "warmup", "repeat", "log_level", "chunk_delay_ms", "streams",
                    "stream_concurrency"):
            setattr(args, key, meta.get("args", {}).get(key, getattr(args, key)))
        bench.evaluate()
        table = bench.report()
        print("\n".join(bench.headline()) + "\n")
        print(table)
        print(f"\nwritten to {bench.write(table, 'icount' if not bench.rows else 'latest')}")
        return 1 if any(t["result"].startswith("FAIL") for t in bench.targets) else 0
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    bench = Bench(args)
    code = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        if code:
            with contextlib.suppress(Exception):
                bench.evaluate()  # what was measured before the failure still gets reported
        Proc.stop_all()
        if not args.keep_logs and code == 0:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        elif bench.workdir.exists():
            print(f"logs kept in {bench.workdir}", file=sys.stderr)
    if not bench.rows and not bench.extra.get("icount"):
        return code or 1
    table = bench.report()
    # The noise-free figure and the CPU ratio first: what a developer reads to judge a change.
    print("\n" + "\n".join(bench.headline()))
    print("\n" + table)
    # An interrupted or failed run never replaces the last complete one; an --icount-only
    # run has a file of its own.
    name = "icount" if args.icount_only else "latest"
    path = bench.write(table, f"partial-{name}" if code and args.icount_only
                       else "partial" if code else name)
    print(f"\nwritten to {path} and {path.with_suffix('.json')}")
    if code:
        return code
    return 1 if any(t["result"].startswith("FAIL") for t in bench.targets) else 0


if __name__ == "__main__":
    sys.exit(main())
