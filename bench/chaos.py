"""Chaos run: the daemon under every fault of issue 7 at once, and every message's fate.

Usage: python bench/chaos.py [--jobs 10000] [--http-jobs 200] [--poison 1000] [--long-outage 30]

One daemon (a subprocess) on a private redis-server with an append-only file, two
profiles:
- `smsc`: SMPP to the SMSC simulator answering 30 % of submits ESME_RTHROTTLED,
  never answering 5 %, dropping the connection every 1,000 PDUs; its status
  callbacks go to an application that answers at once;
- `hostile`: HTTP to a provider that answers every request with a 50 MB body; its
  status callbacks go to a URL that never answers.
While `--jobs` good SMPP jobs, `--http-jobs` good HTTP jobs and `--poison` bad jobs
(meta nested 1,000 deep, out-of-range times, 1 MB and 300-segment texts, `++`
numbers, not msgpack, unknown fields) flow, Redis is killed (-9) twice for 3 s and
once for `--long-outage` s, each time restarted on the same port and file.
Checks: the daemon is alive at the end, every good job has a final status, every
bad job is in the dead-letter stream with its field named, peak RSS < 150 MB.
Writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import redis
from aiohttp import web
from harness import (
    NUMBERS,
    RedisServer,
    campaign_toml,
    free_port,
    peak_rss_mb,
    save,
    smsc_sim,
    start_daemon,
    stop,
)

from binds.smpp.codec import count_segments
from router import Client
from router.store import keys

SMPP_FINAL = {"delivered", "undelivered", "failed", "expired", "rejected"}
HTTP_FINAL = {"sent", "failed", "expired", "rejected"}
BODY_MB = 50


class Peers:
    """The hostile provider and two status-callback receivers, in a thread of their own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hang_port = free_port()
        self.callbacks: set[tuple[str, str]] = set()  # (job id, status) posted to the good app
        self.provider_requests = 0
        self.hanging = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/send", self._send)
        app.router.add_post("/callback", self._callback)
        app.router.add_post("/hang", self._hang)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        # The hanging application is another server (its own port): a destination that
        # hangs may hold its own connection slots, not those of everyone else.
        for port in (self.port, self.hang_port):
            site = web.TCPSite(runner, "127.0.0.1", port)
            self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    async def _send(self, request: web.Request) -> web.StreamResponse:
        """200 and a 50 MB JSON body, streamed: the id is at its far end."""
        self.provider_requests += 1
        await request.read()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = BODY_MB * 1024 * 1024 + 32
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            await response.write(b'{"pad": "')
            for _ in range(BODY_MB * 16):
                await response.write(chunk)
            await response.write(b'", "id": "never-read"}')
        except (ConnectionError, RuntimeError):
            pass  # the router stopped reading, as it should
        return response

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.callbacks.add((body["id"], body["status"]))
        return web.Response(status=204)

    async def _hang(self, request: web.Request) -> web.Response:
        self.hanging += 1
        await asyncio.sleep(3600)
        return web.Response(status=204)


def write_config(path: Path, redis_url: str, smsc_port: int, peers: Peers) -> Path:
    path.write_text(
        f"""
[router]
redis = "{redis_url}"
instance = "chaos"
log_format = "json"
log_level = "info"
[queue]
batch = 200
claim_idle = 15
retry_base = 0.5
retry_max = 5
[profiles.smsc]
global = true
protocol = "smpp"
window = 50
numbers = {json.dumps(NUMBERS)}
status_callback_url = "{peers.url("/callback")}"
[profiles.smsc.smpp]
host = "127.0.0.1"
port = {smsc_port}
system_id = "smppclient1"
password = "password"
response_timeout = 2
reconnect_max = 2
enquire_link = 5
[profiles.hostile]
protocol = "http"
window = 4
numbers = ["+16505550100"]
status_callback_url = "http://127.0.0.1:{peers.hang_port}/hang"
[profiles.hostile.http]
url = "{peers.url("/send")}"
form = {{ from = "{{from}}", to = "{{to}}", text = "{{text}}" }}
message_id = "json:id"
timeout = 10
{campaign_toml([*NUMBERS, "+16505550100"])}"""
    )
    return path


def _deep_meta_job(job_id: str, depth: int = 1000) -> bytes:
    """msgpack refuses to pack this deep; a producer in another language need not."""
    head = msgpack.packb({"id": job_id, "to": "+447911123456", "text": "deep"})
    assert head[0] == 0x83
    return bytes([0x84]) + head[1:] + msgpack.packb("meta") + b"\x81\xa1a" * depth + b"\xc0"


