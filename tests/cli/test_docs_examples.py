"""The examples of README.md and docs/*.md, run as written on the shipped configuration.

`config/run-local.sh` (what `make run` runs) starts the simulators and the daemon on a
copy of the shipped `router.toml` in a temporary folder, its ports moved to free ones
(the same ports are moved in the examples' text). Each marked example (see tests/docs.py)
then runs there: `sh` blocks step by step in one bash session, `python` blocks with the
virtualenv's python, `toml` blocks parsed (and checked with `check-config` when marked
``config``).

What an example promises is written under its command as ``# => TEXT`` (in Python at
the end of the line): TEXT must appear in one of the command's output lines, in order;
``…`` (or ``...``) matches anything; a JSON object is compared as JSON, a subset when it
ends with ``...``; ``# => exit N`` expects that exit code (every other step must exit 0).
A read-only step (`curl` without a body, `sms-router status|log|health|numbers`, `list`
subcommands) is repeated for up to 15 s until its promise holds: the message it looks at
may still be on its way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..conftest import free_port
from ..docs import ROOT, Example, anchors, broken_links, examples, fenced, markdown_files

pytestmark = pytest.mark.slow

EXAMPLES = [example for path in markdown_files() for example in examples(path)]
RUNNABLE = [e for e in EXAMPLES if e.lang in ("sh", "bash", "python")]
TOML = [e for e in EXAMPLES if e.lang == "toml"]
# The shipped configuration's ports (router.toml, config/run-local.sh): the HTTP API,
# the SMSC simulator's SMPP and control ports, the Web-URL provider simulator, Kannel's
# sendsms port, the SMPP server.
SHIPPED_PORTS = (8080, 2775, 8781, 8780, 13013, 2776)
PORT = re.compile(r"(?<=[:=\s])(" + "|".join(map(str, SHIPPED_PORTS)) + r")(?!\d)")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*\S.*-->\s*$")
STEP_TIMEOUT = 30.0
RETRY_FOR = 15.0


@dataclass
class Stack:
    """The shipped configuration running under config/run-local.sh in `home`."""

    home: Path
    ports: dict[int, int]
    env: dict[str, str] = field(default_factory=dict)

    def rewrite(self, text: str) -> str:
        """`text` with the shipped ports replaced by this stack's."""
        return PORT.sub(lambda m: str(self.ports[int(m[1])]), text)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert (ROOT / ".venv" / "bin" / "sms-router").exists(), (
        "the examples run .venv/bin/sms-router as `make run` does: build .venv with make"
    )
    home = tmp_path_factory.mktemp("shipped")
    ports = {port: free_port() for port in SHIPPED_PORTS}
    stack = Stack(home, ports)
    # The examples run in `home` as if it were the repository: ./router.toml, ./var,
    # ./.venv/bin/sms-router.
    (home / "router.toml").write_text(stack.rewrite((ROOT / "router.toml").read_text()))
    (home / ".venv").symlink_to(ROOT / ".venv")
    stack.env = {
        **os.environ,
        "SMSC_PORT": str(ports[2775]),
        "SMSC_HTTP_PORT": str(ports[8781]),
        "HTTP_SIM_PORT": str(ports[8780]),
        # A terminal's width, whatever runs the tests (a pipe has none).
        "COLUMNS": "120",
    }
    stack.env.pop("SMS_ROUTER_CONFIG", None)
    log = home / "run-local.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "config" / "run-local.sh"), str(home / "router.toml")],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=stack.env,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, f"http://127.0.0.1:{ports[8080]}/readyz", log)
        yield stack
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until GET /readyz answers 200: Redis answers and every profile has a bind ready."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # refused while starting; 503 (HTTPError) while binding
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"make run's stack did not get ready:\n{log.read_text()}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole process group (bash, simulators, daemon), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- promises


@dataclass
class Step:
    command: str
    expect: list[str] = field(default_factory=list)


def shell_steps(code: str) -> list[Step]:
    """Commands (with their ``\\`` continuation lines) and the ``# =>`` lines under each."""
    steps: list[Step] = []
    continuing = False
    for line in code.splitlines():
        stripped = line.strip()
        if continuing:
            steps[-1].command += "\n" + line
        elif stripped.startswith("# =>"):
            assert steps, f"a promise before any command: {line!r}"
            steps[-1].expect.append(stripped.removeprefix("# =>").strip())
        elif stripped and not stripped.startswith("#"):
            steps.append(Step(line))
        continuing = bool(stripped) and not stripped.startswith("#") and line.endswith("\\")
    return steps


def _wildcard(expected: str, whole_words: bool = False) -> re.Pattern[str]:
    parts = re.split(r"…|\.\.\.", expected)
    pattern = ".*".join(re.escape(part) for part in parts)
    if whole_words:  # `delivered` is not kept by `undelivered`
        pattern = r"(?<![\w-])" + pattern + r"(?![\w-])"
    return re.compile(pattern)


ANY_LIST = "<any list>"
MORE = "<more keys>"


