"""The console's Numbers page (``/console/numbers``) and the configuration changes an
admin makes from it.

The page lists every sender of every profile: kind, features, campaign, whether it
may send and why not (`router.summary.numbers_with_health`, what ``sms-router numbers``
shows), whether it may send an MMS, its delivery ratio over the profile's
``health_window`` and today's count of its campaign against the daily cap; for an
admin, each profile's editable settings (`PROFILE_SETTINGS`) with their values. It
reads Redis and the configuration only, so API worker processes serve it too.

A change (move a sender to another profile, switch SMS on or off on it, set or remove
a profile setting) takes two steps, both admin-only and CSRF-checked:
``POST /console/numbers/preview`` plans it (router/console/config_edit.py) and shows
the diff and the problems, with a confirmation form carrying the digest of the file
the diff was made from; ``POST /console/numbers/apply`` plans it again, writes it only
when the file still has that digest and the new configuration has no problems, then
asks the daemon to reload and shows the verdict. A refused change changes nothing.
Both need the daemon's process (the file it was started from, its reload): they are
`in_daemon`, so API worker processes pass them on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from aiohttp import web
from redis.asyncio import Redis

from router.api.common import CONTEXT, ConfigFile
from router.api.forward import in_daemon
from router.config import Settings
from router.console.auth import SESSION, needs
from router.console.config_edit import (
    PROFILE_SETTINGS,
    Change,
    ConfigEditError,
    MoveSender,
    Outcome,
    Plan,
    SetProfileSetting,
    SetSmsEnabled,
    apply,
    mask_secrets,
    plan,
    setting_kind,
)
from router.console.render import page
from router.summary import numbers_with_health

__all__ = [
    "ProfileNumbers",
    "Setting",
    "add_routes",
    "change_of",
    "read_numbers",
]

log = structlog.get_logger("router.console")

ACTIONS: Final = ("move", "sms", "setting")


@dataclass(frozen=True)
class Setting:
    """One editable setting of a profile as the page shows it."""

    key: str
    kind: str  # config_edit's form kind: bool, int, float, str, list
    value: str  # the current value as text ("" for none), a URL's password masked
    given: bool  # set in the file (else the default)


@dataclass
class ProfileNumbers:
    """One profile's senders (`numbers_with_health`) and its editable settings."""

    name: str
    is_global: bool
    health_window: float
    rows: list[dict[str, Any]]
    settings: list[Setting] = field(default_factory=list)


