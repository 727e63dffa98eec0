"""Kannel's sendsms: an application written for Kannel 1.4.5 sends through the router
by changing only the host (and port) it calls.

``/cgi-bin/sendsms`` is served on the ``[api]`` listener, and alone on ``[sendsms]
listen`` when set (`build_sendsms_app`: any other path there is Kannel's ``404
Unknown request.``). As Kannel's smsbox decides (gw/smsbox.c ``sendsms_thread``): a
request without a body reads its CGI variables from the query string, whatever its
method; one with a body is Kannel's POST: ``text/plain`` or
``application/octet-stream`` with the ``X-Kannel-*`` headers and the text as the body,
or ``text/xml`` (Kannel's ``<message><submit>`` document). A form
(``application/x-www-form-urlencoded``) is read like the query string; Kannel itself
answers it ``Invalid content-type``, so nothing written for Kannel depends on that.

Authentication: ``username`` (or ``user``) is an account's name (``[accounts.NAME]``)
and ``password`` (or ``pass``) its `api_token`; the account needs the ``send`` scope.
``to`` holds one or more receivers separated by spaces (in a URL, ``+`` or ``%20``):
one job per receiver (a receiver given twice is sent once, as Kannel does), each
admitted by the account (`router.policy.accounts.admit`), checked as every door checks
(`router.client.Client`: a job its profile would refuse is refused now), taken from
the account's rate and daily quota (`router.store.limits`), and enqueued durably
before the answer. Numbers: ``+`` and a country code, or ``00`` and one, or the
international digits alone (``447911123456``); a number Kannel's default
``sendsms-chars`` refuses (anything but digits, ``+`` and ``-``) is left out as Kannel
leaves it out.

Kannel's variables and what they become (docs/sendsms.md):

- ``from``: the sender (``00``/digits-only numbers as for ``to``; a short code or an
  alphanumeric ID as given); none: the profile's sender strategy picks one.
- ``smsc``: Kannel's smsc-id names a profile here (a profile's own connector has its
  name); a shared ``[connectors]`` entry or anything else is ``403 Not routable. Do
  not try again.``, as Kannel answers an smsc-id no SMSC takes.
- ``text``, ``charset``, ``coding``: the text's bytes are decoded as Kannel reads them
  (coding 0: ``charset``, default UTF-8; coding 2: ``charset``, default UTF-16BE); the
  router then picks GSM 7-bit when the text fits it and UCS-2 otherwise. Coding 1
  (8-bit binary data) cannot be a job: refused.
- ``udh``: checked as Kannel checks it, then refused (a job is a whole text; the
  router splits long messages itself).
- ``validity`` / ``deferred`` (minutes): the job's ``expires_at`` / ``send_at``.
- ``dlr-mask`` + ``dlr-url``: the status changes the mask asks for are fetched from the
  dlr-url with Kannel's escape codes (`router.engine.callbacks`); the codes known at
  submission (``%p %q %P %Q %I %n %o %B %D %R``) are filled in here, the rest when the
  change happens.
- ``priority``, ``mclass``, ``alt-dcs``, ``rpi``, ``binfo``, ``meta-data``,
  ``account``: checked as Kannel checks them, then not used (the message is sent as a
  normal SMS). ``pid`` (other than 0), ``mwi`` and ``compress=1`` change what a phone
  does with the message: refused rather than sent otherwise.

Answers are Kannel's: ``202 0: Accepted for delivery`` (``3: Queued for later
delivery`` while the profile cannot send: no bind up), Kannel's error texts with its
status codes (400 a field, 403 authorization or routing, 503 a temporary failure), as
``text/html`` with Kannel's no-cache headers. What Kannel has no answer for has one in
its style: ``429 Temporal failure, try again later. (<why>)`` with ``Retry-After`` when
the account is over its rate or quota. The job ids are in the ``X-Message-Ids``
header, space-separated, one per receiver sent.
"""

from __future__ import annotations

import codecs
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus
from xml.etree import ElementTree

import structlog
from aiohttp import web
from multidict import CIMultiDictProxy

from router.api.common import CONTEXT, ApiContext
from router.client import OverLimit
from router.engine.callbacks import fill_escapes, kannel_encode, kannel_plus, kannel_url
from router.errors import RouterError
from router.policy.accounts import PROFILE_NOT_ALLOWED, AccountError, Caller, by_password
from router.policy.jobs import Job, JobError
from router.store.outages import REDIS_ERRORS

