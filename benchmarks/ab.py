"""A/B: two aiproxy source trees under the same load, interleaved, to measure one change.

    .venv/bin/python benchmarks/ab.py --b /tmp/aiproxy-patched [--a /work/main]
        [--rounds 5] [--duration 3] [--conns 32] [--mode non-stream|stream|both]
        [--limits none|memory|redis] [--log-level INFO] [--colocated]
        [--icount [--icount-requests 800] [--icount-streams 50] [--icount-phases 2]]

Each tree is run as ``python -m aiproxy`` with ``PYTHONPATH=<tree>`` (its ``aiproxy`` and
``aiproxy_providers`` packages win over the installed ones), pinned like ``run.py``. Rounds
alternate A, B, B, A, ... so drift on a shared machine hits both; medians are reported with
the B/A ratio. Stream mode also reports the per-chunk one-way delay (stamped chunks),
as ``run.py`` measures it: in a closed loop and with the stream starts staggered.

``--colocated``: each round loads A and B at once (two wrk runs, both servers on the server
core), so that the CPU per request of the two comes from the same seconds; the machine's
drift, tens of percent within seconds on a shared VM, then hits both alike. The throughputs
are of two servers sharing a core: compare the CPU figures.

``--icount``: instead of timing, count instructions per request (and per stream) of each tree
under callgrind, one after the other on the server core (see ``icount.py``): a comparison
other load on the machine cannot move. Each count is the mean of ``--icount-phases`` phases;
their spread is printed beside it. Runs of one tree agree within ~0.5% at the defaults
(~1 min a tree and mode); a change of 1% is then visible, which timings cannot show here.

Each tree's aiproxy has its usage ledger on, in an SQLite file of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import icount
from run import (
    CHUNKS,
    HERE,
    LOAD_CORE,
    MODEL,
    REPO,
    SERVER_CORE,
    TOKEN,
    Proc,
    _chunk_delays,
    _headers,
    bench_config,
    body,
    check,
    free_port,
    run_wrk,
    run_wrk_at_once,
)


def tree_env(workdir: Path, name: str, tree: str, extra: list[str]) -> dict[str, str]:
    """Environment of tree ``name``'s aiproxy: its source tree first on the path, a usage
    ledger of its own (A and B never share a database file), then --a-env / --b-env."""
    return {"PYTHONPATH": str(Path(tree).resolve()),
            "DATABASE_URL": f"sqlite:///{workdir / f'usage-{name}.db'}",
            **dict(kv.split("=", 1) for kv in extra)}


def count_trees(args: argparse.Namespace, workdir: Path, cfg: Path, env: dict[str, str],
                modes: tuple[str, ...], server_core: str | None) -> int:
    """--icount: instructions per request of A, then of B, and B/A for each mode."""
    counts: dict[str, dict[str, dict]] = {}
    for name, tree, extra in (("A", args.a, args.a_env), ("B", args.b, args.b_env)):
        print(f"{name} = {tree} {' '.join(extra)}")
        port = free_port()
        out = workdir / f"icount-{name}.callgrind"
        proc = Proc(f"aiproxy-{name}", [*icount.valgrind_argv(out), sys.executable, "-m",
                                        "aiproxy", "--config", str(cfg), "--addr",
                                        f"127.0.0.1:{port}"],
                    core=server_core, port=port, workdir=workdir,
                    env={**env, **tree_env(workdir, name, tree, extra),
                         **icount.valgrind_env(), **icount.KEEP_CONNECTIONS})
        try:
            proc.wait_ready(timeout=300)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            grind = icount.Callgrind(proc.pid, out)
            for mode in modes:
                stream = mode == "stream"
                problem = check(url, MODEL, stream)
                if problem:
                    raise RuntimeError(f"{name} fails a {mode} request: {problem}\n"
                                       f"{proc.stderr_tail()}")
                res = icount.count(grind, url, body(MODEL, stream), _headers(),
                                   n=args.icount_streams if stream else args.icount_requests,
                                   warmup=max(1, args.icount_warmup // (10 if stream else 1)),
                                   conns=args.conns, phases=max(1, args.icount_phases),
                                   stream=stream)
                counts.setdefault(mode, {})[name] = res
                phases = ", ".join(f"{p:,.0f}" for p in res["phases"])
                print(f"{mode}: {name} {res['per_request']:,.0f} instructions/"
                      f"{'stream' if stream else 'request'} (phases {phases}; spread "
                      f"{100 * res['spread']:.2f}%)")
        finally:
            proc.stop()
    for mode, by in counts.items():
        print(f"{mode}: instructions per request B/A = "
              f"{by['B']['per_request'] / by['A']['per_request']:.4f}")
    return 0


def colocated_round(procs: dict[str, Proc], urls: dict[str, str], req: str,
                    args: argparse.Namespace, load_core: str | None,
                    rps: dict[str, list[float]], p99: dict[str, list[float]],
                    cpu: dict[str, list[float]]) -> None:
    """--colocated: one round with A and B under load at the same time."""
    res = run_wrk_at_once({name: (proc, urls[name]) for name, proc in procs.items()}, req,
                          args.conns, args.duration, core=load_core)
    for name, got in res.items():
        cpu[name].append(got["cpu_us"])
        rps[name].append(got["rps"])
        p99[name].append(got["p99"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default=str(REPO), help="baseline source tree (default: repo)")
    parser.add_argument("--b", default=str(REPO), help="changed source tree (default: repo)")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of A (repeatable), e.g. LOG_LEVEL=WARNING")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--mode", choices=("non-stream", "stream", "both"), default="both")
    parser.add_argument("--limits", choices=("none", "memory", "redis"), default="none")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--chunk-streams", type=int, default=100,
                        help="stamped streams per tree for the per-chunk delay (stream mode)")
    parser.add_argument("--colocated", action="store_true",
                        help="load A and B at once (two wrk runs, both servers on the server "
                        "core) and compare their CPU per request: the machine's drift within "
                        "seconds hits both alike (non-stream and stream)")
    parser.add_argument("--icount", action="store_true",
                        help="compare instructions per request under callgrind, not timings")
    parser.add_argument("--icount-requests", type=int, default=800,
                        help="non-stream requests per counted phase")
    parser.add_argument("--icount-streams", type=int, default=50,
                        help="streams per counted phase")
    parser.add_argument("--icount-phases", type=int, default=2)
    parser.add_argument("--icount-warmup", type=int, default=200)
    args = parser.parse_args()
    if args.icount and (why := icount.available()):
        print(why, file=sys.stderr)
        return 2
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_core, load_core = (SERVER_CORE, LOAD_CORE) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    workdir = Path(tempfile.mkdtemp(prefix="aiproxy-ab-"))
    try:
        port = free_port()
        mock = Proc("mock", [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port),
                             "--chunks", str(CHUNKS)], core=load_core, port=port,
                    workdir=workdir)
        mock.wait_ready()
        env = {"AUTH_TOKEN": TOKEN, "LOG_LEVEL": args.log_level, "LOG_FORMAT": "json"}
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
        modes = ("non-stream", "stream") if args.mode == "both" else (args.mode,)
        if args.icount:
            return count_trees(args, workdir, cfg, env, modes, server_core)
        procs = {}
        for name, tree, extra in (("A", args.a, args.a_env), ("B", args.b, args.b_env)):
            pport = free_port()
            procs[name] = Proc(f"aiproxy-{name}", [sys.executable, "-m", "aiproxy", "--config",
                                                   str(cfg), "--addr", f"127.0.0.1:{pport}"],
                               core=server_core, port=pport, workdir=workdir,
                               env={**env, **tree_env(workdir, name, tree, extra)})
            procs[name].wait_ready()
        urls = {n: f"http://127.0.0.1:{p.port}/v1/chat/completions" for n, p in procs.items()}
        print(f"A = {args.a} {' '.join(args.a_env)}")
        print(f"B = {args.b} {' '.join(args.b_env)}")
        print(f"{args.conns} connections, {args.rounds} rounds of "
              f"{args.duration:g} s, limits {args.limits}, LOG_LEVEL={args.log_level}"
              f"{', A and B loaded at once' if args.colocated else ''}")
        for mode in modes:
            stream = mode == "stream"
            for name, url in urls.items():
                problem = check(url, MODEL, stream)
                if problem:
                    raise RuntimeError(f"{name} fails a {mode} request: {problem}\n"
                                       f"{procs[name].stderr_tail()}")
                run_wrk(url, body(MODEL, stream), args.conns, 1, core=load_core)
            rps: dict[str, list[float]] = {"A": [], "B": []}
            p99: dict[str, list[float]] = {"A": [], "B": []}
            cpu: dict[str, list[float]] = {"A": [], "B": []}
            for i in range(args.rounds):
                if args.colocated:
                    colocated_round(procs, urls, body(MODEL, stream), args, load_core,
                                    rps, p99, cpu)
                    continue
                for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    before = procs[name].cpu()
                    res = run_wrk(urls[name], body(MODEL, stream), args.conns, args.duration,
                                  core=load_core)
                    cpu[name].append((procs[name].cpu() - before) / res["requests"] * 1e6)
                    rps[name].append(res["rps"])
                    p99[name].append(res["p99"])
            a, b = statistics.median(rps["A"]), statistics.median(rps["B"])
            ca, cb = statistics.median(cpu["A"]), statistics.median(cpu["B"])
            for name, value, c in (("A", a, ca), ("B", b, cb)):
                print(f"{'' if name == 'B' else chr(10)}{mode}: {name} {value:.0f} req/s (runs "
                      f"{[round(x) for x in rps[name]]}), p99 "
                      f"{statistics.median(p99[name]):.2f} ms, CPU {c:.0f} us/req")
            print(f"{mode}: B/A throughput = {b / a:.3f}; CPU per request B/A = {cb / ca:.3f}")
            if stream and args.chunk_streams:
                for loop_kind, stagger in (("closed loop", None), ("staggered", 0)):
                    for name, url in urls.items():
                        res = asyncio.run(_chunk_delays(url, MODEL, args.chunk_streams, 16,
                                                        10.0, stagger=stagger))
                        print(f"{mode}: {name} per-chunk one-way delay ({loop_kind}) p50 "
                              f"{res['p50']:.3f} p99 {res['p99']:.3f} ms, mid-stream p99 "
                              f"{res['mid_p99']:.3f} ms, first/last chunks p50 "
                              f"{res['ends_p50']:.3f} ms and "
                              f"{100 * res['ends_tail_share']:.0f}% of the p99 tail "
                              f"({res['chunks']} chunks)")
    finally:
        Proc.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
