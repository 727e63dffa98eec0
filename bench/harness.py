"""Shared pieces of the benchmarks: a private redis-server, the provider simulator,
the daemon as a subprocess, CPU/memory readings from /proc, and the peer kit's side
(../shared/bench-peers): its SMPP sink, Kannel through its runner, its loader waiting
for the sink, and `Rig` (Redis + the daemon + a sink) that versus_kannel.py,
api_submit.py and the other SMPP benchmarks run the router on."""

from __future__ import annotations

import collections
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

from router import Client
from router.store import keys

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NUMBERS = ["+16501112345", "+14082223333", "+14155552671"]
PEERS = ROOT.parent / "shared" / "bench-peers"
SINK_PORT = 27775  # the default; a run may take a free port (Kannel's runner takes any)
WINDOW = int(os.environ.get("BENCH_WINDOW", "100"))


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


def descendants(pid: int) -> list[int]:
    """The live processes under `pid` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += parents.get(child, [])
    return sorted(found)


def settle(pid: int, *, at_least: float = 1.5, within: float = 15.0) -> None:
    """Wait `at_least` seconds, then until the process uses under 10 % of a core over
    0.25 s (a daemon past its start-up, e.g. retrying a sink not yet up), at most
    `within` seconds: on a loaded machine its imports would fall in the measured window."""
    time.sleep(at_least)
    deadline = time.monotonic() + within
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - before < 0.025:
            return
        before = now


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


# The peer kit's side: its sink, Kannel, its loader, and the router rigged to the sink.


def ensure_tools(*, kannel: bool = True) -> None:
    """Kannel from Debian's packages (never started by the package), uvloop for the sink."""
    if not PEERS.is_dir():
        sys.exit(f"the peer kit is missing: {PEERS}")
    if kannel and shutil.which("bearerbox") is None:
        if os.geteuid() != 0:
            sys.exit("Kannel is missing: run as root, or apt-get install kannel")
        policy = Path("/usr/sbin/policy-rc.d")
        if not policy.exists():  # keep Debian from starting Kannel on its default ports
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "kannel"], check=True, env=env)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop"], check=True)


def peer(script: str, *args: str) -> list[str]:
    """A command line running one of the peer kit's Python tools."""
    return [sys.executable, str(PEERS / script), *args]


def start_sink(
    stats: Path, log: Path, *, latency_ms: float = 0.0, dlr: str = "off", port: int = SINK_PORT
) -> subprocess.Popen[bytes]:
    """A fresh sink (rates come from its first and last submit); `dlr`: off | requested."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            peer(
                "smsc_sink.py",
                *("--port", str(port), "--quiet", "--dlr", dlr, "--uvloop"),
                *("--latency-ms", f"{latency_ms:g}", "--stats-file", str(stats)),
            ),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    Stack._wait_port(port)
    return proc


def sink_stats(path: Path) -> dict[str, Any]:
    """The sink's stats file (rewritten every 0.1 s; {} before its first write)."""
    for _ in range(5):
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            time.sleep(0.02)
    return {}


