"""Soak test of `rmkit serve`: a few minutes of mixed traffic on loopback (valid requests on every scoring route,
malformed JSON, schema violations, over-limit bodies, unknown routes, and clients that hang up mid-request) while the
server process's resident memory and open file descriptors are sampled once a second. Reports their growth and every
unexpected answer: a 5xx, a status other than the one the request should get, or a connection error that the client
did not cause itself.

    .venv/bin/python benchmarks/soak_server.py                 # 30 s warm-up + 240 s → results/soak_server.json
    .venv/bin/python benchmarks/soak_server.py --quick         # 5 s + 30 s smoke run → results/soak_server_quick.json

The server runs in its own process (`python -m rmkit serve`, a tiny random Llama by default, so that the server's own
HTTP, queue and bookkeeping code dominates, not the forward). Growth is measured after the warm-up (allocator pools
and caches fill there): memory over the first and the second half of the measured window (a leak grows in both),
file descriptors at the start, the end, and after the load stops and the server has had a few seconds to close
connections. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_server import free_port, launch, load_items
from common import write_result

MAX_ITEMS, MAX_CHARS, MAX_BODY = 16, 4000, 65536  # the server's limits in this run (small: cheap to exceed)
# kind → (weight, statuses it should get); None: the client hangs up on purpose, so any outcome is its own doing
KINDS: dict[str, tuple[int, frozenset[int] | None]] = {
    "score": (30, frozenset({200})), "get_reward": (10, frozenset({200})), "pooling": (8, frozenset({200})),
    "classify_chat": (5, frozenset({200})), "verify": (5, frozenset({200})), "bad_json": (5, frozenset({400})),
    "schema_violation": (8, frozenset({422})), "too_many_items": (3, frozenset({422})),
    "too_long_text": (2, frozenset({422})), "too_large_body": (2, frozenset({413})),
    "unknown_route": (2, frozenset({404})), "hangup_in_body": (7, None), "hangup_before_answer": (7, None),
    "client_timeout": (6, None),
}


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)  # (kind, status or error name) → count
    unexpected: list[dict] = field(default_factory=list)

    def record(self, kind: str, outcome: int | str) -> None:
        self.statuses[(kind, outcome)] += 1
        expected = KINDS[kind][1]
        if expected is not None and outcome not in expected and len(self.unexpected) < 1000:
            self.unexpected.append({"kind": kind, "outcome": outcome, "t": time.time()})
        elif expected is None and isinstance(outcome, int) and outcome >= 500:
            self.unexpected.append({"kind": kind, "outcome": outcome, "t": time.time()})


def body_for(kind: str, rng: random.Random, items: list[dict]) -> tuple[str, bytes]:
    """(path, JSON body bytes) of one request of `kind`."""
    pick = [items[rng.randrange(len(items))] for _ in range(rng.randint(1, 4))]
    bodies = {
        "score": ("/score", {"items": pick}),
        "get_reward": ("/get_reward", {"query": [i["prompt"] + i["response"] for i in pick],
                                       "prompts": [i["prompt"] for i in pick]}),
        "pooling": ("/pooling", {"input": [i["prompt"] + i["response"] for i in pick]}),
        "classify_chat": ("/classify", {"messages": [{"role": "user", "content": pick[0]["prompt"]},
                                                     {"role": "assistant", "content": pick[0]["response"]}]}),
        "verify": ("/verify", {"responses_create_params": {"input": pick[0]["prompt"]}, "task_id": rng.random(),
                               "response": {"output": [{"type": "message", "role": "assistant",
                                                        "content": [{"type": "output_text",
                                                                     "text": pick[0]["response"]}]}]}}),
        "schema_violation": rng.choice([("/score", {"items": [{"prompt": "p"}]}), ("/score", {"itemz": []}),
                                        ("/get_reward", {"query": "not a list"}), ("/pooling", {"input": [1.5]}),
                                        ("/verify", {"response": {}})]),
        "too_many_items": ("/score", {"items": [pick[0]] * (MAX_ITEMS + 1)}),
        "too_long_text": ("/score", {"items": [{"prompt": "x" * (MAX_CHARS + 1), "response": "y"}]}),
        "too_large_body": ("/score", {"items": [{"prompt": "z" * MAX_BODY, "response": "y"}]}),
        "unknown_route": ("/no/such/route", {}),
    }
    if kind == "bad_json":
        return "/score", rng.choice([b"{", b"\x00", b'{"items": [}', b'{"items": "\xff"}'])
    path, body = bodies.get(kind, bodies["score"])
    return path, json.dumps(body).encode()


async def hang_up(port: int, path: str, body: bytes, in_body: bool) -> str:
    """Send a POST by hand and close the socket: half-way through the body, or right after it, without reading."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + (body[: len(body) // 2] if in_body else body))
    await writer.drain()
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return "hung_up"


