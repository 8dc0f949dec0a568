"""Profile aiproxy's hot path under wrk load with py-spy, and summarise where the time goes.

    .venv/bin/pip install py-spy     # into the venv only; not a project dependency
    .venv/bin/python benchmarks/profile_proxy.py [--mode non-stream|stream|both]
        [--duration 10] [--conns 32] [--limits none|memory|redis] [--proxy-src DIR]

Starts the mock upstream and aiproxy as ``benchmarks/run.py`` does (aiproxy on core 0, wrk
and the mock on core 1), samples aiproxy with ``py-spy record --format raw`` while wrk drives
it, and prints the top functions by own ("self") time and by inclusive time, and the share of
each layer (aiproxy, aiohttp, asyncio/sockets, logging, ...). Percentages are of the samples in
which aiproxy was busy (py-spy leaves out idle samples). Raw collapsed stacks are kept in
``benchmarks/results/profile-<mode>[-<limits>-limits].txt`` (feed them to flamegraph.pl or
speedscope) with the summary in ``profile-<mode>[...].md``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (
    CHUNKS,
    HERE,
    LOAD_CORE,
    MODEL,
    SERVER_CORE,
    TOKEN,
    Proc,
    bench_config,
    body,
    check,
    free_port,
    run_wrk,
)

FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# py-spy names files relative to their sys.path entry ("aiohttp/web_app.py", "uuid.py").
LAYERS = (  # the first match wins, on the file of the leaf frame
    ("aiproxy core", ("aiproxy/",)),
    ("aiproxy providers", ("aiproxy_providers/",)),
    ("logging (structlog)", ("structlog/", "logging/")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("redis client", ("redis/",)),
    ("aiohttp (+ multidict, yarl)", ("aiohttp/", "multidict/", "yarl/", "propcache/",
                                     "aiosignal/", "frozenlist/", "aiohappyeyeballs/")),
    ("asyncio + socket syscalls", ("asyncio/", "selectors.py", "socket.py")),
    ("attrs", ("attr/", "attrs/", "<attrs generated")),
    ("uuid", ("uuid.py",)),
)


def layer(file: str) -> str:
    for name, prefixes in LAYERS:
        if file.startswith(prefixes):
            return name
    return "other (stdlib, runpy, ...)"


def parse(path: Path) -> list[tuple[list[tuple[str, str, str]], int]]:
    stacks = []
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = FRAME_RE.match(part)
            if m:
                frames.append((m["func"], m["file"], m["line"] or ""))
            else:
                frames.append((part, "", ""))
        stacks.append((frames, int(count)))
    return stacks


def summarise(stacks: list[tuple[list[tuple[str, str, str]], int]], top: int) -> str:
    total = sum(c for _, c in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    own_line: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        func, file, line = frames[-1]
        own[f"{func} ({file})"] += count
        if file.startswith("aiproxy"):
            own_line[f"{func} ({file}:{line})"] += count
        layers[layer(file)] += count
        seen = set()
        for func, file, _ in frames:
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                incl[key] += count

    def table(title: str, counter: collections.Counter[str], n: int,
              only_aiproxy: bool = False) -> list[str]:
        out = [f"### {title}", "", "| % | samples | function |", "| ---: | ---: | --- |"]
        shown = 0
        for key, count in counter.most_common():
            if only_aiproxy and "(aiproxy" not in key:
                continue
            out.append(f"| {100 * count / total:.1f} | {count} | `{key}` |")
            shown += 1
            if shown >= n:
                break
        return [*out, ""]

    lines = [f"{total} busy samples.", ""]
    lines += ["### By layer (own time of the leaf frame)", "", "| % | layer |", "| ---: | --- |"]
    for name, count in layers.most_common():
        lines.append(f"| {100 * count / total:.1f} | {name} |")
    lines.append("")
    lines += table("Top functions by own time", own, top)
    lines += table("Top aiproxy lines by own time", own_line, min(top, 15))
    lines += table("aiproxy functions by inclusive time", incl, top, only_aiproxy=True)
    lines += table("All functions by inclusive time", incl, top)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("non-stream", "stream", "both"), default="both")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--limits", choices=("none", "memory", "redis"), default="none")
    parser.add_argument("--target", choices=("aiproxy", "floor", "floor-sse"), default="aiproxy",
                        help="profile a floor reference instead, for comparison")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--proxy-src", metavar="DIR")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_core, load_core = (SERVER_CORE, LOAD_CORE) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    workdir = Path(tempfile.mkdtemp(prefix="aiproxy-profile-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"AUTH_TOKEN": TOKEN, "LOG_LEVEL": args.log_level, "LOG_FORMAT": "json"}
    if args.proxy_src:
        env["PYTHONPATH"] = str(Path(args.proxy_src).resolve())
    try:
        port = free_port()
        mock = Proc("mock", [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port),
                             "--chunks", str(CHUNKS)], core=load_core, port=port,
                    workdir=workdir)
        mock.wait_ready()
        if args.limits == "redis":
            rport = free_port()
            redis = Proc("redis", [shutil.which("redis-server") or "redis-server", "--port",
                                   str(rport), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(workdir)],
                         core=load_core, port=rport, workdir=workdir)
            redis.wait_ready()
            env["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        cfg = workdir / "bench.yaml"
        cfg.write_text(bench_config(mock.port, limits=args.limits != "none"))
        pport = free_port()
        if args.target == "aiproxy":
            argv = [sys.executable, "-m", "aiproxy", "--config", str(cfg),
                    "--addr", f"127.0.0.1:{pport}"]
        else:
            script = "floor_passthrough.py" if args.target == "floor" else "floor_sse_relay.py"
            argv = [sys.executable, str(HERE / script), "--port", str(pport), "--upstream",
                    f"http://127.0.0.1:{mock.port}/v1"]
        proxy = Proc(args.target, argv, core=server_core, port=pport, env=env, workdir=workdir)
        proxy.wait_ready()
        url = f"http://127.0.0.1:{pport}/v1/chat/completions"
        modes = ("non-stream", "stream") if args.mode == "both" else (args.mode,)
        for mode in modes:
            stream = mode == "stream"
            problem = check(url, MODEL, stream)
            if problem:
                raise RuntimeError(f"aiproxy fails a {mode} request: {problem}\n"
                                   f"{proxy.stderr_tail()}")
            req = body(MODEL, stream)
            run_wrk(url, req, args.conns, 1, core=load_core)  # warm-up
            name = mode if args.target == "aiproxy" else f"{args.target}-{mode}"
            if args.limits != "none":
                name += f"-{args.limits}-limits"
            raw = out / f"profile-{name}.txt"
            spy = subprocess.Popen([pyspy, "record", "--pid", str(proxy.pid), "--rate",
                                    str(args.rate), "--duration", str(round(args.duration)),
                                    "--format", "raw", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(0.5)  # py-spy attaches
                res = run_wrk(url, req, args.conns, args.duration, core=load_core)
                _, err = spy.communicate(timeout=args.duration + 30)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            if not raw.exists():
                raise RuntimeError(f"py-spy wrote nothing: {err}")
            text = (f"## {args.target} profile: {mode}, {args.conns} connections, limits "
                    f"{args.limits}, LOG_LEVEL={args.log_level}\n\n"
                    f"Under profiling: {res['rps']:.0f} req/s, p50 {res['p50']:.2f} ms "
                    f"(py-spy at {args.rate} Hz slows the process a little).\n\n"
                    + summarise(parse(raw), args.top))
            (out / f"profile-{name}.md").write_text(text + "\n")
            print(text)
            print(f"\nraw stacks: {raw}; summary: {out / f'profile-{name}.md'}\n")
    finally:
        Proc.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