def _form_text(value: Any) -> str:
    """A setting's value as the form's text (what config_edit reads back)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    # A callback URL may carry a password in its user info: never shown.
    return mask_secrets(str(value))


async def read_numbers(redis: Redis, settings: Settings) -> list[ProfileNumbers]:
    """Every profile's senders and editable settings (raises the Redis errors when
    Redis does not answer)."""
    out = []
    for name in sorted(settings.profiles):
        own = settings.profiles[name]
        rows = await numbers_with_health(redis, settings, name, sticky=False)
        given = own.model_fields_set
        values = [
            Setting(key, setting_kind(key), _form_text(getattr(own, key)), key in given)
            for key in PROFILE_SETTINGS
        ]
        out.append(ProfileNumbers(name, own.global_, own.health_window, rows, values))
    return out


def change_of(form: Mapping[str, Any]) -> Change:
    """The change a form asks for (field ``action``: move, sms or setting), or
    `ConfigEditError` naming the field that is missing or wrong."""

    def text(name: str) -> str:
        value = form.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigEditError(name, "missing")
        return value.strip()

    action = form.get("action")
    if action == "move":
        return MoveSender(text("sender"), text("profile"))
    if action == "sms":
        enabled = text("enabled")
        if enabled not in ("true", "false"):
            raise ConfigEditError("enabled", f"{enabled!r} is not true or false")
        return SetSmsEnabled(text("sender"), enabled == "true")
    if action == "setting":
        key = text("key")
        if key not in PROFILE_SETTINGS:
            raise ConfigEditError("key", f"{key!r} is not a setting the console may change")
        if form.get("remove"):
            return SetProfileSetting(text("profile"), key, None)
        value = form.get("value")
        return SetProfileSetting(text("profile"), key, value if isinstance(value, str) else "")
    raise ConfigEditError("action", f"{action!r} is not one of {', '.join(ACTIONS)}")


def _hidden(change: Change) -> dict[str, str]:
    """The form fields that ask for `change` again (the confirmation form's)."""
    if isinstance(change, MoveSender):
        return {"action": "move", "sender": change.sender, "profile": change.profile}
    if isinstance(change, SetSmsEnabled):
        return {
            "action": "sms",
            "sender": change.sender,
            "enabled": "true" if change.enabled else "false",
        }
    fields = {"action": "setting", "profile": change.profile, "key": change.key}
    if change.value is None:
        fields["remove"] = "1"
    else:
        fields["value"] = change.value
    return fields


def _config_file(request: web.Request) -> ConfigFile | None:
    """The daemon's file and reload (None: not started from a file)."""
    return request.app[CONTEXT].config_file


def _refused(request: web.Request, status: int, title: str, problems: list[str]) -> web.Response:
    return page(
        "numbers_change.html",
        status=status,
        session=request[SESSION],
        active="numbers",
        title=title,
        plan=None,
        fields={},
        problems=problems,
        notice=None,
    )


async def _planned(request: web.Request) -> tuple[Plan, Mapping[str, Any]] | web.Response:
    """The change the form asks for, planned on the daemon's file; or the page that
    says why it cannot be (no file, a wrong field, a change that cannot be made)."""
    where = _config_file(request)
    if where is None or where.path is None:
        return _refused(
            request,
            409,
            "Changes unavailable",
            ["The daemon was not started from a configuration file: there is nothing to edit."],
        )
    form = await request.post()
    try:
        change = change_of(form)
        # Reads and validates the file: off the event loop.
        return await asyncio.to_thread(plan, where.path, change), form
    except ConfigEditError as exc:
        return _refused(request, 400, "Change refused", [str(exc), *exc.problems])


def _preview_page(
    request: web.Request, found: Plan, notice: str | None = None, status: int | None = None
) -> web.Response:
    return page(
        "numbers_change.html",
        status=status or (200 if found.ok else 422),
        session=request[SESSION],
        active="numbers",
        title="Review the change" if found.ok else "Change refused",
        plan=found,
        fields=_hidden(found.change),
        problems=found.problems,
        notice=notice,
    )


@needs("read")
async def numbers(request: web.Request) -> web.StreamResponse:
    """``GET /console/numbers``: every sender of every profile and, for an admin, the
    forms that change them."""
    context = request.app[CONTEXT]
    return await _numbers_page(request, context.settings, None)


async def _numbers_page(
    request: web.Request, settings: Settings, outcome: Outcome | None
) -> web.Response:
    context = request.app[CONTEXT]
    found = await read_numbers(context.redis, settings)
    return page(
        "numbers.html",
        session=request[SESSION],
        active="numbers",
        profiles=found,
        names=[p.name for p in found],
        outcome=outcome,
    )


@in_daemon  # the file the daemon was started from
@needs("admin")
async def preview(request: web.Request) -> web.StreamResponse:
    """``POST /console/numbers/preview``: the change's diff and problems, and a form to
    confirm it (nothing is written)."""
    found = await _planned(request)
    if isinstance(found, web.Response):
        return found
    return _preview_page(request, found[0])


@in_daemon  # writes the daemon's file and reloads it
@needs("admin")
async def apply_change(request: web.Request) -> web.StreamResponse:
    """``POST /console/numbers/apply``: the change planned again and written when the
    file is the one the diff was made from and the result has no problems; then the
    daemon reloads. The Numbers page with the verdict, or the refusal."""
    found = await _planned(request)
    if isinstance(found, web.Response):
        return found
    current, form = found
    seen = form.get("digest")
    if not isinstance(seen, str) or not seen:
        return _refused(request, 400, "Change refused", ["digest: missing; preview first"])
    where = _config_file(request)
    assert where is not None  # _planned checked it
    if seen != current.digest:
        # Someone changed the file since the admin saw the diff: show the new one.
        return _preview_page(
            request,
            current,
            notice="The file changed since the diff was shown; nothing was written. "
            "This is the change against the file as it is now.",
            status=409,
        )
    if not current.ok:
        return _preview_page(request, current)
    session = request[SESSION]
    outcome = await apply(current, where.reload, seen=seen)
    log.info(
        "console: configuration changed" if outcome.applied else "console: change refused",
        caller=session.name,
        change=current.summary,
        applied=outcome.applied,
        reloaded=outcome.reloaded,
    )
    if not outcome.applied:
        return _refused(request, 409, "Change refused", outcome.problems)
    # After the reload the context holds the daemon's new settings.
    return await _numbers_page(request, request.app[CONTEXT].settings, outcome)


def add_routes(app: web.Application) -> None:
    """Register the Numbers page and its changes."""
    app.router.add_get("/console/numbers", numbers)
    app.router.add_post("/console/numbers/preview", preview)
    app.router.add_post("/console/numbers/apply", apply_change)