def wait_no_kannel(timeout: float = 1800.0) -> None:
    """Until no bearerbox runs (pgrep), at most `timeout` seconds."""
    deadline, said = time.monotonic() + timeout, False
    while subprocess.run(["pgrep", "-x", "bearerbox"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            sys.exit("another Kannel (bearerbox) kept running: its ports are the same")
        if not said:
            print("waiting for another bearerbox to end ...", file=sys.stderr)
            said = True
        time.sleep(1.0)


def kannel(
    n: int,
    scratch: Path,
    mode: str = "drain",
    latency_ms: float = 0.0,
    *,
    sink_port: int = SINK_PORT,
) -> dict[str, Any]:
    """One Kannel run (drain or live) through the kit's runner; its loadgen result line.
    Never two at once: Kannel's admin, box and sendsms ports are fixed, so this waits
    while another bearerbox runs on the machine (another benchmark's)."""
    wait_no_kannel()
    out, log = scratch / "kannel.jsonl", scratch / f"kannel-{mode}.log"
    env = {
        **os.environ,
        "N": str(n),
        "RUNS": "1",
        "MODES": mode,
        "WINDOWS": str(WINDOW),
        "STORES": "file",
        "PY": sys.executable,
        "SCRATCH": str(scratch),
        "RESULTS": str(scratch),
        "OUT": str(out),
        "SINK_PORT": str(sink_port),
    }
    env.pop("SINK_LATENCY_MS", None)
    if latency_ms:
        env["SINK_LATENCY_MS"] = f"{latency_ms:g}"
    with log.open("wb") as handle:
        subprocess.run(
            ["bash", str(PEERS / "run_kannel.sh")],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )
    text = out.read_text() if out.exists() else ""  # no line: the run failed
    out.unlink(missing_ok=True)
    lines = [json.loads(x) for x in text.splitlines() if x.strip()]
    result = lines[-1] if lines else {}
    if not result:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        print(f"Kannel's {mode} run failed:", *tail, sep="\n  ", file=sys.stderr)
    cpu = {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()}
    loader = cpu.pop("loader", 0.0)
    if mode == "live":  # the kit's HTTP loader is the producer there; idle in a drain
        cpu["producer"] = loader
    return {
        "rate": result.get("e2e_rate" if mode == "live" else "sink_rate", 0.0),
        # live: the rate sendsms answered the loader at (HTTP 202s / load time)
        "http_rate": result.get("http_rate") or 0.0,
        "foreign_cpu_pct": result.get("foreign_cpu_pct"),  # other load on the machine
        "complete": result.get("complete", False),
        "cpu_pct": cpu,
    }


def router_config(
    path: Path,
    redis_url: str,
    *,
    window: int = WINDOW,
    processing: str = "async",
    registered_delivery: int = 0,
    retention: float | None = None,
    binds: int = 1,
    port: int = SINK_PORT,
) -> Path:
    """One SMPP profile to the sink (`binds` sessions); `retention` (seconds) also trims
    the event stream."""
    short = f"retention = {retention:g}\nevents_maxlen = 1000" if retention else ""
    path.write_text(
        f"""
[router]
redis = "{redis_url}"
instance = "versus"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
{short}
[profiles.bench]
global = true
protocol = "smpp"
processing = "{processing}"
window = {window}
numbers = {json.dumps(NUMBERS)}
[profiles.bench.smpp]
host = "127.0.0.1"
port = {port}
binds = {binds}
system_id = "bench"
password = "bench"
bind = "transceiver"
registered_delivery = {registered_delivery}
reconnect_max = 1
{campaign_toml(NUMBERS)}"""
    )
    return path


class Rig:
    """A private Redis (append-only file unless told), the router's configuration, then
    the daemon and a sink as a run starts them; `close` stops what was started."""

    def __init__(
        self,
        scratch: Path,
        tag: str,
        *,
        appendonly: bool = True,
        sink_port: int = SINK_PORT,
        processes: int = 1,
        **config: Any,
    ) -> None:
        self.scratch, self.tag = scratch, tag
        self.sink_port, self.processes = sink_port, processes
        self.binds = int(config.get("binds", 1))
        self.server = RedisServer(appendonly=appendonly, folder=scratch / f"redis-{tag}")
        self.config = router_config(
            scratch / f"router-{tag}.toml", self.server.url, port=sink_port, **config
        )
        self.stats = scratch / f"sink-{tag}.json"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.more: list[subprocess.Popen[bytes]] = []  # daemons 2..processes
        self.sink: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def router_pid(self) -> int:
        return self.daemon.pid if self.daemon is not None else 0

    def pids(self) -> dict[str, int]:
        """The processes whose CPU a run reports: each daemon and the processes it
        started (API workers: `router.1`, ...; taken when called), and Redis."""
        daemons = {"router": self.router_pid}
        daemons |= {f"router{i}": d.pid for i, d in enumerate(self.more, 2)}
        found: dict[str, int] = {}
        for name, pid in daemons.items():
            found[name] = pid
            found |= {f"{name}.{i}": child for i, child in enumerate(descendants(pid), 1)}
        redis = self.server.proc.pid if self.server.proc else 0
        return {**found, "redis": redis}

    def start_daemon(self) -> None:
        self.daemon = start_daemon(self.config, self.scratch / f"router-{self.tag}.log")
        # More daemons of the same profile: same consumer group, their own instance
        # names (and binds), as several hosts would run it.
        for i in range(2, self.processes + 1):
            config = self.scratch / f"router-{self.tag}-{i}.toml"
            text = self.config.read_text().replace('instance = "versus"', f'instance = "versus{i}"')
            config.write_text(text)
            self.more.append(start_daemon(config, self.scratch / f"router-{self.tag}-{i}.log"))

    def start_sink(self, *, latency_ms: float = 0.0, dlr: str = "off") -> None:
        self.stats.unlink(missing_ok=True)
        self.sink = start_sink(
            self.stats,
            self.scratch / f"sink-{self.tag}.log",
            latency_ms=latency_ms,
            dlr=dlr,
            port=self.sink_port,
        )

    def wait_bound(self, timeout: float = 30.0) -> None:
        """Until the daemon has bound each of its sessions to the sink."""
        deadline = time.monotonic() + timeout
        while sink_stats(self.stats).get("binds", 0) < self.binds * self.processes:
            if time.monotonic() > deadline:
                sys.exit(f"the router did not bind within {timeout:.0f} s (see its log)")
            time.sleep(0.05)

    def close(self) -> None:
        for daemon in self.more:
            stop(daemon)
        if self.daemon is not None:
            stop(self.daemon)
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait(10)
        self.server.close()


def waiter(n: int, stats: Path, label: str, pids: dict[str, int]) -> subprocess.Popen[bytes]:
    """The kit's loadgen waiting for `n` submits at the sink, sampling each pid's CPU."""
    flags = [x for name, pid in pids.items() for x in ("--pid", f"{name}={pid}")]
    return subprocess.Popen(
        peer(
            "loadgen.py",
            *("--mode", "drain", "--n", str(n), "--sink-stats", str(stats), "--label", label),
            *flags,
        ),
        stdout=subprocess.PIPE,
    )


def waited(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    return json.loads((proc.communicate(timeout=900)[0] or b"{}").decode())  # type: ignore[no-any-return]


def jobs(tag: str, start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{tag}-{i}", "to": f"+4915100{i % 1_000_000:06d}", "text": "Hello from the bench"}
        for i in range(start, stop)
    ]


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """Enqueue `n` jobs through `Client.send_many`, one batch after the other."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(jobs(tag, start, min(n, start + batch)))
    await redis.aclose()


def row_median(rows: list[dict[str, Any]], key: str = "rate") -> float:
    """The median of one figure over runs (0 without any)."""
    return statistics.median(r[key] for r in rows) if rows else 0.0


PY_SPY = os.environ.get("PY_SPY", "/tmp/tools/bin/py-spy")


def spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` into `output` (raw folded stacks) until SIGINT."""
    flags = ("--nonblocking", "-r", "200", "-f", "raw", "-o", str(output))
    return subprocess.Popen(
        [PY_SPY, "record", *flags, "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def spied(proc: subprocess.Popen[bytes], output: Path, top: int = 30) -> None:
    """Stop py-spy, then print the functions with the most samples: self (the frame
    running) and total (on the stack), as % of all samples."""
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"profile {output}: {samples} samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"  top {top} by {title}:")
        for frame, n in counter.most_common(top):
            print(f"    {100 * n / max(samples, 1):5.1f} %  {frame}")
