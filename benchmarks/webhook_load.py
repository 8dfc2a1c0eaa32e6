"""Load benchmark of the Messenger webhook: signed deliveries from this process against `vssbot
serve` in other processes, a stand-in Graph API that fails a share of sends, and the checks that
nothing is lost or doubled.

    .venv/bin/python benchmarks/webhook_load.py                    # SQLite x1, PostgreSQL x2
    .venv/bin/python benchmarks/webhook_load.py --senders 200 --messages 10 --pg-workers 4
    .venv/bin/python benchmarks/webhook_load.py --answer-workers 1   # serve acknowledges, a worker answers

For each scenario (one server process on SQLite; N processes on PostgreSQL) it reports accepted
requests per second, acknowledgement latency p50/p99 (the webhook's 200), and end-to-end latency
(delivery sent -> the reply reaching the stand-in Graph API). In the same run a bare FastAPI
endpoint on the same uvicorn settings is measured with the same load, and the ratio printed.
Each deployment takes `--rounds` bursts (every reply delivered before the next burst); the
figures are the medians over rounds, as single bursts on a shared machine vary by a third.
Then it checks: every delivered message stored once (5% of deliveries are posted twice, as a
platform's retry), every message answered once (one outbound message and one successful send
per inbound message), also while the stand-in fails 20% of sends with a retryable error.
After each burst (the saturation: every sender posts again as soon as it is acknowledged, so 200
requests are always in flight and the latency is mostly that queue) the same senders post at a
steady random pace (`--pace`, 5 a second each: 1,000 deliveries/s from 200 senders), the
acknowledgement latency counted from when each delivery was due; the bare endpoint gets the same.
Exit status 1 if a check fails. Goals (README): >= 0.5 of the bare throughput, ack p99 < 100 ms
at 200 concurrent senders, nothing lost or doubled.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
VSSBOT = ROOT / ".venv" / "bin" / "vssbot"
PYTHON = sys.executable
APP_SECRET = "bench-app-secret"
PAGE_ID = "102938475610293"
WARM = 20  # deliveries before the measured run (each server process loads its knowledge base)
PG_URL = os.environ.get("VSSBOT_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- the processes this benchmark starts -------------------------------------------------------

def stand_in_app(fail_rate: float) -> FastAPI:
    """The Graph API's /me/messages: fails `fail_rate` of sends (retryable), records the rest."""
    app = FastAPI()
    received: dict[str, list[float]] = defaultdict(list)
    rng = random.Random(7)

    @app.post("/me/messages")
    async def send(request: Request) -> JSONResponse:
        body = await request.json()
        if rng.random() < fail_rate:  # before recording: the send did not happen
            return JSONResponse({"error": {"message": "temporary", "code": 2, "is_transient": True}}, status_code=500)
        recipient = body["recipient"]["id"]
        received[recipient].append(time.time())
        return JSONResponse({"recipient_id": recipient, "message_id": f"m_{uuid.uuid4().hex}"})

    @app.get("/stats")
    async def stats() -> dict[str, list[float]]:
        return received

    return app


def bare_app() -> FastAPI:
    """The same route answering at once: the ceiling this server setup allows."""
    app = FastAPI()

    @app.post("/webhooks/messenger")
    async def delivery(request: Request) -> dict[str, str]:
        await request.body()
        return {"status": "EVENT_RECEIVED"}

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_role(role: str, port: int, fail_rate: float) -> None:
    import uvicorn

    app = stand_in_app(fail_rate) if role == "stand-in" else bare_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start_role(role: str, fail_rate: float = 0.0) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, __file__, "--role", role, "--port", str(port), "--fail-rate", str(fail_rate)])
    url = f"http://127.0.0.1:{port}"
    wait_up(url + ("/stats" if role == "stand-in" else "/healthz"), proc)
    return proc, url


def start_vssbot(database_url: str, graph_url: str, args: argparse.Namespace, workers: int
                 ) -> tuple[list[subprocess.Popen[bytes]], str]:
    """`vssbot serve` (`workers` processes), which also answer (the default deployment), or with
    --answer-workers K, K `vssbot worker` processes that answer what the serving processes
    acknowledge (VSSBOT_SERVE_ANSWERS=false), at a lower CPU priority."""
    port = free_port()
    env = os.environ | {
        "VSSBOT_DATABASE_URL": database_url,
        "VSSBOT_MESSENGER_VERIFY_TOKEN": "bench", "VSSBOT_MESSENGER_APP_SECRET": APP_SECRET,
        "VSSBOT_MESSENGER_PAGE_TOKEN": "bench-page-token", "VSSBOT_MESSENGER_API_BASE": graph_url,
        "VSSBOT_LOG_LEVEL": "WARNING", "VSSBOT_RATE_PER_MINUTE": "100000",
        "VSSBOT_SERVE_ANSWERS": "false" if args.answer_workers else "true",
    }
    procs = [subprocess.Popen([str(VSSBOT), "serve", "--port", str(port), "--workers", str(workers)], env=env)]
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/healthz", procs[0], timeout=120)  # serve migrates the database first
    if args.answer_workers:
        nice = ["nice", "-n", str(args.worker_nice)] if args.worker_nice else []
        procs += [subprocess.Popen([*nice, str(VSSBOT), "worker"], env=env) for _ in range(args.answer_workers)]
    return procs, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- the load ------------------------------------------------------------------------------------