def _json_promise(expected: str) -> Any:
    """A JSON promise as data: ``[...]`` is any list, ``...`` last in an object any
    further keys."""
    text = expected.replace("[...]", json.dumps(ANY_LIST))
    text = re.sub(r"\{\s*(…|\.\.\.)\s*\}", "{" + json.dumps(MORE) + ": true}", text)
    text = re.sub(r",\s*(…|\.\.\.)\s*\}", ", " + json.dumps(MORE) + ": true}", text)
    return json.loads(text)


def _json_matches(expected: Any, actual: Any) -> bool:
    if expected == ANY_LIST:
        return isinstance(actual, list)
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        wanted = {k: v for k, v in expected.items() if k != MORE}
        if MORE not in expected and set(wanted) != set(actual):
            return False
        return all(k in actual and _json_matches(v, actual[k]) for k, v in wanted.items())
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_json_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, str) and isinstance(actual, str):
        return _wildcard(expected).fullmatch(actual) is not None
    return bool(expected == actual)


def line_matches(expected: str, line: str) -> bool:
    """Does one output line keep the promise `expected`?"""
    if expected.startswith("{"):
        try:
            wanted = _json_promise(expected)
            got = json.loads(line)
        except ValueError:
            return False
        return _json_matches(wanted, got)
    return _wildcard(expected, whole_words=True).search(line) is not None


def promises_kept(expect: list[str], code: int, output: str) -> str | None:
    """None when the output and exit code keep every promise, else what is missing."""
    wanted_code = 0
    lines = output.splitlines()
    position = 0
    for expected in expect:
        exit_code = re.fullmatch(r"exit (\d+)", expected)
        if exit_code:
            wanted_code = int(exit_code[1])
            continue
        while position < len(lines) and not line_matches(expected, lines[position]):
            position += 1
        if position == len(lines):
            return f"no output line matches {expected!r}"
        position += 1
    if code != wanted_code:
        return f"exit code {code}, expected {wanted_code}"
    return None


READ_ONLY = re.compile(
    r"^\s*(\.venv/bin/)?sms-router\s+(status|log|health|numbers|check-config|"
    r"(dlq|optout|lists)\s+(list|show))\b"
)


def is_read_only(command: str) -> bool:
    """A step that may be repeated: it changes nothing."""
    if READ_ONLY.match(command):
        return True
    return command.lstrip().startswith("curl") and not re.search(
        r"\s(-d|--data\S*|-X\s*\w+|-F|--form)\b|\s-X", command
    )


# ---------------------------------------------------------------- runners


class Shell:
    """One bash session: variables and the folder carry over from step to step."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.buffer = b""

    def run(self, command: str) -> tuple[int, str]:
        """Run one step (its stdin empty); its exit code and output (stderr included)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        token = "@@" + secrets.token_hex(8)
        script = f"{{\n{command}\n}} </dev/null\nprintf '\\n{token} %s\\n' \"$?\"\n"
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + STEP_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while (end := self.buffer.find(f"\n{token} ".encode())) < 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"step took over {STEP_TIMEOUT} s: {command}")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"bash ended during: {command}")
                self.buffer += chunk
        newline = self.buffer.index(b"\n", end + 1)
        output = self.buffer[:end].decode(errors="replace")
        code = int(self.buffer[end + len(token) + 2 : newline])
        self.buffer = self.buffer[newline + 1 :]
        return code, output

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


def run_shell(example: Example, stack: Stack) -> None:
    shell = Shell(stack.home, stack.env)
    try:
        for step in shell_steps(stack.rewrite(example.code)):
            deadline = time.monotonic() + RETRY_FOR
            while True:
                code, output = shell.run(step.command)
                problem = promises_kept(step.expect, code, output)
                if problem is None:
                    break
                if not is_read_only(step.command) or time.monotonic() > deadline:
                    raise AssertionError(f"{example.where}: {problem}\n$ {step.command}\n{output}")
                time.sleep(0.3)
    finally:
        shell.close()


def run_python(example: Example, stack: Stack) -> None:
    script = stack.home / f"example_{example.name}.py"
    code = stack.rewrite(example.code)
    script.write_text(code)
    expect = [m[1].strip() for m in re.finditer(r"#\s*=>\s*(.+)$", code, re.M)]
    done = subprocess.run(
        [str(stack.home / ".venv" / "bin" / "python"), script.name],
        cwd=stack.home,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    problem = promises_kept(expect, done.returncode, output)
    assert problem is None, f"{example.where}: {problem}\n{output}"


# ---------------------------------------------------------------- the tests


def test_examples_are_found() -> None:
    """The README's tour and each API's example are marked, so they are run."""
    names = {e.name for e in EXAMPLES}
    assert {"tour", "http-api", "twilio-sdk", "client"} <= names, names
    assert len(names) == len(EXAMPLES), "example names must be unique"
    others = [e.where for e in EXAMPLES if e not in RUNNABLE and e not in TOML]
    assert not others, f"examples in a language the test cannot run: {others}"


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.name for e in RUNNABLE])
def test_example_runs(example: Example, stack: Stack) -> None:
    if example.lang in ("sh", "bash"):
        run_shell(example, stack)
    else:
        run_python(example, stack)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize("example", TOML, ids=[e.name for e in TOML])
