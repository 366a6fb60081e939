"""Reward-server throughput: 1-item /score requests at concurrency 1, 8, 32 and 64 against rmkit's server
(cross-request micro-batching) and against a baseline server that runs one forward per request; same model, same
machine, same run, one server at a time, each in its own process. Reports throughput, p50/p99 latency and errors.

    .venv/bin/python benchmarks/bench_server.py            # → benchmarks/results/bench_server.json
    .venv/bin/python benchmarks/bench_server.py --quick    # smoke run → benchmarks/results/bench_server_quick.json

The baseline is the plain design of STYLE §7 (a `def` route, a lock, `Scorer.score` on the request's own items):
what a server without a batching queue does. Load is closed-loop: `c` clients each send their next request as
soon as the last one is answered, for `--seconds` per level, after a short warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import REPO, write_result

from rmkit.protocols import ScoreRequest  # at module level: FastAPI resolves the route's annotation from here

LEVELS = (1, 8, 32, 64)


def baseline_app(model_dir: str):
    """One forward per request, one request's forward at a time."""
    import threading

    from fastapi import FastAPI

    from rmkit.scoring import Scorer

    scorer = Scorer.load(model_dir)
    app, lock = FastAPI(), threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/score")
    def score(body: ScoreRequest) -> dict:
        prompts, responses = zip(*(item.split() for item in body.items), strict=True)
        with lock:
            rewards = scorer.score(list(prompts), list(responses))
        return {"rewards": rewards}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model_dir: str, port: int, threads: int | None) -> subprocess.Popen:
    if kind == "rmkit":
        overrides = [f"threads={threads}"] if threads else []  # before --port: argparse ends positionals there
        cmd = [sys.executable, "-m", "rmkit", "serve", model_dir, *overrides, "--port", str(port)]
    else:
        cmd = [sys.executable, __file__, "--serve-baseline", model_dir, "--port", str(port)]
        cmd += ["--threads", str(threads)] if threads else []
    env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks")}
    return launch(cmd, port, f"{kind} server", env)


def launch(cmd: list[str], port: int, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server process and wait (up to 180 s) until GET /health on `port` answers 200."""
    log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the server's log writes
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{name} exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} did not become healthy in 180 s")


def load_items(n: int) -> list[dict]:
    """n (prompt, response) items from the vendored data, both sides of each pair, shuffled (seed 0)."""
    import random

    from rmkit.config import DEFAULT_DATA
    from rmkit.data import read_pairs

    pairs = [p for path in DEFAULT_DATA for p in read_pairs(REPO / path)]
    random.Random(0).shuffle(pairs)
    return [{"prompt": p.prompt, "response": side} for p in pairs for side in (p.chosen, p.rejected)][:n]


async def closed_loop(url: str, items: list[dict], concurrency: int, seconds: float, warmup: float) -> dict:
    """`concurrency` clients sending 1-item /score requests back to back; stats over the measured window."""
    latencies: list[float] = []
    errors, counter = 0, iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                body = {"items": [items[next(counter) % len(items)]]}
                sent = time.perf_counter()
                try:
                    ok = (await client.post("/score", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
                    errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    n = len(latencies)
    pick = (lambda q: latencies[min(n - 1, int(q * n))] * 1000) if n else (lambda q: float("nan"))
    return {"concurrency": concurrency, "requests": n, "errors": errors, "req_per_s": n / seconds,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="rmkit model directory (default: minilm with a fresh head, built in a temp dir)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--max-length", type=int, default=512, help="max_length of the built model (default 512)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level")
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--threads", type=int, help="torch threads of both servers (default: torch's, one per core)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 s per level, max_length 128")
    p.add_argument("--serve-baseline", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_baseline:
        import torch
        import uvicorn

        if args.threads:
            torch.set_num_threads(args.threads)
        uvicorn.run(baseline_app(args.serve_baseline), host="127.0.0.1", port=args.port, log_level="warning")
        return 0
    if args.quick:
        args.seconds, args.warmup, args.max_length = 3.0, 1.0, 128

    from bench_scoring import build_model_dir

    items = load_items(2048)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(args.model_dir or build_model_dir(args.backbone, args.max_length, Path(tmp)))
        for kind in ("rmkit", "baseline"):
            port = free_port()
            proc = start(kind, model_dir, port, args.threads)
            try:
                results[kind] = [asyncio.run(closed_loop(f"http://127.0.0.1:{port}", items, c, args.seconds,
                                                         args.warmup)) for c in args.levels]
            finally:
                proc.terminate()
                proc.wait(60)
            for row in results[kind]:
                print(f"{kind:<9} c={row['concurrency']:<3} {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms"
                      f"  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}")
    ratios = {str(a["concurrency"]): a["req_per_s"] / b["req_per_s"] if b["req_per_s"] else None
              for a, b in zip(results["rmkit"], results["baseline"], strict=True)}
    for c, r in ratios.items():
        shown = "n/a (no baseline request finished)" if r is None else f"{r:.2f}x"
        print(f"rmkit / baseline throughput at c={c}: {shown}" + ("   (goal ≥ 4x)" if c == "32" else ""))
    figures = {"model": str(args.model_dir or f"{args.backbone} (fresh head)"), "max_length": args.max_length,
               "threads": args.threads or "torch default",
               "seconds_per_level": args.seconds, "warmup_s": args.warmup, "request": "1-item POST /score",
               "results": results, "throughput_ratio": ratios, "goal": {"throughput_ratio_at_32": 4.0, "errors": 0}}
    path = write_result("bench_server_quick" if args.quick else "bench_server", figures)
    print(f"wrote {path}")
    print(json.dumps({"throughput_ratio": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