@dataclass
class Load:
    acks: list[float] = field(default_factory=list)  # seconds
    sent_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # sender -> times
    errors: int = 0
    requests: int = 0
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


def questions() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from knowledge.loader import load_knowledge

    kb = load_knowledge()
    return [e.questions_vi[-1] for e in kb.entries if e.kind == "faq"]


def delivery(sender: str, mid: str, text: str) -> bytes:
    now = int(time.time() * 1000)
    body = {"object": "page", "entry": [{"id": PAGE_ID, "time": now, "messaging": [{
        "sender": {"id": sender}, "recipient": {"id": PAGE_ID}, "timestamp": now,
        "message": {"mid": mid, "text": text}}]}]}
    return json.dumps(body, ensure_ascii=False).encode()


def signed(raw: bytes) -> dict[str, str]:
    sig = hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={sig}"}


async def drive(url: str, senders: int, messages: int, texts: list[str], retry_share: float, tag: str,
                rate: float | None = None) -> Load:
    """`senders` concurrent senders, each posting `messages` deliveries. Without `rate`, one after
    another as fast as the server acknowledges (a closed loop: the saturation throughput; the
    latency is then mostly the queue of 200 requests always in flight, 200 / throughput by
    Little's law). With `rate`, each sender posts at random (Poisson) times, `rate` a second on
    average, and each latency counts from the time the delivery was due, so a slow answer that
    delays the sender's next delivery still shows (no coordinated omission).
    aiohttp, not httpx, on this side: at 200 concurrent connections httpx's pool costs more CPU
    than the server under test and would measure the client."""
    load = Load()
    rng = random.Random(11)
    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as client:

        async def post(raw: bytes, due: float | None = None) -> float:
            t0 = time.perf_counter() if due is None else due
            async with client.post("/webhooks/messenger", data=raw, headers=signed(raw)) as r:
                await r.read()
                status = r.status
            took = time.perf_counter() - t0
            load.requests += 1
            if status != 200:
                load.errors += 1
            return took

        async def sender(i: int) -> None:
            sid = f"{tag}{i:05d}"
            due = time.perf_counter()
            for k in range(messages):
                if rate:
                    due += rng.expovariate(rate)
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                raw = delivery(sid, f"m_{tag}_{i}_{k}", texts[(i * messages + k) % len(texts)])
                load.sent_at[sid].append(time.time())
                load.acks.append(await post(raw, due if rate else None))
                if rng.random() < retry_share:  # the platform's retry of the same delivery
                    load.acks.append(await post(raw))

        start = time.perf_counter()
        await asyncio.gather(*(sender(i) for i in range(senders)))
        load.elapsed = time.perf_counter() - start
    return load


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# --- checks ----------------------------------------------------------------------------------

def wait_replies(graph_url: str, expected: int, timeout: float) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout
    stats: dict[str, list[float]] = {}
    while time.monotonic() < deadline:
        stats = httpx.get(graph_url + "/stats", timeout=10).json()
        if sum(len(v) for v in stats.values()) >= expected:
            time.sleep(2)  # anything more arriving would be a double send: let it show
            return httpx.get(graph_url + "/stats", timeout=10).json()
        time.sleep(0.5)
    return stats