async def one_request(client: httpx.AsyncClient, port: int, kind: str, rng: random.Random, items: list[dict]) -> int | str:
    path, body = body_for(kind, rng, items)
    if kind in ("hangup_in_body", "hangup_before_answer"):
        return await hang_up(port, path, body, in_body=kind == "hangup_in_body")
    timeout = rng.uniform(0.001, 0.02) if kind == "client_timeout" else 60
    try:
        response = await client.post(path, content=body, headers={"content-type": "application/json"},
                                     timeout=timeout)
    except httpx.TimeoutException:
        return "client_timeout"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return response.status_code


async def load(port: int, items: list[dict], seconds: float, concurrency: int, seed: int, tally: Tally) -> int:
    """`concurrency` workers sending requests of random kinds back to back for `seconds`; requests sent."""
    names, weights = list(KINDS), [w for w, _ in KINDS.values()]
    stop_at, sent = time.monotonic() + seconds, [0]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
        async def worker(w: int) -> None:
            rng = random.Random(seed * 1000 + w)
            while time.monotonic() < stop_at:
                kind = rng.choices(names, weights)[0]
                tally.record(kind, await one_request(client, port, kind, rng, items))
                sent[0] += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return sent[0]


def sample(pid: int) -> dict:
    """RSS (MiB) and open file descriptors of process `pid`, now."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return {"t": time.time(), "rss_mib": rss_kib / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def sampler(pid: int, out: list[dict], every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        out.append(sample(pid))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


async def soak(port: int, pid: int, items: list[dict], args: argparse.Namespace, tally: Tally) -> dict:
    """Warm-up load, then the measured load with sampling, then an idle settle; samples and counts."""
    idle_before = sample(pid)
    await load(port, items, args.warmup, args.concurrency, args.seed + 1, Tally())  # unmeasured, untallied
    samples: list[dict] = []
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(pid, samples, 1.0, stop))
    sent = await load(port, items, args.seconds, args.concurrency, args.seed, tally)
    stop.set()
    await sampling
    await asyncio.sleep(args.settle)  # the server closes idle keep-alive and half-closed connections
    return {"idle_before": idle_before, "samples": samples, "idle_after": sample(pid), "requests": sent}


def growth(run: dict, seconds: float) -> dict:
    """Memory and descriptor growth over the measured window: halves, slope, and idle before vs after."""
    s = run["samples"]
    third = max(1, len(s) // 3)
    rss = [x["rss_mib"] for x in s]
    first, mid, last = (sum(v) / len(v) for v in (rss[:third], rss[third : 2 * third], rss[-third:]))
    t0 = s[0]["t"]
    ts = [x["t"] - t0 for x in s]
    mt, mr = sum(ts) / len(ts), sum(rss) / len(rss)
    slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss, strict=True)) / max(1e-9, sum((t - mt) ** 2 for t in ts))
    return {
        "rss_mib_first_third_mean": first, "rss_mib_middle_third_mean": mid, "rss_mib_last_third_mean": last,
        "rss_mib_growth_first_to_last_third": last - first, "rss_mib_per_min_slope": slope * 60,
        "rss_mib_max": max(rss), "rss_mib_idle_before": run["idle_before"]["rss_mib"],
        "rss_mib_idle_after": run["idle_after"]["rss_mib"],
        "fds_idle_before": run["idle_before"]["fds"], "fds_idle_after": run["idle_after"]["fds"],
        "fds_max_under_load": max(x["fds"] for x in s), "fds_first": s[0]["fds"], "fds_last": s[-1]["fds"],
    }


def start_server(model_dir: str, port: int, threads: int) -> subprocess.Popen:
    overrides = [f"threads={threads}", f"max_items={MAX_ITEMS}", f"max_text_chars={MAX_CHARS}",
                 f"max_body_bytes={MAX_BODY}", "queue_size=4096"]
    cmd = [sys.executable, "-m", "rmkit", "serve", model_dir, *overrides, "--port", str(port)]
    return launch(cmd, port, "server")


def server_state(port: int) -> dict:
    """After the soak: does the server still answer, and is its queue empty?"""
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
    score = httpx.post(f"http://127.0.0.1:{port}/score", json={"items": [{"prompt": "p", "response": "r"}]},
                       timeout=30)
    return {"health_status": health.status_code, "queue_depth": health.json().get("queue_depth"),
            "score_status_after": score.status_code}


def verdict(g: dict, unexpected: int, state: dict, max_rss_growth_mib: float) -> dict:
    checks = {
        "unexpected_answers_zero": unexpected == 0,
        "rss_growth_first_to_last_third_below_limit": g["rss_mib_growth_first_to_last_third"] < max_rss_growth_mib,
        "fds_back_to_idle_level": g["fds_idle_after"] <= g["fds_idle_before"],
        "server_still_serves": state["score_status_after"] == 200 and state["queue_depth"] == 0,
    }
    return {**checks, "passed": all(checks.values()), "rss_growth_limit_mib": max_rss_growth_mib}


def print_summary(figures: dict) -> None:
    g, v = figures["growth"], figures["verdict"]
    print(f"{figures['requests']} requests in {figures['seconds']:.0f} s ({figures['requests'] / figures['seconds']:.0f}"
          f" req/s) at concurrency {figures['concurrency']}; unexpected answers: {len(figures['unexpected'])}")
    print(f"RSS MiB: idle {g['rss_mib_idle_before']:.1f} → thirds {g['rss_mib_first_third_mean']:.1f} / "
          f"{g['rss_mib_middle_third_mean']:.1f} / {g['rss_mib_last_third_mean']:.1f} → idle after "
          f"{g['rss_mib_idle_after']:.1f}; slope {g['rss_mib_per_min_slope']:+.2f} MiB/min")
    print(f"fds: idle {g['fds_idle_before']} → under load {g['fds_first']}..{g['fds_max_under_load']} (max) → idle "
          f"after {g['fds_idle_after']}")
    print("verdict: " + ", ".join(f"{k}={val}" for k, val in v.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="rmkit model directory (default: a tiny random Llama built in a temp dir)")
    p.add_argument("--backbone", default="tiny-llama", help="backbone of the built model (default tiny-llama)")
    p.add_argument("--seconds", type=float, default=240.0, help="measured seconds (default 240)")
    p.add_argument("--warmup", type=float, default=30.0, help="unmeasured seconds of the same load first")
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds after the load before the last sample")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--max-rss-growth-mib", type=float, default=8.0, help="pass limit, first to last third (MiB)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s warm-up, 30 s measured")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.seconds = 5.0, 30.0
    from bench_scoring import build_model_dir

    items = [i for i in load_items(512) if len(i["prompt"]) + len(i["response"]) < MAX_CHARS // 2]
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(args.model_dir or build_model_dir(args.backbone, 256, Path(tmp)))
        port = free_port()
        proc = start_server(model_dir, port, args.threads)
        try:
            run = asyncio.run(soak(port, proc.pid, items, args, tally))
            state = server_state(port)
        finally:
            proc.terminate()
            proc.wait(60)
    g = growth(run, args.seconds)
    figures = {
        "model": args.model_dir or f"{args.backbone} (random, built)", "seconds": args.seconds, "warmup_s": args.warmup,
        "concurrency": args.concurrency, "threads": args.threads, "seed": args.seed,
        "limits": {"max_items": MAX_ITEMS, "max_text_chars": MAX_CHARS, "max_body_bytes": MAX_BODY},
        "requests": run["requests"], "mix": {k: w for k, (w, _) in KINDS.items()},
        "outcomes": {f"{k} {o}": n for (k, o), n in sorted(tally.statuses.items(), key=str)},
        "unexpected": tally.unexpected, "growth": g, "server_after": state,
        "verdict": verdict(g, len(tally.unexpected), state, args.max_rss_growth_mib),
        "samples": [{**x, "t": round(x["t"] - run["samples"][0]["t"], 1)} for x in run["samples"]],
        "exit_code": proc.returncode, "note": "loopback, load generator on the same machine as the server",
    }
    print_summary(figures)
    path = write_result("soak_server_quick" if args.quick else "soak_server", figures)
    print(f"wrote {path}")
    return 0 if figures["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
