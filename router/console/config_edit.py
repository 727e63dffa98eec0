"""Changes the web console makes to the configuration file: planned, checked, written.

An admin may move a sender to another profile, switch SMS on or off on a sender, and
set or remove one of a few safe settings of a profile (`PROFILE_SETTINGS`). Each change
is a value (`MoveSender`, `SetSmsEnabled`, `SetProfileSetting`); `plan` applies it to
the file's text with tomlkit, so comments, order and spacing outside the changed lines
stay byte for byte, and validates the result with the router's own loader (the
environment and folder the daemon resolves ``env:`` / ``file:`` secrets from). A
`Plan` holds the new text, a unified diff and the problems; `apply` writes it only
when it has none and the file still holds the text it was planned from, atomically
(temporary file in the same folder, fsync, the original's mode and owner, rename,
fsync of the folder), then asks the daemon to reload.

Secrets: the file's text carries ``env:NAME`` / ``file:PATH`` references and the edit
works on that text, so a resolved secret never enters it; diffs mask literal secret
values (passwords, tokens, URL passwords) the file may hold; problems come from the
loader, which never names a secret.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import math
import os
import re
import tempfile
import threading
import tomllib
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import tomlkit
from tomlkit.container import Container, OutOfOrderTableProxy
from tomlkit.items import AoT, Array, InlineTable, Item, KeyType, SingleKey, Table, Whitespace
from tomlkit.items import Comment as TomlComment

from router.config import ConfigError, Profile, parse_settings
from router.errors import RouterError
from router.numbers import normalise_sender

__all__ = [
    "MASK",
    "PROFILE_SETTINGS",
    "Change",
    "ConfigEditError",
    "MoveSender",
    "Outcome",
    "Plan",
    "SetProfileSetting",
    "SetSmsEnabled",
    "apply",
    "edit_text",
    "mask_secrets",
    "plan",
    "setting_kind",
    "unified_diff",
    "validate_text",
    "write_plan",
]

# The profile keys the console may set: scalars (and lists of words) whose new value a
# reload applies in place. Not here: numbers (MoveSender does that), global, protocol and
# the connection sections (they need more than one key at a time), webhook_secret (a
# secret), keyword lists and allow/block lists (better edited in the file).
PROFILE_SETTINGS: tuple[str, ...] = (
    "sender",
    "sender_preference",
    "default_use_case",
    "over_cap",
    "shorten",
    "mms_fallback",
    "mms_max_bytes",
    "tps",
    "window",
    "max_segments",
    "store_text",
    "smart_encoding",
    "status_callback_url",
    "callback_url",
    "skip_unhealthy",
    "health_threshold",
    "health_min_sample",
    "health_window",
    "sticky_ttl",
    "daily_spend_limit",
    "help_text",
    "stop_text",
    "start_text",
)

Kind = Literal["bool", "int", "float", "str", "list"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Values never shown in a diff: keys that hold secrets (unless an env:/file: reference)
# and the password of a URL's user info.
_SECRET_VALUE = re.compile(
    r"""(?P<key>\b(?:password|secret|token|auth_token|api_token|smpp_password|"""
    r"""redis_password|webhook_secret|authorization)["']?\s*=\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*')""",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"']*:)[^@/\s\"']+@")
MASK = "**********"

# One write at a time per process: the check that the file is unchanged and the
# rename belong together.
_write_lock = threading.Lock()


class ConfigEditError(RouterError):
    """A change the console cannot make: `field` names what is wrong (a change's
    argument, ``profiles.P.key``, or ``file``); `problems` the loader's, if any."""

    def __init__(self, field: str, message: str, problems: list[str] | None = None) -> None:
        self.field = field
        self.message = message
        self.problems = list(problems or [])
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class MoveSender:
    """Move `sender` (number, short code or alphanumeric ID) to profile `profile`."""

    sender: str
    profile: str


@dataclass(frozen=True)
class SetSmsEnabled:
    """``[numbers."<sender>"] sms_enabled = <enabled>``."""

    sender: str
    enabled: bool


@dataclass(frozen=True)
class SetProfileSetting:
    """Set ``[profiles.<profile>] <key>`` from a form's text (converted by the key's
    type), or remove it (back to its default) when `value` is None."""

    profile: str
    key: str
    value: str | None


Change = MoveSender | SetSmsEnabled | SetProfileSetting


@dataclass(frozen=True)
class Plan:
    """A change worked out against one version of the file, not yet written."""

    path: Path
    change: Change
    summary: str  # what the change does, in a sentence
    old_text: str
    new_text: str
    digest: str  # sha256 of the file's bytes the change was planned from
    diff: str  # unified diff old -> new, secrets masked
    problems: list[str]  # the new text's, from the router's loader; empty: may be applied
    problems_before: list[str] = field(default_factory=list)  # the file's own, if any

    @property
    def ok(self) -> bool:
        """Whether the change may be applied (the new configuration has no problems)."""
        return not self.problems


@dataclass(frozen=True)
class Outcome:
    """What `apply` did."""

    plan: Plan
    applied: bool  # the file now holds the plan's new text
    # The daemon's verdict: True reloaded, False refused (the reason is in its published
    # verdict, `sms-router reload`) or failed, None: no reload asked (or not written).
    reloaded: bool | None
    problems: list[str] = field(default_factory=list)  # why it was not applied
    reload_error: str | None = None  # the reload raised this (the file is written)

    @property
    def message(self) -> str:
        """One line for the admin."""
        if not self.applied:
            return "not applied: " + "; ".join(self.problems)
        if self.reloaded is None:
            return f"applied to {self.plan.path}: {self.plan.summary} (not reloaded)"
        if self.reloaded:
            return f"applied and reloaded: {self.plan.summary}"
        why = f" ({self.reload_error})" if self.reload_error else " (see its reload verdict)"
        return f"written to {self.plan.path}, but the daemon did not reload it{why}"


# ---------------------------------------------------------------- planning


def plan(
    path: str | os.PathLike[str], change: Change, *, env: Mapping[str, str] | None = None
) -> Plan:
    """Work out `change` on the file at `path`: the new text, its diff and its problems
    (validated with the environment `env`, default the process's). Writes nothing;
    raises `ConfigEditError` for a change that cannot be made (unknown sender, profile
    or key, a value of the wrong type, nothing to change)."""
    file = Path(path)
    data = _read(file)
    try:
        old = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigEditError("file", f"{file} is not UTF-8 text ({exc.reason})") from None
    new, summary = edit_text(old, change)
    base = file.resolve().parent
    return Plan(
        path=file,
        change=change,
        summary=summary,
        old_text=old,
        new_text=new,
        digest=hashlib.sha256(data).hexdigest(),
        diff=unified_diff(old, new, str(file)),
        problems=validate_text(new, env=env, base_dir=base),
        problems_before=validate_text(old, env=env, base_dir=base),
    )


def edit_text(text: str, change: Change) -> tuple[str, str]:
    """`change` applied to a configuration's TOML text: (new text, summary). Only the
    lines the change touches differ."""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as exc:
        raise ConfigEditError("file", f"not valid TOML: {exc}") from None
    if isinstance(change, MoveSender):
        summary = _move(doc, change)
    elif isinstance(change, SetSmsEnabled):
        summary = _sms_enabled(doc, change)
    else:
        summary = _set_setting(doc, change)
    new = doc.as_string()
    if "\r\n" in text and not re.search(r"(?<!\r)\n", text):
        new = re.sub(r"(?<!\r)\n", "\r\n", new)  # tomlkit writes new lines with \n
    return new, summary


def validate_text(
    text: str,
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The problems the router's loader finds in a configuration's text (none: valid)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"not valid TOML: {exc}"]
    try:
        parse_settings(data, env=env, base_dir=base_dir)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def setting_kind(key: str) -> Kind:
    """How a form's text for profile key `key` is read (`PROFILE_SETTINGS` only)."""
    if key not in PROFILE_SETTINGS:
        raise ConfigEditError(
            "key", f"{key!r} cannot be changed from the console (one of: "
            f"{', '.join(PROFILE_SETTINGS)})"
        )  # fmt: skip
    return _kind(Profile.model_fields[key].annotation)


def unified_diff(old: str, new: str, name: str, context: int = 2) -> str:
    """A unified diff of two texts, literal secrets masked."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=name,
        tofile=f"{name} (new)",
        n=context,
    )
    # Shown as lines: a CRLF file's \r (and a missing last newline) would only be noise.
    return "".join(mask_secrets(line.rstrip("\r\n") + "\n") for line in lines)


def mask_secrets(line: str) -> str:
    """`line` with the values of secret keys (other than ``env:`` / ``file:``
    references) and URL passwords replaced by ``**********``."""

    def value(match: re.Match[str]) -> str:
        quoted = match["value"]
        if quoted[1:].startswith(("env:", "file:")):
            return match[0]
        return f'{match["key"]}"{MASK}"'

    line = _SECRET_VALUE.sub(value, line)
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", line)


# ---------------------------------------------------------------- writing


def write_plan(plan: Plan, *, seen: str | None = None) -> None:
    """Write the plan's text in place of the file, atomically; raises `ConfigEditError`
    (and writes nothing) when the plan has problems or the file changed since it was
    planned, or since the admin was shown the change: `seen` is the `Plan.digest` of
    that earlier plan (kept in the confirmation form; the change planned again on
    confirmation must start from the same file)."""
    if seen is not None and seen != plan.digest:
        raise ConfigEditError(
            "file",
            f"{plan.path} changed since the change was shown (edited by someone else?); "
            "nothing written: look at the new diff and confirm again",
        )
    if plan.problems:
        count = len(plan.problems)
        raise ConfigEditError(
            "configuration",
            f"the change leaves {count} problem{'s' if count != 1 else ''}; nothing written",
            plan.problems,
        )
    # The file itself, not a symlink to it: renaming over a link would replace the link.
    target = Path(os.path.realpath(plan.path))
    with _write_lock:
        data = _read(plan.path)
        if hashlib.sha256(data).hexdigest() != plan.digest:
            raise ConfigEditError(
                "file",
                f"{plan.path} changed since this change was planned (edited by someone "
                "else?); nothing written: look at the new file and make the change again",
            )
        _atomic_write(target, plan.new_text.encode("utf-8"))


async def apply(
    plan: Plan,
    reload: Callable[[], Awaitable[bool]] | None = None,
    *,
    seen: str | None = None,
) -> Outcome:
    """Write the plan (`write_plan`, `seen` as there), then await `reload` (the
    daemon's, which returns whether it applied the new file). A refused write returns
    ``applied=False`` and its problems, and changes nothing."""
    try:
        await asyncio.to_thread(write_plan, plan, seen=seen)
    except ConfigEditError as exc:
        return Outcome(plan, applied=False, reloaded=None, problems=exc.problems or [str(exc)])
    if reload is None:
        return Outcome(plan, applied=True, reloaded=None)
    try:
        reloaded = await reload()
    except Exception as exc:  # the file is written: say so rather than lose that
        return Outcome(
            plan, applied=True, reloaded=False, reload_error=f"{type(exc).__name__}: {exc}"
        )
    return Outcome(plan, applied=True, reloaded=bool(reloaded))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigEditError("file", f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigEditError("file", f"{path}: cannot read ({exc.strerror})") from None


def _atomic_write(target: Path, data: bytes) -> None:
    """Replace `target` by a file holding `data`: a reader sees the old file or the new
    one, never a part, and a crash leaves one of the two."""
    try:
        status = target.stat()
    except OSError as exc:
        raise ConfigEditError("file", f"{target}: cannot read ({exc.strerror})") from None
    folder = target.parent
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigEditError(
            "file", f"cannot write in {folder} ({exc.strerror}); nothing written"
        ) from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), status.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(out.fileno(), status.st_uid, status.st_gid)
            os.fsync(out.fileno())
        os.replace(temp, target)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise ConfigEditError(
            "file", f"cannot write {target} ({exc.strerror}); nothing written"
        ) from None
    # The rename itself is durable only once the folder is.
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------- the changes


def _move(doc: tomlkit.TOMLDocument, change: MoveSender) -> str:
    sender = _sender(change.sender)
    profiles = _profiles(doc)
    if change.profile not in profiles:
        raise ConfigEditError("profile", f"unknown profile {change.profile!r}")
    owner = _owner(profiles, sender)
    if owner is None:
        raise ConfigEditError("sender", f"{sender} is in no profile's numbers")
    if owner == change.profile:
        raise ConfigEditError("profile", f"{sender} already belongs to profile {owner!r}")
    old = profiles[owner]["numbers"]
    for index in reversed(range(len(old))):
        if _same_sender(old[index], sender):
            del old[index]
    new = profiles[change.profile]
    numbers = new.get("numbers")
    if isinstance(numbers, Array):
        numbers.append(sender)
    else:  # a profile without numbers (the loader says so) gets this one
        _set_key(new, "numbers", tomlkit.item([sender]))
    return f"move {sender} from profile {owner} to profile {change.profile}"


def _sms_enabled(doc: tomlkit.TOMLDocument, change: SetSmsEnabled) -> str:
    sender = _sender(change.sender)
    if _owner(_profiles(doc), sender) is None:
        raise ConfigEditError("sender", f"{sender} is in no profile's numbers")
    word = "enable" if change.enabled else "disable"
    numbers = doc.get("numbers")
    entry = None
    if isinstance(numbers, Table | InlineTable | OutOfOrderTableProxy):
        entry = next((numbers[k] for k in list(numbers) if _same_sender(k, sender)), None)
    if entry is not None:
        if not isinstance(entry, Table | InlineTable | OutOfOrderTableProxy):
            raise ConfigEditError("sender", f'[numbers."{sender}"] is not a table')
        if bool(entry.get("sms_enabled", True)) == change.enabled:
            raise ConfigEditError(
                "enabled", f"SMS is already {word}d on {sender}; nothing to change"
            )
        _set_key(entry, "sms_enabled", change.enabled)
        return f"{word} SMS on {sender}"
    if change.enabled:
        raise ConfigEditError("enabled", f"SMS is already enabled on {sender}; nothing to change")
    _add_number_table(doc, numbers, sender)
    return f"{word} SMS on {sender}"


def _set_setting(doc: tomlkit.TOMLDocument, change: SetProfileSetting) -> str:
    profiles = _profiles(doc)
    if change.profile not in profiles:
        raise ConfigEditError("profile", f"unknown profile {change.profile!r}")
    kind = setting_kind(change.key)
    where = f"profiles.{_quoted(change.profile)}.{change.key}"
    table = profiles[change.profile]
    if change.value is None:
        if change.key not in table:
            raise ConfigEditError(where, "not set (already the default); nothing to change")
        del table[change.key]
        return f"remove {where} (back to its default)"
    value = _convert(where, kind, change.value)
    if change.key in table and table[change.key] == value:
        raise ConfigEditError(where, "already has that value; nothing to change")
    if kind == "list":
        value = tomlkit.item(value)
    _set_key(table, change.key, value)
    return f"set {where} = {_render(value)}"


# ---------------------------------------------------------------- helpers


def _sender(text: str) -> str:
    try:
        return normalise_sender(text.strip())
    except ValueError as exc:
        raise ConfigEditError("sender", str(exc)) from None


def _same_sender(value: Any, sender: str) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return normalise_sender(value) == sender
    except ValueError:
        return False


def _profiles(doc: tomlkit.TOMLDocument) -> dict[str, Any]:
    """Profile name -> its table (a tomlkit table or proxy, edited in place)."""
    profiles = doc.get("profiles")
    if not isinstance(profiles, Table | InlineTable | OutOfOrderTableProxy):
        return {}
    out: dict[str, Any] = {}
    for name in list(profiles):
        table = profiles[name]
        if isinstance(table, Table | InlineTable | OutOfOrderTableProxy):
            out[str(name)] = table
    return out


def _owner(profiles: Mapping[str, Any], sender: str) -> str | None:
    for name, table in profiles.items():
        numbers = table.get("numbers")
        if isinstance(numbers, list) and any(_same_sender(n, sender) for n in numbers):
            return name
    return None


def _kind(annotation: Any) -> Kind:
    """The form kind of a Profile field's type: Optional and Annotated unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        [inner] = [a for a in get_args(annotation) if a is not type(None)]
        return _kind(inner)
    if origin is list:
        return "list"
    if origin is Literal or annotation is str:
        return "str"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    raise TypeError(f"no form kind for {annotation!r}")  # a new key in PROFILE_SETTINGS


def _convert(where: str, kind: Kind, text: str) -> Any:
    """A form's text as the key's type; ranges and choices are the loader's to check."""
    text = text.strip()
    if kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    if not text:
        raise ConfigEditError(where, "empty; remove the key to go back to its default")
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigEditError(where, f"{text!r} is not true or false")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigEditError(where, f"{text!r} is not a whole number") from None
    if kind == "float":
        try:
            return int(text)  # written as the operator typed it: 5, not 5.0
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ConfigEditError(where, f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigEditError(where, f"{text!r} is not a finite number")
        return number
    return text


def _render(value: Any) -> str:
    return str(tomlkit.item(value).as_string())


def _quoted(name: str) -> str:
    return name if _BARE_KEY.match(name) else f'"{name}"'


def _set_key(node: Any, key: str | SingleKey, value: Any) -> None:
    """Set `key` of a table in place: an existing key keeps its line and comment; a new
    one goes after the table's last key (before the blank lines and comments that lead
    to the next table, which tomlkit keeps at the end of this one)."""
    if key in node:
        node[key] = value
        return
    if isinstance(node, InlineTable):
        # `{ a = 1 }`: the closing space is an item of its own; the new key goes before it.
        body = node.value.body
        trailer: list[tuple[Any, Item]] = []
        while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
            if "," in body[-1][1].s:
                break
            trailer.insert(0, body.pop())
        item = tomlkit.item(value)
        if any(k is not None for k, _v in body):
            item.trivia.indent = " "  # `a = 1, b = 2`
        node.append(key, item)
        body.extend(trailer)
        return
    table = node
    if isinstance(node, OutOfOrderTableProxy):
        # The part of a table split around other tables that holds its plain keys.
        parts = node._tables
        table = next((t for t in parts if any(_is_line(k, v) for k, v in t.value.body)), parts[0])
    assert isinstance(table, Table)
    container: Container = table.value
    body = container.body
    last = max(
        (i for i, (k, v) in enumerate(body) if _is_line(k, v)),
        default=-1,
    )
    item = tomlkit.item(value)
    if last >= 0:
        item.trivia.indent = body[last][1].trivia.indent  # the table's own indentation
    if last + 1 < len(body):
        container._insert_at(last + 1, key, item)
    else:
        container.append(key, item)


def _is_line(key: Any, value: Any) -> bool:
    """Whether a table's body entry is a `key = value` line (dotted keys included), not
    a `[sub.table]` of its own."""
    return key is not None and (key.is_dotted() or not _is_table(value))


def _is_table(value: Any) -> bool:
    return isinstance(value, Table | AoT)  # an InlineTable is neither: it sits on a key's line


def _add_number_table(doc: tomlkit.TOMLDocument, numbers: Any, sender: str) -> None:
    """``sms_enabled = false`` for a sender with no ``[numbers]`` entry, written the way
    the file writes the others: an inline table in a ``[numbers]`` table that holds
    them so, else a ``[numbers."<sender>"]`` table after the last one."""
    key = SingleKey(sender, t=KeyType.Basic)
    if numbers is None:
        table = tomlkit.table()
        table.add("sms_enabled", False)
        super_table = tomlkit.table(is_super_table=True)
        super_table.append(key, table)
        doc.append("numbers", super_table)
        return
    if isinstance(numbers, InlineTable) or _holds_inline(numbers):
        # Written as the docs write inline tables: `{ sms_enabled = false }`.
        inline = tomlkit.parse("n = { sms_enabled = false }\n")["n"]
        _set_key(numbers, key, inline)
        return
    # `[numbers."<sender>"]` tables, perhaps in several runs between other tables: the
    # new one goes after the last.
    host = numbers._tables[-1] if isinstance(numbers, OutOfOrderTableProxy) else numbers
    tables = [v for k, v in host.value.body if k is not None and isinstance(v, Table)]
    table = tomlkit.table()
    table.add("sms_enabled", False)
    if tables:
        # The blank lines and comments after the last entry lead to what follows the
        # [numbers] tables: they move below the new one.
        last_body = tables[-1].value.body
        trailer: list[tuple[Any, Item]] = []
        while (
            last_body
            and last_body[-1][0] is None
            and isinstance(last_body[-1][1], Whitespace | TomlComment)
        ):
            trailer.insert(0, last_body.pop())
        if len(tables) > 1 and _ends_blank(tables[-2]):
            last_body.append((None, Whitespace("\n")))  # the file spaces its entries
        for _none, item in trailer:
            table.value.body.append((None, item))
    host.append(key, table)
    # tomlkit starts an added table with a blank line; the lines above already space it.
    table.trivia.indent = ""


def _holds_inline(numbers: Any) -> bool:
    """Whether a ``[numbers]`` table writes its entries on lines of its own (inline
    tables or dotted keys) rather than as ``[numbers."<sender>"]`` tables."""
    parts = numbers._tables if isinstance(numbers, OutOfOrderTableProxy) else [numbers]
    return any(_is_line(k, v) for part in parts for k, v in part.value.body)


def _ends_blank(table: Table) -> bool:
    body = table.value.body
    return bool(body) and isinstance(body[-1][1], Whitespace) and "\n" in body[-1][1].s