__all__ = ["PATH", "add_routes", "build_sendsms_app"]

log = structlog.get_logger("router.api_sendsms")

PATH: Final = "/cgi-bin/sendsms"
UNDEFINED: Final = -1  # Kannel's SMS_PARAM_UNDEFINED: a variable not given
DC_7BIT, DC_8BIT, DC_UCS2 = 0, 1, 2
MAX_UDH = 140  # MAX_SMS_OCTETS
ACCOUNT_MAX_LEN = 64
NUMBER_CHARS = frozenset("0123456789+-")  # Kannel's default sendsms-chars, less the space
# Kannel's replies carry these headers (smsbox.c main: sendsms_reply_hdrs).
HEADERS: Final = {"Content-Type": "text/html", "Pragma": "no-cache", "Cache-Control": "no-cache"}

ACCEPTED = "0: Accepted for delivery"
QUEUED = "3: Queued for later delivery"
AUTH_FAILED = "Authorization failed for sendsms"
NOT_ROUTABLE = "Not routable. Do not try again."
TEMPORARY = "Temporal failure, try again later."

# sscanf("%d"): blanks, a sign, digits; anything else leaves the variable undefined.
_NUMBER = re.compile(r"\s*([+-]?\d{1,18})")


class Answer(RouterError):
    """Kannel's answer to a request: an HTTP status and its text."""

    def __init__(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.Response(
            body=self.text.encode(), status=self.status, headers={**HEADERS, **self.headers}
        )


def _rejected(text: str) -> Answer:
    """A field Kannel refuses: 400 with its text."""
    return Answer(400, text)


@dataclass
class Variables:
    """A sendsms request's variables, as Kannel reads them (numbers: `UNDEFINED` when
    not given or not a number)."""

    username: str | None = None
    password: str | None = None
    sender: str | None = None  # from
    to: str | None = None
    tolist: list[str] | None = None  # XML: one <da><number> each
    text: bytes | None = None
    charset: str | None = None
    udh: bytes | None = None
    smsc: str | None = None
    dlr_url: str | None = None
    account: str | None = None
    binfo: str | None = None
    meta_data: str | None = None
    numbers: dict[str, int] = field(default_factory=dict)  # dlr-mask, coding, ...

    def number(self, name: str) -> int:
        return self.numbers.get(name, UNDEFINED)


_NUMBER_VARIABLES = ("dlr-mask", "mclass", "pid", "rpi", "alt-dcs", "mwi", "coding",
                     "compress", "validity", "deferred", "priority")  # fmt: skip


def _scan(value: str | None) -> int:
    """C's ``sscanf(value, "%d")``: the leading integer, else `UNDEFINED`."""
    if value is None:
        return UNDEFINED
    found = _NUMBER.match(value)
    return int(found.group(1)) if found else UNDEFINED


def _text(raw: bytes | None) -> str | None:
    """A variable other than the message text, read as UTF-8."""
    return None if raw is None else raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------
# Reading a request: the query string (or a form), X-Kannel headers, or XML.


def from_variables(pairs: Iterable[tuple[str, bytes]]) -> Variables:
    """A request from CGI variables (name, raw bytes); the first of a name counts, as
    Kannel's http_cgi_variable finds it."""
    first: dict[str, bytes] = {}
    for name, value in pairs:
        first.setdefault(name, value)

    def get(*names: str) -> bytes | None:
        return next((first[n] for n in names if n in first), None)

    request = Variables(
        username=_text(get("username", "user")),
        password=_text(get("password", "pass")),
        sender=_text(get("from")),
        to=_text(get("to")),
        text=get("text"),
        charset=_text(get("charset")),
        udh=get("udh"),
        smsc=_text(get("smsc")),
        dlr_url=_text(get("dlr-url", "dlrurl")),
        account=_text(get("account")),
        binfo=_text(get("binfo")),
        meta_data=_text(get("meta-data")),
    )
    for name in _NUMBER_VARIABLES:
        aliases = (name, name.replace("-", "")) if name == "dlr-mask" else (name,)
        request.numbers[name] = _scan(_text(get(*aliases)))
    return request


def _pairs(query: str) -> list[tuple[str, bytes]]:
    """URL-encoded variables with their values as raw bytes (the text's charset is
    applied later, as Kannel does)."""
    return [
        (name, value.encode("latin-1"))
        for name, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1")
    ]


def from_headers(headers: CIMultiDictProxy[str], body: bytes, charset: str | None) -> Variables:
    """Kannel's POST: the ``X-Kannel-*`` headers, the body as the text."""

    def get(name: str) -> str | None:
        value = headers.get(f"X-Kannel-{name}")
        return None if value is None else value.strip()

    udh = get("UDH")
    request = Variables(
        username=get("Username"),
        password=get("Password"),
        sender=get("From"),
        to=get("To"),
        text=body,
        charset=charset,
        udh=None if udh is None else _udh(udh),
        smsc=get("SMSC"),
        dlr_url=get("DLR-URL"),
        account=get("Account"),
        binfo=get("BInfo"),
        meta_data=get("Meta-Data"),
    )
    names = {"dlr-mask": "DLR-Mask", "mclass": "MClass", "pid": "PID", "rpi": "RPI",
             "alt-dcs": "Alt-DCS", "mwi": "MWI", "coding": "Coding", "compress": "Compress",
             "validity": "Validity", "deferred": "Deferred", "priority": "Priority"}  # fmt: skip
    for name, header in names.items():
        request.numbers[name] = _scan(get(header))
    return request


def _udh(value: str) -> bytes:
    """X-Kannel-UDH / <udh>: hex digits, else URL-encoded bytes."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        return unquote_plus(value, encoding="latin-1").encode("latin-1")


def from_xml(body: bytes) -> Variables:
    """Kannel's XML POST (``<message><submit>``). A document that does not parse gives
    an empty request, which Kannel answers as unauthorised."""
    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, ValueError):
        return Variables()
    submit = root.find("submit") if root.tag == "message" else None
    if submit is None:
        return Variables()
    encoding = _xml_encoding(body) or "UTF-8"

    def get(path: str) -> str | None:
        node = submit.find(path)
        return None if node is None else "".join(node.itertext()).strip()

    text = None
    ud = submit.find("ud")
    if ud is not None:
        raw = "".join(ud.itertext()).strip()
        if ud.get("type", "").lower() == "binary":
            try:
                text = bytes.fromhex(raw)
            except ValueError:
                text = raw.encode()
        else:
            # URL-encoded; its %XX bytes in the document's charset (the rest is text).
            text = _recode(unquote_plus(raw, encoding="latin-1"), encoding)
    numbers = ["".join(n.itertext()).strip() for n in submit.findall("da/number")]
    udh = get("udh")
    request = Variables(
        username=get("from/username") or get("from/user"),
        password=get("from/password") or get("from/pass"),
        sender=get("oa/number"),
        tolist=numbers or None,
        text=text,
        # The text is decoded already; Kannel's charset here is the document's.
        charset="UTF-8",
        udh=None if udh is None else _udh(udh),
        smsc=get("smsc") or get("to"),
        dlr_url=get("statusrequest/dlr-url"),
        account=get("from/account"),
        binfo=get("from/binfo"),
        meta_data=get("meta-data"),
    )
    paths = {"dlr-mask": "statusrequest/dlr-mask", "mclass": "dcs/mclass", "pid": "pid",
             "rpi": "rpi", "alt-dcs": "dcs/alt-dcs", "mwi": "dcs/mwi", "coding": "dcs/coding",
             "compress": "dcs/compress", "validity": "vp/delay", "deferred": "timing/delay",
             "priority": "priority"}  # fmt: skip
    for name, path in paths.items():
        request.numbers[name] = _scan(get(path))
    return request


def _xml_encoding(body: bytes) -> str | None:
    found = re.match(rb"""\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""", body)
    return found.group(1).decode() if found else None


def _recode(text: str, encoding: str) -> bytes:
    """`text` (its %XX bytes read as latin-1) as UTF-8: the percent-decoded bytes were
    in `encoding`; characters beyond latin-1 were in the document itself."""
    try:
        return text.encode("latin-1").decode(_codec(encoding)).encode()
    except (UnicodeError, LookupError):
        return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------
# Judging a request: Kannel's checks in Kannel's order, then the router's.


@dataclass
class _Plan:
    """What a checked request sends."""

    caller: Caller
    receivers: list[str]  # as given
    text: str | None
    sender: str | None
    profile: str | None
    send_at: float | None
    expires_at: float | None
    dlr_mask: int
    dlr_url: str | None
    variables: Variables


def _authorise(context: ApiContext, request: Variables) -> Caller:
    if request.username is None or request.password is None:
        raise Answer(403, AUTH_FAILED)
    try:
        caller = by_password(context.settings, request.username, request.password, smpp=False)
    except AccountError:
        raise Answer(403, AUTH_FAILED) from None
    scopes = caller.account.scopes
    if "send" not in scopes and "admin" not in scopes:
        raise Answer(403, AUTH_FAILED)
    return caller


def _receivers(request: Variables, *, post: bool) -> list[str]:
    """The receivers, or Kannel's answer for none."""
    if request.tolist is not None:
        return request.tolist
    if request.to is None:
        if post:
            raise _rejected("Missing receiver(s) number(s), rejected")
        raise _rejected("Missing receiver number, rejected")
    if not request.to:
        raise _rejected("Empty receiver number not allowed, rejected")
    return request.to.split()


def _judge(context: ApiContext, request: Variables, *, post: bool) -> _Plan:
    """Kannel's checks (smsbox_req_sendsms, smsbox_req_handle), in its order, then what
    the router cannot send; Answer for the first problem."""
    caller = _authorise(context, request)
    given = _receivers(request, post=post)
    udh = request.udh
    if udh is not None and len(udh) != (udh[0] + 1 if udh else 0):
        raise _rejected("UDH field misformed, rejected")
    if udh is not None and len(udh) > MAX_UDH:
        raise _rejected("UDH field is too long, rejected")
    receivers: list[str] = []
    denied: list[str] = []
    for number in given:
        if set(number) - NUMBER_CHARS:
            denied.append(number)
        elif number not in receivers:
            receivers.append(number)
    if not receivers:
        raise _rejected("Number(s) has/have been denied by white- and/or black-lists.")
    if denied:
        log.info("sendsms: receivers denied (sendsms-chars)", account=caller.name,
                 count=len(denied))  # fmt: skip
    account = request.account
    if account and (len(account) > ACCOUNT_MAX_LEN or set(account) & set("[]\n\r")):
        raise _rejected("Account field misformed or too long, rejected")
    dlr_url = request.dlr_url or None
    if dlr_url is not None:
        scheme = dlr_url[:8].lower()
        if len(dlr_url) < 8 or not scheme.startswith(("http://", "https://")):
            raise _rejected("DLR-URL field misformed, rejected")
        # Kannel compares the scheme case-insensitively; jobs want it in lower case.
        head = "https://" if scheme == "https://" else "http://"
        dlr_url = head + dlr_url[len(head) :]
    numbers = request.number
    checks = (("dlr-mask", -1, 63, "DLR-Mask"), ("mclass", -1, 3, "MClass"),
              ("pid", -1, 255, "PID"), ("rpi", -1, 2, "RPI"), ("alt-dcs", -1, 1, "Alt-DCS"),
              ("mwi", -1, 7, "MWI"), ("coding", -1, 2, "Coding"),
              ("compress", -1, 1, "Compress"))  # fmt: skip
    for name, low, high, label in checks:
        if not low <= numbers(name) <= high:
            raise _rejected(f"{label} field misformed, rejected")
    coding = numbers("coding")
    if coding == UNDEFINED:
        coding = DC_8BIT if udh else DC_7BIT  # Kannel's "compatibility mode"
    now = time.time()
    validity, deferred = numbers("validity"), numbers("deferred")
    if validity < UNDEFINED:
        raise _rejected("Validity field misformed, rejected")
    if deferred < UNDEFINED:
        raise _rejected("Deferred field misformed, rejected")
    priority = numbers("priority")
    if priority != UNDEFINED and not 0 <= priority <= 3:
        raise _rejected("Priority field misformed, rejected")
    text = None
    if request.text and coding != DC_8BIT:  # 8-bit data is not decoded (refused below)
        text = _decode(request.text, request.charset, coding)
    # Kannel would send these; the router cannot, or not as asked.
    if udh:
        raise _rejected(
            "UDH field not supported, rejected (send the whole text in one request: "
            "the router splits long messages itself)"
        )
    if coding == DC_8BIT:
        raise _rejected("Coding field not supported, rejected (8-bit binary data; "
                        "send text with coding 0 or 2)")  # fmt: skip
    if numbers("pid") > 0:
        raise _rejected("PID field not supported, rejected")
    if numbers("mwi") != UNDEFINED:
        raise _rejected("MWI field not supported, rejected")
    if numbers("compress") == 1:
        raise _rejected("Compress field not supported, rejected")
    return _Plan(
        caller=caller,
        receivers=receivers,
        text=text,
        sender=request.sender.strip() if request.sender and request.sender.strip() else None,
        profile=_profile(context, request.smsc),
        send_at=now + deferred * 60 if deferred != UNDEFINED else None,
        expires_at=now + validity * 60 if validity != UNDEFINED else None,
        dlr_mask=numbers("dlr-mask"),
        dlr_url=dlr_url,
        variables=request,
    )


def _codec(charset: str) -> str:
    """Python's codec for a charset name as Kannel (iconv) takes them; LookupError."""
    name = charset.strip().lower().replace("_", "-")
    if name in ("ucs-2", "ucs2", "ucs-2be", "iso-10646-ucs-2"):
        return "utf-16-be"
    return codecs.lookup(name).name


def _decode(raw: bytes, charset: str | None, coding: int) -> str:
    """The text's bytes as Kannel reads them (sms_charset_processing): coding 0 in
    `charset` (default UTF-8), coding 2 in `charset` (default UTF-16BE)."""
    name = charset or ("UTF-16BE" if coding == DC_UCS2 else "UTF-8")
    try:
        return raw.decode(_codec(name))
    except (LookupError, UnicodeError):
        raise _rejected("Charset or body misformed, rejected") from None


def _profile(context: ApiContext, smsc: str | None) -> str | None:
    """The profile Kannel's smsc-id names (None: the account's default)."""
    if not smsc:
        return None
    settings = context.settings
    if smsc in settings.profiles:
        return smsc
    if smsc in settings.connectors:
        raise Answer(403, f"{NOT_ROUTABLE} (smsc {smsc!r} is a shared connector: routes "
                          "pick connectors; name a profile)")  # fmt: skip
    raise Answer(403, NOT_ROUTABLE)


def _international(number: str, *, receiver: bool) -> str:
    """A number as Kannel applications write it, in E.164's form: ``00`` and the
    country code, or the international digits alone, get their ``+``. A sender of 3-8
    digits is a short code and stays as it is."""
    bare = number.replace("-", "")
    if not bare.isdigit():
        return number
    if bare.startswith("00"):
        return "+" + number[2:]
    if receiver or len(bare) > 8:
        return "+" + number
    return number


# ---------------------------------------------------------------------------------------
# Jobs, limits, the answer.


def _jobs(plan: _Plan) -> list[dict[str, Any]]:
    """One wire job per receiver (the account admits them as the client enqueues)."""
    jobs: list[dict[str, Any]] = []
    for number in plan.receivers:
        job = Job(
            id=str(uuid.uuid4()),
            to=_international(number, receiver=True),
            text=plan.text,
            sender=_international(plan.sender, receiver=False) if plan.sender else None,
            profile=plan.profile,
            send_at=plan.send_at,
            expires_at=plan.expires_at,
        )
        if plan.dlr_url is not None and plan.dlr_mask > 0:
            job.status_callback_url = kannel_url(_prefill(plan, job, number), plan.dlr_mask)
        jobs.append(job.to_wire())
    return jobs


def _prefill(plan: _Plan, job: Job, receiver: str) -> str:
    """The dlr-url with the escape codes known now filled in: the receiver and the
    sender as the application wrote them, the message id, the account's and the
    request's own values. The rest (the report's) is filled when it comes."""
    assert plan.dlr_url is not None
    request = plan.variables
    values = {
        "p": kannel_encode(receiver),
        "q": kannel_plus(receiver),
        "I": job.id,
        "n": kannel_encode(plan.caller.name),
        "o": kannel_encode(request.account or ""),
        "B": kannel_encode(request.binfo or ""),
        "D": kannel_encode(request.meta_data or ""),
        "R": kannel_encode(plan.dlr_url),
    }
    if plan.sender:
        values["P"] = kannel_encode(plan.sender)
        values["Q"] = kannel_plus(plan.sender)
    return fill_escapes(plan.dlr_url, values, final=False)


_FIELDS = {"to": "To", "from": "From", "text": "Text", "template": "Text",
           "send_at": "Deferred", "expires_at": "Validity",
           "status_callback_url": "DLR-URL"}  # fmt: skip


def _job_problem(exc: JobError, receiver: str | None) -> Answer:
    """A job the router would refuse, in Kannel's words (``<Field> field misformed,
    rejected``) with the reason."""
    label = _FIELDS.get(exc.field.split(".")[0], "Message")
    detail = str(exc).split(f"job.{exc.field}: ", 1)[-1] if exc.field else str(exc)
    if exc.field == "to" and receiver is not None:
        detail = f"{receiver}: {detail}"
    return _rejected(f"{label} field misformed, rejected ({detail})")


async def _send(context: ApiContext, plan: _Plan) -> Answer:
    """Enqueue the plan's jobs as the account (`Client`: admitted by the account,
    checked by their profiles, taken from the account's limits, all or none)."""
    jobs = _jobs(plan)
    client = context.client
    caller = plan.caller
    problems = client.problems(jobs, caller=caller)
    if problems:
        index, problem = problems[0]
        raise _job_problem(problem, plan.receivers[index])
    try:
        taken = await client.send_each(jobs, caller=caller)
    except AccountError as exc:  # Refused: the account's profiles or senders
        if exc.code == PROFILE_NOT_ALLOWED:
            raise Answer(403, f"{NOT_ROUTABLE} ({exc})") from None
        raise Answer(403, f"Sender not allowed, rejected ({exc})") from None
    except OverLimit as exc:
        limited = exc.limited
        wait = str(max(1, math.ceil(limited.retry_after)))
        raise Answer(429, f"{TEMPORARY} ({limited.reason})", {"Retry-After": wait}) from None
    except JobError as exc:  # the configuration changed in between: judged again
        raise _job_problem(exc, None) from None
    ids = [job_id for job_id, _queued in taken]
    log.debug("sendsms: enqueued", account=caller.name, count=len(ids))
    default = caller.account.profiles[0] if caller.account.profiles else None
    profiles = {j.get("profile") or default or context.settings.global_profile for j in jobs}
    waiting = any(w.name in profiles and not w.ready for w in context.workers)
    return Answer(202, QUEUED if waiting else ACCEPTED, {"X-Message-Ids": " ".join(ids)})


async def _read(request: web.Request) -> tuple[Variables, bool]:
    """The request's variables, and whether it was Kannel's POST (a body)."""
    if not request.body_exists:
        return from_variables(_pairs(request.rel_url.raw_query_string)), False
    body = await request.read()
    kind = request.content_type.lower()
    if kind == "application/x-www-form-urlencoded":
        pairs = _pairs(request.rel_url.raw_query_string) + _pairs(body.decode("latin-1"))
        return from_variables(pairs), False
    if kind in ("text/plain", "application/octet-stream"):
        parsed = from_headers(request.headers, body, request.charset)
        if parsed.number("coding") == UNDEFINED:
            parsed.numbers["coding"] = DC_8BIT if kind == "application/octet-stream" else DC_7BIT
        return parsed, True
    if kind == "text/xml":
        return from_xml(body), True
    raise _rejected("Invalid content-type")


async def sendsms(request: web.Request) -> web.StreamResponse:
    """Kannel's sendsms: a request in, Kannel's answer out."""
    context = request.app[CONTEXT]
    try:
        variables, post = await _read(request)
        plan = _judge(context, variables, post=post)
        answer = await _send(context, plan)
    except Answer as exc:
        answer = exc
    except web.HTTPRequestEntityTooLarge:
        answer = Answer(413, "Request entity too large")
    except REDIS_ERRORS:
        log.warning("sendsms: redis unavailable")
        answer = Answer(503, TEMPORARY)
    return answer.response()


async def unknown(request: web.Request) -> web.StreamResponse:
    """Any other path on the sendsms listener: Kannel's answer."""
    return Answer(404, "Unknown request.").response()


def add_routes(app: web.Application) -> None:
    """Register ``/cgi-bin/sendsms`` (every method: a body decides, as in Kannel)."""
    app.router.add_route("*", PATH, sendsms)


def build_sendsms_app(context: ApiContext) -> web.Application:
    """The application of the ``[sendsms]`` listener: sendsms and nothing else."""
    app = web.Application(client_max_size=context.settings.api.max_body)
    app[CONTEXT] = context
    add_routes(app)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
