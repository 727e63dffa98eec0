"""Shared pieces of the benchmarks: a private redis-server, the provider simulator,
the daemon as a subprocess, and CPU/memory readings from /proc."""

from __future__ import annotations

import json
import os
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
from typing import Any

from redis.asyncio import Redis

from router.store import keys

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NUMBERS = ["+16501112345", "+14082223333", "+14155552671"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server on a free port; can be killed and started again on the
    same port and files (with `appendonly`, what it acknowledged survives a kill -9
    but the last second)."""

    def __init__(self, *, appendonly: bool = False, folder: Path | None = None) -> None:
        self.dir = folder or Path(tempfile.mkdtemp(prefix="sms-bench-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH (make bench installs it)")
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        durable = ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + (durable if self.appendonly else ["--appendonly", "no"])
            + ["--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        Stack._wait_port(self.port)

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Stack:
    """redis-server + provider simulator, stopped on exit."""

    def __init__(self, latency: float = 0.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sms-bench-"))
        self.server = RedisServer(folder=self.dir)
        self.redis_port = self.server.port
        self.sim_port = free_port()
        self.sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router",
                "http-sim",
                "--port",
                str(self.sim_port),
                "--latency",
                str(latency),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_port(self.sim_port)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def sim_stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.sim_port}/stats"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    def sim_reset(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.sim_port}/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def config(self, *, window: int, processing: str = "async", tps: float = 0) -> Path:
        path = self.dir / f"router-{processing}-{window}.toml"
        path.write_text(
            f"""
[router]
redis = "{self.redis_url}"
instance = "bench"
log_format = "json"
log_level = "warning"
[queue]
batch = 200
[profiles.bench]
global = true
protocol = "http"
processing = "{processing}"
window = {window}
tps = {tps}
numbers = {json.dumps(NUMBERS)}
[profiles.bench.http]
url = "http://127.0.0.1:{self.sim_port}/send"
form = {{ from = "{{from}}", to = "{{to}}", text = "{{text}}", ref = "{{id}}" }}
message_id = "json:id"
{campaign_toml(NUMBERS)}"""
        )
        return path

    def close(self) -> None:
        self.sim.terminate()
        self.sim.wait(10)
        self.server.close()

    @staticmethod
    def _wait_port(port: int) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"nothing listens on port {port}")


def smsc_sim(*flags: str, receipt_delay: float = 0.01) -> tuple[subprocess.Popen[bytes], int, int]:
    """`sms-router smsc-sim` on free ports with extra `flags`: (process, SMPP port, HTTP port)."""
    port, http = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "router", "smsc-sim"),
            *("--port", str(port), "--http-port", str(http)),
            *("--receipt-delay", str(receipt_delay), *flags),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    Stack._wait_port(port)
    return proc, port, http


def cli(*args: str) -> str:
    """Run an `sms-router` command; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "router", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"sms-router {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "router", "run", "-c", str(config)],
            stdout=handle,
            stderr=handle,
        )


def stop(proc: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> int:
    proc.send_signal(how)
    return proc.wait(60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of a live process now (peak_rss_mb is its high-water mark)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_jobs(path: Path, count: int, prefix: str) -> Path:
    with path.open("w") as handle:
        for i in range(count):
            handle.write(
                json.dumps(
                    {"id": f"{prefix}-{i}", "to": "+447911123456", "text": f"benchmark message {i}"}
                )
                + "\n"
            )
    return path


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def round_ratio(
    base: list[dict[str, Any]], other: list[dict[str, Any]], key: str = "rate"
) -> float | None:
    """Median of the per-round ratios `other`/`base` of `key` (the runs of one round
    were made side by side, so each round is compared with itself); None without any."""
    pairs = [o[key] / b[key] for b, o in zip(base, other, strict=False) if b.get(key)]
    return round(statistics.median(pairs), 3) if pairs else None


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def campaign_toml(numbers: list[str]) -> str:
    """TOML giving US long codes the Confirmed 10DLC campaign they need to send, and the
    InternationalSmsSender feature: the benchmarks send to UK and German numbers."""
    lines = ["[campaigns.bench]", 'brand = "Bench"', 'status = "Confirmed"']
    lines.append('tier = "StandardVolume"')
    features = 'features = ["SmsSender", "InternationalSmsSender"]'
    for number in numbers:
        lines += [f'[numbers."{number}"]', 'campaign = "bench"', features, ""]
    return "\n".join(lines) + "\n"


async def status_counts(
    redis: Redis, profile: str, ids: list[str], chunk: int = 2000
) -> dict[str, int]:
    """How many of `ids` (jobs of `profile`) are in each status ("missing": no record)."""
    counts: dict[str, int] = {}
    for start in range(0, len(ids), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + chunk]:
                pipe.hget(keys.record(profile, job_id), "status")
            for status in await pipe.execute():
                name = status.decode() if status else "missing"
                counts[name] = counts.get(name, 0) + 1
    return counts