def test_toml_example(example: Example, tmp_path: Path) -> None:
    """A TOML example parses; one marked `config` added to the shipped file passes
    check-config (its `env:` secrets given values)."""
    fragment = tomllib.loads(example.code)
    if "config" not in example.flags:
        return
    shipped = tomllib.loads((ROOT / "router.toml").read_text())
    merged = _deep_merge(shipped, fragment)
    env = {k: v for k, v in os.environ.items() if k != "SMS_ROUTER_CONFIG"}
    for name in re.findall(r"env:(\w+)", example.code):
        # An SMPP password holds 8 characters at most; API tokens need 16 at least.
        short = name.endswith("_SMPP_PW")
        env[name] = secrets.token_hex(4) if short else "example-secret-" + secrets.token_hex(8)
    for secret in re.findall(r"file:(var/[\w.-]+)", json.dumps(merged)):
        (tmp_path / secret).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / secret).write_text(secrets.token_urlsafe(32) + "\n")
    config = tmp_path / "router.toml"
    config.write_text(_toml(merged))
    done = subprocess.run(
        [sys.executable, "-m", "router", "check-config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{example.where}:\n{done.stdout}{done.stderr}"


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """A TOML document of nested tables (what the examples and router.toml hold)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        name = json.dumps(key)
        if isinstance(value, dict) and not (prefix.endswith("http") and key in ("form", "json")):
            tables.append((f"{prefix}.{name}" if prefix else name, value))
        else:
            lines.append(f"{name} = {_value(value)}")
    out = ([f"[{prefix}]"] if prefix else []) + lines
    for table_prefix, table in tables:
        out.append(_toml(table, table_prefix))
    return "\n".join(out) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)


def test_every_toml_and_json_block_parses() -> None:
    """Marked or not, a TOML or JSON block of the docs is valid TOML or JSON."""
    bad: list[str] = []
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").split("\n")
        for start, end, lang in fenced(lines):
            text = "\n".join(lines[start + 1 : end])
            try:
                if lang == "toml":
                    tomllib.loads(text)
                elif lang == "json":
                    json.loads(text)
            except ValueError as exc:
                bad.append(f"{path.relative_to(ROOT)}:{start + 1}: {exc}")
    assert not bad, "\n".join(bad)


def test_every_code_block_is_run_or_says_why() -> None:
    """A shell or Python block is an example (run above) or says why it is not run."""
    unmarked: list[str] = []
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").split("\n")
        for start, _end, lang in fenced(lines):
            if lang not in ("sh", "bash", "python", "js"):
                continue
            before = start - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            marker = lines[before] if before >= 0 else ""
            if not (marker.startswith("<!-- example:") or NOT_RUN.match(marker)):
                unmarked.append(f"{path.relative_to(ROOT)}:{start + 1}")
    assert not unmarked, f"blocks neither marked as examples nor 'not run: why': {unmarked}"


def test_links_point_at_files_and_headings() -> None:
    problems = [problem for path in markdown_files() for problem in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    """The check above can fail: a missing file and a missing heading are reported."""
    (tmp_path / "cli.md").write_text("# CLI\n\n## Exit codes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Probe `x`\n\n[a](nowhere.md) [b](cli.md#no-such-heading) [c](#probe-x)"
        " [d](cli.md#exit-codes) [e](https://example.com/x)\n"
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "no such file" in problems[0] and "no heading #no-such-heading" in problems[1]
    assert anchors(tmp_path / "cli.md") == {"cli", "exit-codes"}


def test_readme_is_a_front_door() -> None:
    """README.md opens with the two commands and stays short; the reference is in docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    opening = text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in opening] == [["make", "demo"], ["make", "test"]]


def test_promise_matching() -> None:
    """The promise syntax: JSON exact or partial, wildcards, exit codes, order."""
    assert line_matches('{"id":"a","status":"queued"}', '{"status": "queued", "id": "a"}')
    assert not line_matches('{"id":"a"}', '{"id": "a", "status": "queued"}')
    assert line_matches('{"status": "queued", ...}', '{"id": "a", "status": "queued"}')
    assert line_matches('{"a": [...], "b": null}', '{"a": [1, 2], "b": null}')
    assert line_matches('{"a": [{"r": "x…", ...}]}', '{"a": [{"r": "xyz", "s": 1}]}')
    assert not line_matches('{"a": [{"r": "x…"}]}', '{"a": [{"r": "xyz", "s": 1}]}')
    assert line_matches("SM… delivered", "SM0123abcd delivered")
    assert not line_matches("delivered", "status: undelivered")
    assert line_matches("delivered", "│ status │ delivered │")
    assert promises_kept(["exit 1"], 1, "") is None
    assert promises_kept([], 1, "") == "exit code 1, expected 0"
    assert promises_kept(["b", "a"], 0, "a\nb\n") == "no output line matches 'a'"
    assert is_read_only("curl -s -H 'X: y' http://x/v1/messages/a")
    assert not is_read_only("curl -s -d '{}' http://x/v1/messages")
    assert is_read_only(".venv/bin/sms-router status abc")
    assert not is_read_only(".venv/bin/sms-router send --to +1")