def poison_jobs(count: int) -> list[tuple[str, bytes, str]]:
    """(id, raw job, the field its dead-letter reason must name)."""
    jobs: list[tuple[str, bytes, str]] = []
    huge = "x" * 1_000_000
    long_text = "y" * (160 * 300)
    for i in range(count):
        job_id = f"poison-{i}"
        base: dict[str, Any] = {"id": job_id, "to": "+447911123456", "text": "p"}
        kind = i % 10
        if kind == 0:
            jobs.append((job_id, _deep_meta_job(job_id), "job.meta"))
        elif kind == 1:
            base["send_at"] = [1e17, 2**63, 1.7e308][i % 3]
            jobs.append((job_id, msgpack.packb(base), "job.send_at"))
        elif kind == 2:
            base["expires_at"] = 1.7e308
            jobs.append((job_id, msgpack.packb(base), "job.expires_at"))
        elif kind == 3 and i % 50 == 3:
            base["text"] = huge  # refused by its size before it is even unpacked
            jobs.append((job_id, msgpack.packb(base), "job: 10"))
        elif kind == 3:
            base["text"] = long_text
            jobs.append((job_id, msgpack.packb(base), "job.text"))
        elif kind == 4:
            base["to"] = "++447911123456"
            jobs.append((job_id, msgpack.packb(base), "job.to"))
        elif kind == 5:
            jobs.append((job_id, b"\xc1 not msgpack " + job_id.encode(), "msgpack"))
        elif kind == 6:
            base["colour"] = "red"
            jobs.append((job_id, msgpack.packb(base), "job.colour"))
        elif kind == 7:
            base["meta"] = {"blob": "z" * 20_000}
            jobs.append((job_id, msgpack.packb(base), "job.meta"))
        elif kind == 8:
            base["from"] = "+447700900123"  # not a number of the profile
            jobs.append((job_id, msgpack.packb(base), "job.from"))
        else:
            del base["to"]
            jobs.append((job_id, msgpack.packb(base), "job.to"))
    return jobs


TAIL = "with a tail long enough that some messages need two or three parts " * 4


def good_text(i: int) -> str:
    """1 to 3 SMS parts."""
    return f"chaos {i} {TAIL}"[: 60 + i % 300]


async def enqueue_good(url: str, smpp_jobs: int, http_jobs: int) -> list[str]:
    client_redis = redis.asyncio.Redis.from_url(url)
    client = Client(client_redis, default_profile="smsc", profiles=["smsc", "hostile"])
    ids: list[str] = []
    for start in range(0, smpp_jobs, 2000):
        part = range(start, min(smpp_jobs, start + 2000))
        ids += await client.send_many(
            [
                {
                    "id": f"good-{i}",
                    "to": "+447911123456",
                    "text": good_text(i),
                }
                for i in part
            ]
        )
    ids += await client.send_many(
        [
            {"id": f"http-{i}", "to": "+447911123456", "text": "hostile", "profile": "hostile"}
            for i in range(http_jobs)
        ]
    )
    await client_redis.aclose()
    return ids