def check_database(database_url: str, want: int) -> list[str]:
    """Every inbound message stored once, answered by one reply, and that reply sent."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    problems = []
    with engine.connect() as conn:
        inbound = conn.execute(text("SELECT count(*), count(DISTINCT external_id) FROM messages WHERE direction='in'")).one()
        outbound = conn.execute(text("SELECT count(*), count(DISTINCT reply_to_id) FROM messages WHERE direction='out'")).one()
        outbox = dict(conn.execute(text("SELECT status, count(*) FROM outbox GROUP BY status")).all())
    engine.dispose()
    if inbound[0] != want or inbound[1] != want:
        problems.append(f"stored {inbound[0]} inbound messages ({inbound[1]} distinct), expected {want}")
    if outbound[0] != want or outbound[1] != want:
        problems.append(f"{outbound[0]} replies to {outbound[1]} messages, expected {want} each")
    if outbox.get("sent", 0) != want:
        problems.append(f"outbox: {outbox}, expected {want} sent")
    return problems


def check_sends(stats: dict[str, list[float]], load: Load, messages: int) -> tuple[list[str], list[float]]:
    problems, e2e = [], []
    for sid, sent in load.sent_at.items():
        got = sorted(stats.get(sid, []))
        if len(got) != messages:
            problems.append(f"sender {sid}: {len(got)} replies delivered for {messages} messages")
        e2e.extend(g - s for s, g in zip(sorted(sent), got))
    return problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else []), e2e


# --- scenarios -------------------------------------------------------------------------------

def pg_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", schema


def drop_pg(schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def scenario(name: str, database_url: str, workers: int, args: argparse.Namespace, texts: list[str],
             bare_url: str) -> dict[str, object]:
    """`args.rounds` bursts against one deployment, each drained (every reply delivered) before the
    next, and each just after the same burst against the bare endpoint (so both see the same
    machine: others' load on it varies); the checks cover every message of every round."""
    graph, graph_url = start_role("stand-in", args.fail_rate)
    servers, url = start_vssbot(database_url, graph_url, args, workers)
    rounds: list[Load] = []
    bare_rounds: list[Load] = []
    paced: list[Load] = []
    bare_paced: list[Load] = []
    e2e: list[float] = []
    problems: list[str] = []
    try:
        tag = uuid.uuid4().hex[:6]
        asyncio.run(drive(url, WARM // 2, 2, texts, 0.0, f"w{tag}"))  # warm up every process
        warm = wait_replies(graph_url, WARM, 60)
        warm_sends = sum(len(v) for v in warm.values())
        if warm_sends != WARM:
            problems.append(f"warm-up: {warm_sends} replies delivered for {WARM} messages")
        expected = WARM

        def run(target: str, rate: float | None, bare_loads: list[Load], loads: list[Load]) -> None:
            """The same load on the bare endpoint, then on vssbot; every reply delivered and checked."""
            nonlocal expected, problems, e2e
            bare_loads.append(asyncio.run(drive(bare_url, args.senders, args.messages, texts, args.retry_share,
                                                f"b{target}", rate)))
            time.sleep(1)
            load = asyncio.run(drive(url, args.senders, args.messages, texts, args.retry_share, f"s{tag}{target}", rate))
            loads.append(load)
            expected += args.senders * args.messages
            stats = wait_replies(graph_url, expected, args.drain_timeout)
            round_problems, round_e2e = check_sends(
                {k: v for k, v in stats.items() if k.startswith(f"s{tag}{target}")}, load, args.messages)
            problems += round_problems
            e2e += round_e2e

        for r in range(args.rounds):
            run(f"r{r}", None, bare_rounds, rounds)
            if args.pace:
                run(f"p{r}", args.pace, bare_paced, paced)
        problems += check_database(database_url, expected)
    finally:
        for proc in servers:
            stop(proc)
        stop(graph)
    return {"name": name, "rounds": rounds, "bare": bare_rounds, "paced": paced, "bare_paced": bare_paced,
            "e2e": e2e, "problems": problems}


@dataclass
class Figures:
    """The median over rounds of each figure (this machine is shared: single bursts vary a lot)."""

    rps: float
    ack_p50: float
    ack_p99: float
    errors: int

    @classmethod
    def of(cls, rounds: list[Load]) -> "Figures":
        return cls(statistics.median(r.rps for r in rounds), statistics.median(pct(r.acks, 50) for r in rounds),
                   statistics.median(pct(r.acks, 99) for r in rounds), sum(r.errors for r in rounds))


def report(name: str, rounds: list[Load], e2e: list[float] | None, bare_rps: float) -> str:
    f = Figures.of(rounds)
    line = (f"{name:<24} {f.rps:8.0f} req/s  ack p50 {f.ack_p50 * 1000:6.1f} ms  p99 {f.ack_p99 * 1000:6.1f} ms  "
            f"errors {f.errors}\n{'':<24} rounds: " + ", ".join(f"{r.rps:.0f} req/s p99 {pct(r.acks, 99) * 1000:.0f} ms"
                                                   for r in rounds))
    if e2e is not None:
        line += (f"\n{'':<24} reply p50 {pct(e2e, 50) * 1000:7.0f} ms  p99 {pct(e2e, 99) * 1000:7.0f} ms  "
                 f"x bare {f.rps / bare_rps if bare_rps else 0:4.2f}")
    return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--senders", type=int, default=200, help="concurrent senders (default 200)")
    ap.add_argument("--messages", type=int, default=10, help="deliveries per sender (default 10)")
    ap.add_argument("--pg-workers", type=int, default=2, help="server processes on PostgreSQL (default 2)")
    ap.add_argument("--answer-workers", type=int, default=0,
                    help="K > 0: the serving processes only acknowledge (VSSBOT_SERVE_ANSWERS=false) and K "
                    "`vssbot worker` processes answer (default 0: the serving processes answer)")
    ap.add_argument("--worker-nice", type=int, default=10, help="their nice value (default 10; 0: none)")
    ap.add_argument("--fail-rate", type=float, default=0.2, help="share of sends the stand-in fails (default 0.2)")
    ap.add_argument("--retry-share", type=float, default=0.05, help="share of deliveries posted twice (default 0.05)")
    ap.add_argument("--pace", type=float, default=5.0,
                    help="after each burst, the same senders at this many deliveries a second each, on average, "
                    "for the ack latency below saturation (default 5: 1,000/s from 200 senders; 0: bursts only)")
    ap.add_argument("--rounds", type=int, default=3, help="bursts per deployment; figures are medians (default 3)")
    ap.add_argument("--drain-timeout", type=float, default=300, help="seconds to wait for every reply")
    ap.add_argument("--skip-pg", action="store_true", help="SQLite only")
    ap.add_argument("--role", choices=["stand-in", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        serve_role(args.role, args.port, args.fail_rate)
        return 0

    texts = questions()
    print(f"{args.senders} concurrent senders x {args.messages} deliveries (+{args.retry_share:.0%} retried), "
          f"stand-in Graph API failing {args.fail_rate:.0%} of sends; {os.cpu_count()} CPUs", flush=True)
    print("answered by the serving processes" if not args.answer_workers else
          f"answered by {args.answer_workers} `vssbot worker` process(es), nice {args.worker_nice}", flush=True)
    bare_proc, bare_url = start_role("bare")
    results = []
    try:
        asyncio.run(drive(bare_url, 10, 2, texts, 0.0, "warm"))
        with tempfile.TemporaryDirectory() as tmp:
            results.append(scenario("vssbot SQLite x1", f"sqlite:///{tmp}/bench.db", 1, args, texts, bare_url))
        if not args.skip_pg:
            url, schema = pg_database()
            try:
                results.append(scenario(f"vssbot PostgreSQL x{args.pg_workers}", url, args.pg_workers, args, texts,
                                        bare_url))
            finally:
                drop_pg(schema)
    finally:
        stop(bare_proc)
    failed = False
    for r in results:
        rounds: list[Load] = r["rounds"]  # type: ignore[assignment]
        bare_rounds: list[Load] = r["bare"]  # type: ignore[assignment]
        bare_rps = Figures.of(bare_rounds).rps
        paced: list[Load] = r["paced"]  # type: ignore[assignment]
        bare_paced: list[Load] = r["bare_paced"]  # type: ignore[assignment]
        print("saturation (each sender posts as soon as the last delivery is acknowledged):")
        print(report("bare FastAPI endpoint", bare_rounds, None, 0), flush=True)
        print(report(str(r["name"]), rounds, r["e2e"], bare_rps), flush=True)  # type: ignore[arg-type]
        if paced:
            print(f"paced ({args.senders} senders x {args.pace:g} deliveries/s on average = "
                  f"{args.senders * args.pace:,.0f}/s offered; latency from the time each was due):")
            print(report("bare FastAPI endpoint", bare_paced, None, 0), flush=True)
            print(report(str(r["name"]), paced, None, 0), flush=True)
        problems: list[str] = r["problems"]  # type: ignore[assignment]
        figures = Figures.of(rounds)
        errors = figures.errors + (Figures.of(paced).errors if paced else 0)
        if problems or errors:
            failed = True
            for p in problems:
                print(f"  CHECK FAILED: {p}")
        else:
            total = args.senders * args.messages * args.rounds * (2 if paced else 1)
            print(f"  checks: {total} messages stored once and answered once")
        print(f"  throughput {figures.rps / bare_rps if bare_rps else 0:.2f} x bare: goal >= 0.5 "
              f"{'met' if figures.rps >= 0.5 * bare_rps else 'NOT met'}")
        if paced:
            p99 = Figures.of(paced).ack_p99
            print(f"  ack p99 at {args.senders} concurrent senders ({args.senders * args.pace:,.0f}/s): "
                  f"{p99 * 1000:.0f} ms: goal < 100 ms {'met' if p99 < 0.1 else 'NOT met'}")
        print(f"  ack p99 at saturation: {figures.ack_p99 * 1000:.0f} ms "
              f"({'<' if figures.ack_p99 < 0.1 else '>='} 100 ms)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