def statuses(client: redis.Redis, ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        chunk = ids[start : start + 5000]
        for job_id in chunk:
            profile = "hostile" if job_id.startswith("http-") else "smsc"
            pipe.hget(keys.record(profile, job_id), "status")
        for job_id, status in zip(chunk, pipe.execute(), strict=True):
            out[job_id] = status.decode() if status else "missing"
    return out


def final(job_id: str, status: str) -> bool:
    return status in (HTTP_FINAL if job_id.startswith("http-") else SMPP_FINAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--http-jobs", type=int, default=200)
    parser.add_argument("--poison", type=int, default=1000)
    parser.add_argument("--long-outage", type=float, default=30.0)
    parser.add_argument("--limit", type=float, default=1200.0, help="Seconds before giving up.")
    args = parser.parse_args()

    server = RedisServer(appendonly=True)
    peers = Peers()
    sim, smsc_port, sim_http = smsc_sim(
        "--throttle-ratio",
        "0.3",
        "--drop-ratio",
        "0.05",
        "--disconnect-every",
        "1000",
        "--seed",
        "7",
        receipt_delay=0.05,
    )
    config = write_config(server.dir / "chaos.toml", server.url, smsc_port, peers)
    log = server.dir / "daemon.log"
    daemon = start_daemon(config, log)
    sync = redis.Redis.from_url(server.url)
    report: dict[str, Any] = {"args": vars(args)}
    began = time.monotonic()
    try:
        time.sleep(2)
        ids = asyncio.run(enqueue_good(server.url, args.jobs, args.http_jobs))
        poison = poison_jobs(args.poison)
        pipe = sync.pipeline(transaction=False)
        for _job_id, raw, _field in poison:
            pipe.xadd(keys.queue("smsc"), {"job": raw})
        pipe.execute()
        print(f"enqueued {len(ids)} good and {len(poison)} poison jobs", flush=True)

        outages = []
        for pause, down in ((4, 3.0), (6, 3.0), (6, args.long_outage)):
            time.sleep(pause)
            server.kill()
            time.sleep(down)
            server.start()
            outages.append(down)
            alive = daemon.poll() is None
            print(f"redis down {down:.0f}s and back; daemon alive: {alive}", flush=True)

        pending: dict[str, str] = {}
        while time.monotonic() - began < args.limit:
            try:
                now = statuses(sync, ids)
            except redis.RedisError:
                time.sleep(1)
                continue
            pending = {i: s for i, s in now.items() if not final(i, s)}
            if not pending:
                break
            time.sleep(2)
        elapsed = time.monotonic() - began
        alive = daemon.poll() is None
        rss = peak_rss_mb(daemon.pid) if alive else 0.0
        now = statuses(sync, ids)
        counts: dict[str, int] = {}
        for status in now.values():
            counts[status] = counts.get(status, 0) + 1

        letters = sync.xrange(keys.dead_letters("smsc"))
        reason_of = {f.get(b"job", b""): f[b"reason"].decode() for _eid, f in letters}
        misnamed = [
            (job_id, reason_of.get(raw, "not dead-lettered"))
            for job_id, raw, field in poison
            if field not in reason_of.get(raw, "")
        ]
        stats = {k.decode(): int(v) for k, v in sync.hgetall(keys.stats("smsc")).items()}
        health = sync.get("sms:health:chaos")
        smsc_stats = get_json(f"http://127.0.0.1:{sim_http}/stats")
        # Parts the SMSC took more than once: on the wire at a drop, a timeout or an outage.
        expected = sum(count_segments(good_text(i)) for i in range(args.jobs))
        # Status callbacks trail the records: give the good application's a while.
        good_smpp = {i: now[i] for i in ids if i.startswith("good-")}
        waited = time.monotonic()
        while time.monotonic() - waited < 300:
            missing = sum(1 for item in good_smpp.items() if item not in peers.callbacks)
            if not missing:
                break
            time.sleep(1)
        callbacks_lag = time.monotonic() - waited
        alive = daemon.poll() is None
        rss = peak_rss_mb(daemon.pid) if alive else 0.0
        report.update(
            {
                "elapsed_s": round(elapsed, 1),
                "daemon_alive": alive,
                "peak_rss_mb": round(rss, 1),
                "outages_s": outages,
                "good_jobs": len(ids),
                "not_final": len(pending),
                "statuses": counts,
                "poison_jobs": len(poison),
                "dead_letters": len(letters),
                "poison_misnamed": len(misnamed),
                "misnamed_examples": misnamed[:5],
                "stats": stats,
                "segments_expected": expected,
                "segments_taken_twice": smsc_stats.get("segments", 0) - expected,
                "final_callbacks_missing": missing,
                "callbacks_lag_s": round(callbacks_lag, 1),
                "hanging_callback_requests": peers.hanging,
                "hostile_provider_requests": peers.provider_requests,
                "smsc": {
                    k: smsc_stats.get(k)
                    for k in ("submits", "throttled", "dropped", "disconnects", "segments")
                },
                "health": json.loads(health) if health else None,
                "log_lines": sum(1 for _ in log.open("rb")),
            }
        )
    finally:
        if daemon.poll() is None:
            report["exit_code"] = stop(daemon, signal.SIGTERM)
        sim.terminate()
        sim.wait(10)
        kept = Path(tempfile.gettempdir()) / "sms-chaos-daemon.log"
        shutil.copyfile(log, kept)
        report["daemon_log"] = str(kept)
        server.close()
    ok = (
        report.get("daemon_alive")
        and report.get("not_final") == 0
        and report.get("poison_misnamed") == 0
        and report.get("final_callbacks_missing") == 0
        and report.get("peak_rss_mb", 999) < 150
        and report.get("exit_code") == 0
    )
    report["ok"] = bool(ok)
    print(json.dumps({k: v for k, v in report.items() if k != "health"}, indent=2))
    print("written", save("chaos", report))
    sys.exit(0 if ok else 1)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return dict(json.loads(reply.read()))


if __name__ == "__main__":
    main()
