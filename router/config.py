"""Typed settings from ``router.toml`` (pydantic v2), with every problem reported at once.

`load_settings` reads a file, `parse_settings` a dict already parsed. Either returns
a frozen `Settings` or raises `ConfigError` whose `problems` each read
``path.to.key: what is wrong``. Schema checks (types, ranges, unknown keys) come
from pydantic; checks that span sections (a number owned by two profiles, two
global profiles, a protocol without its section...) run on the raw data so they
are reported even when some other key is already wrong.

Secrets: a value ``env:NAME`` or ``file:PATH`` (the SMPP password) and a
``{secret:NAME}`` placeholder in an HTTP template are resolved at load, from the
environment or from ``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``).
They are held as `SecretStr` and never appear in a problem, a repr or a log.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from binds.base import BindConfigError
from binds.http import HttpSpec, uses_media
from binds.smpp import SmppSpec, receipts_by_default
from binds.smpp.bodies import source_address
from binds.twilio import TwilioSpec
from router.errors import RouterError
from router.numbers import (
    SenderKind,
    normalise_e164,
    normalise_sender,
    region_key,
    sender_kind,
)
from router.signing import secret_key
from router.store.redis_url import (
    is_cluster_url,
    is_sentinel_url,
    parse_cluster_url,
    parse_sentinel_url,
)

__all__ = [
    "Account",
    "ApiKey",
    "ApiSettings",
    "Breaker",
    "Campaign",
    "ConfigError",
    "Connector",
    "HttpSection",
    "LinksSettings",
    "NumberDetails",
    "Profile",
    "QueueSettings",
    "Route",
    "RouterSettings",
    "SendsmsSettings",
    "Settings",
    "SmppSection",
    "SmppServerSettings",
    "Template",
    "TwilioSection",
    "UnresolvedSecret",
    "WebhookReports",
    "load_settings",
    "parse_settings",
    "resolve_config_path",
]

DEFAULT_PATH = "router.toml"
ENV_PATH = "SMS_ROUTER_CONFIG"
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECRET_REF = re.compile(r"\{secret:([^{}]*)\}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(RouterError):
    """The configuration cannot be used; `problems` lists each ``path: message``."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        self.source = source
        count = len(problems)
        super().__init__(
            f"{source}: {count} problem{'s' if count != 1 else ''}: " + "; ".join(problems)
        )


def _between(low: float, high: float) -> AfterValidator:
    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return AfterValidator(check)


def _at_least(low: float) -> AfterValidator:
    def check(value: Any) -> Any:
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return AfterValidator(check)


def _e164(value: str) -> str:
    return normalise_e164(value)


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


def _sender(value: str) -> str:
    return normalise_sender(value)


def _region(value: str) -> str:
    region_key(value)  # ValueError names an unknown code
    return value.upper()


E164 = Annotated[str, AfterValidator(_e164)]
# A long code, toll-free number, short code or alphanumeric sender ID (router.numbers).
Sender = Annotated[str, AfterValidator(_sender)]
Region = Annotated[str, AfterValidator(_region)]
CallbackUrl = Annotated[str | None, AfterValidator(_http_url)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# The spec fields every bind takes from its connector (a profile with an inline
# protocol is its own) rather than from its own section.
_FROM_PROFILE: dict[str, Callable[[Profile | Connector], Any]] = {
    "window": lambda profile: profile.window,
    "tps": lambda profile: profile.tps,
    "sync": lambda profile: profile.processing == "sync",
}


class _BindSection(_Section):
    """A protocol section (``[profiles.P.http|smpp|twilio]``) that builds its bind's spec.

    `to_spec` fills every field of the spec dataclass: from the profile (`window`,
    `tps`, `sync`), from a value the caller passes (`given`), else from this section's
    field of the same name (or its TOML alias, or the one `SPEC_NAMES` gives). These
    sections hold the daemon's defaults; the spec's own defaults serve `binds` used as
    a library, and tests/daemon/test_specs.py checks the two agree. A spec field none of these
    sets is an error here, not a silent default.
    """

    # Spec field -> this section's field, where the TOML key reads better than the
    # bind's name for it (the keys are the configuration's interface: they stay).
    SPEC_NAMES: ClassVar[Mapping[str, str]] = {}
    # Spec fields no configuration sets: the bind's own default applies.
    SPEC_LIBRARY_ONLY: ClassVar[frozenset[str]] = frozenset()

    def _spec_values(
        self, spec: type, profile: Profile | Connector | None, given: Mapping[str, Any]
    ) -> dict[str, Any]:
        by_alias = {f.alias: name for name, f in type(self).model_fields.items() if f.alias}
        stray = set(given) - {item.name for item in fields(spec) if item.init}
        if stray:  # a spec field renamed or removed: never drop a value silently
            raise TypeError(f"{spec.__name__} has no field {', '.join(sorted(stray))}")
        values: dict[str, Any] = {}
        for item in fields(spec):
            name = item.name
            if not item.init or name in self.SPEC_LIBRARY_ONLY:
                continue
            if name in given:
                values[name] = given[name]
            elif name in _FROM_PROFILE:
                if profile is not None:  # None: only checking the section (check-config)
                    values[name] = _FROM_PROFILE[name](profile)
            else:
                source = self.SPEC_NAMES.get(name) or by_alias.get(name, name)
                if source not in type(self).model_fields:
                    raise TypeError(
                        f"{spec.__name__}.{name}: no key of {type(self).__name__} sets it; "
                        "add one, name it in SPEC_NAMES, or list it in SPEC_LIBRARY_ONLY"
                    )
                value = getattr(self, source)
                values[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return values


class RouterSettings(_Section):
    """``[router]``: where Redis is, who this instance is, how it logs."""

    redis: str = "embedded"
    state_dir: Path = Path("var")
    instance: str = ""
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    embedded_port: Annotated[int, _between(0, 65535)] = 0
    shutdown_grace: Annotated[float, _between(0, 3600)] = 10.0
    # redis-py's defaults turn a slow second into an exception; our loops wait out
    # outages themselves, so these only bound how long one call may hang.
    redis_connect_timeout: Annotated[float, _between(0.1, 300)] = 5.0
    redis_socket_timeout: Annotated[float, _between(1, 3600)] = 30.0
    redis_health_check: Annotated[float, _between(0, 3600)] = 15.0
    # The Redis servers' password (a sentinel URL holds none): env:NAME / file:PATH.
    redis_password: SecretStr | None = None
    # After each step that records an outcome and acknowledges its work entry, WAIT for
    # this many replicas (0: no WAIT, no cost); fewer in time is counted, not an error.
    replicas_ack: Annotated[int, _between(0, 100)] = 0
    replicas_ack_timeout_ms: Annotated[int, _between(1, 60_000)] = 100
    callback_timeout: Annotated[float, _between(0.1, 600)] = 10.0
    # uvloop's event loop (a dependency) runs the hot path markedly cheaper than
    # asyncio's; false falls back to asyncio's own loop.
    uvloop: bool = True
    # Destination countries (ISO codes) that refuse alphanumeric sender IDs: a message
    # from one to these is rejected with sender_not_allowed.
    alphanumeric_refused: list[Region] = Field(default_factory=lambda: ["US", "CA"])
    # MMS media checks (router/policy/media.py): no request to loopback, private,
    # link-local or reserved addresses unless allowed (all, or these networks: an
    # operator's own media server); seconds one media URL's check may take.
    media_allow_private: bool = False
    media_allow_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    media_timeout: Annotated[float, _between(0.1, 60)] = 5.0

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value == "embedded":
            return value
        if is_sentinel_url(value):
            parse_sentinel_url(value)  # ValueError says what is wrong
            return value
        if is_cluster_url(value):
            parse_cluster_url(value)
            return value
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                'must be "embedded" or a redis://, rediss://, unix://, redis+cluster:// '
                "or redis+sentinel:// URL"
            )
        return value

    @field_validator("redis_password", mode="before")
    @classmethod
    def _resolve_redis_password(cls, value: Any, info: ValidationInfo) -> Any:
        return _secret_field(value, info, needed=True)  # every command reaches Redis

    @field_validator("state_dir")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        if not value.is_absolute() and base is not None:
            return Path(base) / value
        return value

    @property
    def instance_name(self) -> str:
        """Consumer name in every consumer group: `instance`, else the host name."""
        return self.instance or socket.gethostname()


class QueueSettings(_Section):
    """``[queue]``: batching, crash recovery, retries and retention."""

    batch: Annotated[int, _between(1, 10_000)] = 100
    block_ms: Annotated[int, _between(1, 60_000)] = 1000
    claim_idle: Annotated[float, _between(0.1, 86_400)] = 60.0
    max_deliveries: Annotated[int, _at_least(1)] = 5
    max_attempts: Annotated[int, _at_least(1)] = 8
    retry_base: Annotated[float, _between(0.001, 3600)] = 1.0
    retry_max: Annotated[float, _between(0.001, 86_400)] = 300.0
    schedule_poll: Annotated[float, _between(0.01, 60)] = 0.5
    retention: Annotated[float, _at_least(60)] = 7 * 86_400.0
    events_maxlen: Annotated[int, _at_least(1000)] = 1_000_000
    # Index each new message by recipient and UTC day (keys.recipient_index: one sorted
    # set member, ~100 bytes, per message) for the console's search by recipient; off,
    # that search reads the SMS log instead.
    recipient_index: bool = True


def _base_url(value: str | None) -> str | None:
    value = _http_url(value)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise ValueError(
            "must not have a query or a fragment (codes are appended: {base_url}/<code>)"
        )
    return value.rstrip("/")


# The longest a tracked link may live (router.links.MAX_RETENTION: its hour's name comes
# round again after 56^2 hours; tests check the two agree).
LINKS_MAX_RETENTION = (56**2 - 2) * 3600


class LinksSettings(_Section):
    """``[links]``: tracked links. A profile with ``shorten = true`` has every http(s)
    URL of its outbound texts replaced by ``{base_url}/<code>``; the API listener
    answers ``GET /l/<code>`` with a redirect, so `base_url` is the listener's public
    address plus ``/l`` (or a short domain a proxy maps there)."""

    base_url: Annotated[str | None, AfterValidator(_base_url)] = None
    # Random characters of a code after its profile's two-letter tag (router.links:
    # CODE_LENGTH, MIN_CODE_LENGTH, MAX_CODE_LENGTH; tests check they agree).
    code_length: Annotated[int, _between(8, 32)] = 10


class Campaign(_Section):
    """``[campaigns.ID]``: a 10DLC brand + campaign registration."""

    brand: str = Field(min_length=1)
    brand_status: Literal["Unverified", "Verified", "Vetted", "SelfDeclared"] = "Verified"
    status: Literal["Pending", "Confirmed", "Rejected", "Suspended", "Expired"] = "Pending"
    tier: Literal["LowVolume", "StandardVolume"] = "LowVolume"
    daily_cap: Annotated[int, _at_least(1)] | None = None
    use_cases: list[str] = Field(default_factory=list)


Feature = Literal["SmsSender", "MmsSender", "InternationalSmsSender", "A2PSmsSender"]


def _default_features() -> list[Feature]:
    return ["SmsSender"]


class NumberDetails(_Section):
    """``[numbers."+E164"]`` (or a short code, or an alphanumeric sender ID):
    capabilities of one sender."""

    features: list[Feature] = Field(default_factory=_default_features)
    sms_enabled: bool = True
    campaign: str | None = None
    verified: bool = False
    # The country a short code belongs to (required for one: it sends only there).
    country: Region | None = None
    # How SMPP addresses this sender (source_addr_ton / _npi); None: by its kind
    # (alphanumeric 5/0, long code and toll-free 1/1, short code 3/0).
    ton: Annotated[int, _between(0, 255)] | None = None
    npi: Annotated[int, _between(0, 255)] | None = None


def _prefix(value: str) -> str:
    if not re.fullmatch(r"\+\d{1,15}", value):
        raise ValueError(f"{value!r} is not a number or prefix ('+' then 1-15 digits)")
    return value


NumberPrefix = Annotated[str, AfterValidator(_prefix)]
SenderStrategy = Literal["round_robin", "sticky", "geomatch", "sticky+geomatch"]
_LANG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


class Template(_Section):
    """``[templates.NAME]``: one message text per language, with ``{placeholders}``."""

    text: dict[str, str] = Field(min_length=1)
    default_lang: str = "en"
    description: str = ""

    @field_validator("text")
    @classmethod
    def _texts(cls, value: dict[str, str]) -> dict[str, str]:
        from router.policy.compose import TemplateError, placeholders

        for lang, text in value.items():
            if not _LANG.match(lang):
                raise ValueError(f"{lang!r} is not a language tag (en, es, pt-BR...)")
            if not text:
                raise ValueError(f"text.{lang} must not be empty")
            try:
                placeholders(text)
            except TemplateError as exc:
                raise ValueError(f"text.{lang}: {exc}") from None
        return value


_DEFAULT_NUMBER = NumberDetails()


ReportStatus = Literal["delivered", "undelivered", "failed", "sent"]


class _WebhookAuth(_Section):
    """How a Web-URL provider's webhook is authenticated: ``"token"``: header
    X-Webhook-Token equals `secret`; ``"hmac-sha256"``: header X-Signature is the hex
    HMAC-SHA256 of the raw body keyed with `secret`."""

    check: Literal["token", "hmac-sha256"] = "token"
    secret: SecretStr

    @field_validator("secret", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return _long_secret(value, info)


class WebhookReports(_WebhookAuth):
    """``[profiles.P.http.reports]``: how a Web-URL provider's delivery-report webhook
    (``POST /v1/providers/P/report``) reads, and how it is authenticated."""

    # Where the provider's message id and status are: a form field, or a dotted path
    # into a JSON body (``data.id``; numeric segments index lists).
    id_field: str = Field(min_length=1)
    status_field: str = Field(min_length=1)
    # The provider's status value -> ours; a value not listed is refused (400).
    statuses: dict[str, ReportStatus] = Field(min_length=1)
    error_field: str | None = None


class WebhookInbound(_WebhookAuth):
    """``[profiles.P.http.inbound]``: how a Web-URL provider's inbound-message webhook
    (``POST /v1/providers/P/inbound``) reads, and how it is authenticated (as
    `WebhookReports`). Paths are form field names or dotted paths into a JSON body."""

    from_field: str = Field(min_length=1)
    to_field: str = Field(min_length=1)
    text_field: str | None = None
    # The message's media (an MMS): a list of URLs, or of objects whose `media_url_key`
    # holds the URL and `media_type_key` its content type.
    media_field: str | None = None
    media_url_key: str = "url"
    media_type_key: str = "content_type"


class HttpSection(_BindSection):
    """``[profiles.P.http]``: the Web-URL request template (see `binds.http.HttpSpec`)."""

    method: Literal["GET", "POST", "PUT"] = "POST"
    url: str
    form: dict[str, str] | None = None
    json_: Any = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    success_status: list[Annotated[int, _between(100, 599)]] = Field(
        default_factory=lambda: [200, 201, 202], min_length=1
    )
    message_id: str = ""
    timeout: Annotated[float, _between(0.1, 600)] = 10.0
    # A provider's answer is read up to this many bytes; the rest is never read.
    max_response_bytes: Annotated[int, _between(1024, 67_108_864)] = 65_536
    reports: WebhookReports | None = None
    inbound: WebhookInbound | None = None

    def to_spec(
        self, profile: Profile | Connector | None, *, secrets: Mapping[str, str]
    ) -> HttpSpec:
        """The Web-URL bind's spec; `secrets` fill the ``{secret:NAME}`` placeholders.
        Raises `BindConfigError` when a template does not compile."""
        given = {
            "form": dict(self.form) if self.form is not None else None,
            "headers": dict(self.headers),
            "success_status": tuple(self.success_status),
            "secrets": dict(secrets),
        }
        return HttpSpec(**self._spec_values(HttpSpec, profile, given))


class SmppSection(_BindSection):
    """``[profiles.P.smpp]``: the SMSC, the sessions to hold and how to encode."""

    SPEC_NAMES: ClassVar[Mapping[str, str]] = {"mode": "bind", "long_mode": "long_messages"}
    # The first pause before a reconnect (it doubles up to reconnect_max).
    SPEC_LIBRARY_ONLY: ClassVar[frozenset[str]] = frozenset({"reconnect_min"})

    host: str = Field(min_length=1)
    port: Annotated[int, _between(1, 65535)] = 2775
    system_id: str = Field(min_length=1, max_length=15)
    password: SecretStr
    system_type: str = Field(default="", max_length=12)
    bind: Literal["transmitter", "transceiver"] = "transceiver"
    binds: Annotated[int, _between(1, 64)] = 1
    addr_ton: Annotated[int, _between(0, 255)] = 0
    addr_npi: Annotated[int, _between(0, 255)] = 0
    address_range: str = Field(default="", max_length=40)
    # None = automatic: TON 1 / NPI 1 for numbers, TON 5 / NPI 0 for alphanumeric senders.
    source_ton: Annotated[int, _between(0, 255)] | None = None
    source_npi: Annotated[int, _between(0, 255)] | None = None
    dest_ton: Annotated[int, _between(0, 255)] = 1
    dest_npi: Annotated[int, _between(0, 255)] = 1
    service_type: str = Field(default="", max_length=5)
    # Not set: 1 (a receipt for every final outcome) on a transceiver, 0 on a transmitter,
    # which cannot receive receipts (see _receipts_by_bind).
    registered_delivery: Annotated[int, _between(0, 255)] = 1
    encoding: Literal["auto", "gsm", "ucs2", "latin1"] = "auto"
    gsm_data_coding: Literal[0, 1] = 0
    long_messages: Literal["udh8", "udh16", "payload", "sar"] = "udh8"
    message_id_format: Literal["auto", "as-is", "hex", "decimal", "hex-resp", "hex-receipt"] = (
        "auto"
    )
    # Seconds a `sent` message waits for its delivery report before it is noted as
    # missing (only when registered_delivery asks for reports); 0 = never noted.
    report_timeout: Annotated[float, _between(0, 366 * 86_400)] = 172_800.0
    vendor_status: dict[str, Literal["retry", "fail"]] = Field(default_factory=dict)
    enquire_link: Annotated[float, _between(1, 3600)] = 30.0
    response_timeout: Annotated[float, _between(0.1, 300)] = 10.0
    connect_timeout: Annotated[float, _between(0.1, 300)] = 10.0
    reconnect_max: Annotated[float, _between(0.1, 3600)] = 60.0
    bind_retry: Annotated[float, _between(0.1, 3600)] = 60.0
    max_pdu_size: Annotated[int, _between(1024, 1_048_576)] = 65_536
    reassembly_timeout: Annotated[float, _between(1, 86_400)] = 300.0
    # Throttling: the session never paces itself below this many submits/s, and
    # holds a throttled submit (re-sending it) this long before handing it back.
    throttle_floor: Annotated[float, _between(0.01, 100_000)] = 1.0
    throttle_hold: Annotated[float, _between(1, 86_400)] = 120.0

    @model_validator(mode="before")
    @classmethod
    def _receipts_by_bind(cls, data: Any) -> Any:
        # The bind's own default for its mode (this router binds no receiver: a
        # transmitter asking for receipts would leave every message waiting
        # report_timeout, 48 h, for a report that never comes).
        if isinstance(data, Mapping) and "registered_delivery" not in data:
            mode = data.get("bind", "transceiver")
            return {**data, "registered_delivery": receipts_by_default(mode)}
        return data

    @field_validator("password", mode="before")
    @classmethod
    def _resolve_password(cls, value: Any, info: ValidationInfo) -> Any:
        secret = _secret_field(value, info)
        if isinstance(secret, str) and len(secret) > 8:
            raise ValueError("must be at most 8 characters (SMPP 3.4 password field)")
        return secret

    @field_validator("vendor_status")
    @classmethod
    def _status_codes(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            try:
                code = int(key, 0)
            except ValueError:
                raise ValueError(f"{key!r} is not a status code (write 0x0401)") from None
            if not 0 < code <= 0xFFFFFFFF:
                raise ValueError(f"{key!r} is not a status code (write 0x0401)")
        return value

    @property
    def report_wait(self) -> float:
        """Seconds a sent message waits for its delivery report; 0 when none is due.

        SMPP 3.4 registered_delivery bits 1-0: 01 = a receipt for every final
        outcome. 10 asks only for failures, so a silent delivered message is normal.
        """
        return self.report_timeout if self.registered_delivery & 0b11 == 1 else 0.0

    @property
    def receipts_note(self) -> str:
        """For ``check-config`` and the startup log: "" on a transceiver; on a transmitter,
        that it gets no delivery reports and how to get them, or a warning when
        registered_delivery asks for reports it cannot receive."""
        if self.bind != "transmitter":
            return ""
        if self.registered_delivery & 0b11:
            return (
                f"WARNING registered_delivery = {self.registered_delivery} asks for delivery "
                "reports, which only a receiver or transceiver session can receive and this "
                "router binds no receiver: messages wait report_timeout for reports that "
                'never come; use bind = "transceiver", or registered_delivery = 0'
            )
        return (
            "no delivery reports (a transmitter cannot receive them; "
            'for reports, bind = "transceiver")'
        )

    def vendor_codes(self) -> dict[int, Literal["retry", "fail"]]:
        """`vendor_status` with integer keys."""
        return {int(key, 0): action for key, action in self.vendor_status.items()}

    def to_spec(
        self,
        profile: Profile | Connector | None,
        *,
        sender_addresses: Mapping[str, tuple[int, int]] | None = None,
    ) -> SmppSpec:
        """The spec each of the connector's `binds` SMPP sessions runs with;
        `sender_addresses` from `Settings.sender_addresses`."""
        given = {
            "vendor_status": self.vendor_codes(),
            "sender_addresses": dict(sender_addresses or {}),
        }
        return SmppSpec(**self._spec_values(SmppSpec, profile, given))


class TwilioSection(_BindSection):
    """``[profiles.P.twilio]``: send through Twilio's Messages API; delivery reports
    and inbound messages come back to this daemon's API (router/api/providers.py)."""

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr
    # Set: Twilio picks the sender from the service's pool (MessagingServiceSid is
    # sent instead of From).
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    base_url: str = "https://api.twilio.com"
    timeout: Annotated[float, _between(0.1, 600)] = 10.0
    # Seconds a sent message waits for its status callback before it is noted as
    # missing; 0 = never noted.
    report_timeout: Annotated[float, _between(0, 366 * 86_400)] = 172_800.0

    @field_validator("auth_token", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return _secret_field(value, info)

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        checked = _http_url(value)
        assert checked is not None
        return checked.rstrip("/")

    def to_spec(
        self, profile: Profile | Connector | None, *, status_callback: str | None
    ) -> TwilioSpec:
        """The Twilio bind's spec; `status_callback` is where Twilio posts each
        message's status (the daemon's ``/v1/providers/P/status``), None for none."""
        given = {"status_callback": status_callback}
        return TwilioSpec(**self._spec_values(TwilioSpec, profile, given))


Protocol_ = Literal["http", "smpp", "twilio"]
Strategy = Literal["failover", "weighted", "least_cost", "quality"]


def _price_prefix(value: str) -> str:
    if value == "default":
        return value
    prefix = value if value.startswith("+") else "+" + value
    return _prefix(prefix)


PricePrefix = Annotated[str, AfterValidator(_price_prefix)]


class Breaker(_Section):
    """``[connectors.C.breaker]``: when recent submits fail too often, the connector is
    unhealthy for `cooldown` seconds; then one probe decides (half-open)."""

    failure_ratio: Annotated[float, _between(0.01, 1)] = 0.5
    min_requests: Annotated[int, _between(1, 1_000_000)] = 20  # in `window`, to judge
    window: Annotated[float, _between(1, 86_400)] = 30.0  # seconds of outcomes counted
    cooldown: Annotated[float, _between(0.1, 86_400)] = 15.0


class Connector(_Section):
    """``[connectors.C]``: one carrier connection, shared by every profile whose routes
    name it. A profile with an inline ``protocol`` is a connector of its own, named
    after the profile (`Profile.connector`)."""

    protocol: Protocol_
    # "both": inbound messages arriving here go to the profile owning the number they
    # were sent to (else `inbound_profile`).
    direction: Literal["outbound", "both"] = "outbound"
    processing: Literal["sync", "async"] = "async"
    window: Annotated[int, _between(1, 10_000)] = 10
    # Per bind: outcomes the SMSC answered that may wait to be recorded, beyond the
    # window (None: one window; 32 in sync mode, router.engine.routing.SYNC_UNSETTLED).
    # A crash can send at most window + unsettled_max
    # messages per bind twice (counted in possible_duplicates); more keeps the window
    # full while outcomes are written to Redis.
    unsettled_max: Annotated[int, _between(1, 10_000)] | None = None
    tps: Annotated[float, _at_least(0)] = 0.0
    http: HttpSection | None = None
    smpp: SmppSection | None = None
    twilio: TwilioSection | None = None
    # Price of one SMS part by destination prefix ("+44" = 0.031), longest prefix wins;
    # "default" for the rest. No price: unknown (least_cost tries it last).
    prices: dict[PricePrefix, Annotated[float, _at_least(0)]] = Field(default_factory=dict)
    # Seconds without a bound session (or a ready bind) before the connector counts as
    # down and its routes fail over.
    failover_after: Annotated[float, _between(0, 3600)] = 10.0
    breaker: Breaker = Field(default_factory=Breaker)
    # Outcome codes (as records name them: "ESME_RSYSERR", "http_503", a vendor's
    # "twilio_30003") that mean "this connector cannot take it now, another may": the
    # message moves to the route's next connector without using an attempt. Added to
    # ESME_RSYSERR, ESME_RSUBMITFAIL, HTTP 5xx and "never sent" (no bound session).
    route_codes: list[str] = Field(default_factory=list)
    # Inbound messages to a number no profile owns go to this profile.
    inbound_profile: str | None = None

    def price(self, to: str) -> float | None:
        """The price of one part to `to`: the longest matching prefix, else
        ``default``, else None (unknown)."""
        prices = self.prices
        if prices:
            for size in range(min(len(to), self.price_digits), 1, -1):
                found = prices.get(to[:size])
                if found is not None:
                    return found
            return prices.get("default")
        return None

    @cached_property
    def price_digits(self) -> int:
        """The destination digits its prices depend on: the longest prefix listed (no
        look-up is tried beyond it)."""
        return max((len(p) for p in self.prices if p != "default"), default=0)

    @property
    def carries_media(self) -> bool:
        """Whether it can send an MMS: Twilio (``MediaUrl``), or a Web-URL provider whose
        request templates use ``{media}`` or ``{media_json}``; SMPP never."""
        if self.protocol == "twilio":
            return True
        http = self.http
        if self.protocol != "http" or http is None:
            return False
        return uses_media(http.url, http.form, http.json_, http.headers)


class Route(_Section):
    """``[[routes]]``: in order, the first match wins. Every key given must match (a
    key matches when any of its values does); `connectors` in the order `strategy`
    starts from."""

    to: list[NumberPrefix] = Field(default_factory=list)  # destination prefixes
    countries: list[Region] = Field(default_factory=list)  # destination countries
    profiles: list[str] = Field(default_factory=list)
    senders: list[SenderKind] = Field(default_factory=list)  # the sender's kind
    use_cases: list[str] = Field(default_factory=list)
    # "sms" or "mms" (a message with media): only that kind matches. An MMS takes
    # only the route's connectors that carry media; a route with none never matches one.
    kind: Literal["sms", "mms"] | None = None
    connectors: list[str] = Field(min_length=1)
    strategy: Strategy = "failover"
    weights: list[Annotated[int, _between(0, 1_000_000)]] = Field(default_factory=list)
    # quality: delivery ratios over this many seconds, trusted from this many reports.
    quality_window: Annotated[float, _between(60, 30 * 86_400)] = 3600.0
    quality_min_sample: Annotated[int, _between(1, 1_000_000)] = 50


class Profile(_Section):
    """``[profiles.P]``: a pool of numbers, how it sends and where callbacks go."""

    global_: bool = Field(default=False, alias="global")
    # Set: the profile is a connector of its own (its sub-table below) and that is its
    # only route. None: its messages go where `[[routes]]` send them.
    protocol: Protocol_ | None = None
    direction: Literal["outbound", "both"] = "outbound"
    processing: Literal["sync", "async"] = "async"
    window: Annotated[int, _between(1, 10_000)] = 10
    # Per bind: outcomes the SMSC answered that may wait to be recorded, beyond the
    # window (None: one window; 32 in sync mode, router.engine.routing.SYNC_UNSETTLED).
    # A crash can send at most window + unsettled_max
    # messages per bind twice (counted in possible_duplicates); more keeps the window
    # full while outcomes are written to Redis.
    unsettled_max: Annotated[int, _between(1, 10_000)] | None = None
    tps: Annotated[float, _at_least(0)] = 0.0
    # Longest text accepted, in SMS parts; longer jobs are rejected before sending.
    # 255 is what concatenation can number.
    max_segments: Annotated[int, _between(1, 255)] = 255
    numbers: list[Sender] = Field(min_length=1)
    callback_url: CallbackUrl = None
    status_callback_url: CallbackUrl = None
    # Signs this profile's status and inbound callbacks (Standard Webhooks):
    # "whsec_<base64>" or a raw string of 16+ bytes; env:/file: references resolved.
    webhook_secret: SecretStr | None = None
    # Keep the message text in the record (`sms-router status` shows it); false for
    # privacy: the text then lives only in the work stream until it is sent.
    store_text: bool = True
    # Which number sends: round_robin | sticky | geomatch | sticky+geomatch.
    sender: SenderStrategy = "round_robin"
    # Kinds of sender tried first, in order (long_code, toll_free, short_code,
    # alphanumeric); the others only when none of these may send. Empty: pool order.
    sender_preference: list[SenderKind] = Field(default_factory=list)
    sticky_ttl: Annotated[float, _between(60, 10 * 366 * 86_400)] = 365 * 86_400.0
    # Number health: with skip_unhealthy, a number whose delivery ratio over
    # health_window seconds is below health_threshold (judged from health_min_sample
    # delivery reports on) is passed over while another number may send.
    skip_unhealthy: bool = False
    health_threshold: Annotated[float, _between(0, 1)] = 0.5
    health_min_sample: Annotated[int, _between(1, 1_000_000)] = 20
    health_window: Annotated[float, _between(60, 30 * 86_400)] = 3600.0
    default_use_case: str | None = None
    # A campaign at its daily cap: "reject" the job, or "defer" it to the next UTC day.
    over_cap: Literal["reject", "defer"] = "reject"
    template: str | None = None  # for jobs that carry neither text nor template
    smart_encoding: bool = False  # look-alikes (curly quotes, dashes...) -> GSM 03.38
    # Tracked links: each http(s) URL of an outbound text becomes {[links] base_url}/<code>
    # before its segments are counted (router/engine/shorten.py).
    shorten: bool = False
    # A message with media (an MMS) that no sender or connector of the profile can
    # send as one: "link" sends an SMS of its text and its media URLs (shortened when
    # `shorten`), "reject" refuses it with mms_not_supported.
    mms_fallback: Literal["link", "reject"] = "link"
    # The largest media file an MMS may carry (each URL's Content-Length is checked).
    mms_max_bytes: Annotated[int, _between(1, 100 * 1024 * 1024)] = 5 * 1024 * 1024
    stop_keywords: list[str] = Field(
        default_factory=lambda: ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]
    )
    start_keywords: list[str] = Field(default_factory=lambda: ["START", "YES", "UNSTOP"])
    help_keywords: list[str] = Field(default_factory=lambda: ["HELP", "INFO"])
    help_text: str | None = None
    stop_text: str | None = None
    start_text: str | None = None
    blocklist: list[NumberPrefix] = Field(default_factory=list)
    allowlist: list[NumberPrefix] = Field(default_factory=list)
    http: HttpSection | None = None
    smpp: SmppSection | None = None
    twilio: TwilioSection | None = None
    # Refuse (`spend_limit_reached`) once today's spend (UTC) would pass it; None: no limit.
    daily_spend_limit: Annotated[float, _at_least(0)] | None = None

    @property
    def connector(self) -> Connector | None:
        """The profile's own connector (its inline protocol), or None (routed)."""
        if self.protocol is None:
            return None
        return Connector(
            protocol=self.protocol,
            direction=self.direction,
            processing=self.processing,
            window=self.window,
            unsettled_max=self.unsettled_max,
            tps=self.tps,
            http=self.http,
            smpp=self.smpp,
            twilio=self.twilio,
        )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _resolve_webhook_secret(cls, value: Any, info: ValidationInfo) -> Any:
        secret = _secret_field(value, info)
        if isinstance(secret, str):
            secret_key(secret)  # ValueError names what is wrong (never the value)
        return secret

    @property
    def webhook_key(self) -> bytes | None:
        """The HMAC key callbacks are signed with, or None (unsigned)."""
        if self.webhook_secret is None:
            return None
        return secret_key(self.webhook_secret.get_secret_value())


def _secret_field(value: Any, info: ValidationInfo, *, needed: bool = False) -> Any:
    """``env:NAME`` / ``file:PATH`` resolved (at load, never logged), else the value.

    Loaded with ``resolve_secrets=False``, a reference this environment cannot resolve
    becomes an `UnresolvedSecret` (unless `needed`) instead of a problem."""
    if not isinstance(value, str):
        return value
    context = info.context or {}
    try:
        return _resolve_reference(value, context.get("env", os.environ), context.get("base_dir"))
    except ValueError:
        if needed or context.get("resolve_secrets", True):
            raise
        return UnresolvedSecret(value)


def _long_secret(value: Any, info: ValidationInfo) -> Any:
    """`_secret_field`, refusing a secret shorter than 16 characters (guessable)."""
    secret = _secret_field(value, info)
    if isinstance(secret, str) and len(secret) < 16:
        raise ValueError("must be at least 16 characters")
    return secret


Scope = Literal["send", "read", "admin"]


class ApiKey(_Section):
    """``[api.keys.NAME]``: one bearer token and what it may do."""

    token: SecretStr
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("token", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return _long_secret(value, info)


def _host_port(value: str | None) -> str | None:
    """A ``listen`` address: "host:port" (None passes)."""
    if value is None:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('must be "host:port", e.g. "127.0.0.1:8080"')
    return value


Listen = Annotated[str | None, AfterValidator(_host_port)]


def _send_and_read() -> list[Scope]:
    return ["send", "read"]


class Account(_Section):
    """``[accounts.NAME]``: who may submit, through any door (the JSON and Twilio APIs
    with `api_token`, the SMPP server with the account's name as system_id and
    `smpp_password`, Kannel's sendsms with username = the name, password =
    `api_token`), and within which limits."""

    # An SMPP bind's password: SMPP 3.4 carries at most 8 characters.
    smpp_password: SecretStr | None = None
    api_token: SecretStr | None = None  # a bearer token of 16+ characters
    scopes: list[Scope] = Field(default_factory=_send_and_read, min_length=1)
    # The profiles it may send through, the first its default; empty: every profile
    # (default: the global one).
    profiles: list[str] = Field(default_factory=list)
    senders: list[Sender] = Field(default_factory=list)  # allowed `from`; empty: any
    tps: Annotated[float, _at_least(0)] = 0.0  # messages/s across instances; 0: no limit
    daily_quota: Annotated[int, _at_least(1)] | None = None  # messages per UTC day
    # SMPP server: sessions bound at once, submits unanswered per session (above:
    # ESME_RTHROTTLED), and long messages reassembled into one job or passed as parts.
    max_binds: Annotated[int, _between(1, 1000)] = 10
    window: Annotated[int, _between(1, 10_000)] = 100
    long_messages: Literal["reassemble", "parts"] = "reassemble"
    # Seconds a delivery receipt waits for a receiver/transceiver session of this
    # account before it is dropped (logged).
    receipt_retention: Annotated[float, _between(60, 30 * 86_400)] = 3 * 86_400.0

    @field_validator("smpp_password", mode="before")
    @classmethod
    def _resolve_smpp(cls, value: Any, info: ValidationInfo) -> Any:
        secret = _secret_field(value, info)
        if isinstance(secret, str) and not 1 <= len(secret.encode("latin-1", "replace")) <= 8:
            raise ValueError("must be 1-8 characters (an SMPP 3.4 password field)")
        return secret

    @field_validator("api_token", mode="before")
    @classmethod
    def _resolve_token(cls, value: Any, info: ValidationInfo) -> Any:
        return _long_secret(value, info)


class SmppServerSettings(_Section):
    """``[smpp_server]``: client applications bind here (off unless `listen` is set)."""

    listen: Listen = None
    cert: Path | None = None  # TLS when both are set (PEM files)
    key: Path | None = None
    enquire_link: Annotated[float, _between(1, 3600)] = 30.0  # idle seconds before we ask
    # Seconds a long message's parts wait for the rest before the client is answered
    # with an error for the parts held.
    reassembly_timeout: Annotated[float, _between(1, 3600)] = 60.0


class SendsmsSettings(_Section):
    """``[sendsms]``: Kannel's sendsms on a listener of its own (it is always on the
    `[api]` listener too, at /cgi-bin/sendsms)."""

    listen: Listen = None


class TwilioApi(_Section):
    """``[api.twilio]``: the Twilio-compatible submission endpoint's credentials."""

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr

    @field_validator("auth_token", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        return _secret_field(value, info)


class ApiSettings(_Section):
    """``[api]``: the daemon's HTTP surface (off unless `listen` is set)."""

    listen: str | None = None
    # Where callers reach this API from outside (providers' status callbacks point
    # here); default: http://<listen>.
    public_url: CallbackUrl = None
    max_body: Annotated[int, _between(1024, 64 * 1_048_576)] = 2_097_152
    keys: dict[str, ApiKey] = Field(default_factory=dict)
    twilio: TwilioApi | None = None
    # GET /metrics needs a key with the `read` scope (default: open, like /healthz).
    metrics_auth: bool = False
    # Extra processes that serve `listen` together (SO_REUSEPORT) and enqueue to Redis,
    # while the daemon's own process sends; 0: the daemon serves it itself.
    workers: Annotated[int, _between(0, 64)] = 0
    # Seconds a web console session lasts after sign-in (router/console).
    console_session_ttl: Annotated[int, _between(300, 30 * 86_400)] = 28_800

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return _host_port(value)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of `listen`; IPv6 hosts may be written in brackets."""
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _route_keyword(value: str) -> str:
    word = value.strip()
    if not word or len(word.split()) != 1:
        raise ValueError(f"{value!r} must be one word (no spaces)")
    return word.casefold()


RouteKeyword = Annotated[str, AfterValidator(_route_keyword)]


class InboundRoute(_Section):
    """``[[inbound_routes]]``: where inbound messages that match go besides, or instead
    of, their profile's ``callback_url``. Every key given must match (a key matches
    when any of its values does); a route with none of them matches every inbound
    message. `callback_url`: posted there instead of the profile's; `account`: also
    sent to that account's SMPP receiver/transceiver sessions as deliver_sm. Each
    destination takes the first matching route that has one (`first_callback`,
    `first_account`), so an account route never changes where a message is posted."""

    to: list[NumberPrefix] = Field(default_factory=list)  # our numbers or prefixes
    keywords: list[RouteKeyword] = Field(default_factory=list)  # first word, any case
    from_: list[NumberPrefix] = Field(default_factory=list, alias="from")
    profiles: list[str] = Field(default_factory=list)  # the profile that received it
    # At least one of the two (checked with the other sections: `_check_inbound_routes`).
    callback_url: Annotated[str, AfterValidator(_http_url)] | None = None
    account: str | None = None

    @property
    def matches_all(self) -> bool:
        """Whether the route has no condition (it takes every inbound message)."""
        return not (self.to or self.keywords or self.from_ or self.profiles)

    def matches(self, source: str, destination: str, text: str | None, profile: str) -> bool:
        """Whether a message from `source` to `destination` with `text` (None when
        binary: no keyword matches it), received by `profile`, takes this route."""
        if self.profiles and profile not in self.profiles:
            return False
        if self.to and not destination.startswith(tuple(self.to)):
            return False
        if self.from_ and not source.startswith(tuple(self.from_)):
            return False
        if self.keywords:
            words = (text or "").split(maxsplit=1)
            if text is None or not words or words[0].casefold() not in self.keywords:
                return False
        return True


def first_callback(
    routes: Sequence[InboundRoute], source: str, destination: str, text: str | None, profile: str
) -> tuple[str, int] | None:
    """(callback_url, index) of the first matching route with a callback_url, or None
    (the profile's own callback_url)."""
    for index, route in enumerate(routes):
        if route.callback_url is not None and route.matches(source, destination, text, profile):
            return route.callback_url, index
    return None


def first_account(
    routes: Sequence[InboundRoute], source: str, destination: str, text: str | None, profile: str
) -> tuple[str, int] | None:
    """(account, index) of the first matching route with an account, or None (no
    SMPP client gets the message)."""
    for index, route in enumerate(routes):
        if route.account is not None and route.matches(source, destination, text, profile):
            return route.account, index
    return None


class Settings(_Section):
    """The whole configuration; build it with `load_settings` or `parse_settings`."""

    router: RouterSettings = Field(default_factory=RouterSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    accounts: dict[str, Account] = Field(default_factory=dict)
    smpp_server: SmppServerSettings = Field(default_factory=SmppServerSettings)
    sendsms: SendsmsSettings = Field(default_factory=SendsmsSettings)
    campaigns: dict[str, Campaign] = Field(default_factory=dict)
    numbers: dict[str, NumberDetails] = Field(default_factory=dict)
    templates: dict[str, Template] = Field(default_factory=dict)
    links: LinksSettings = Field(default_factory=LinksSettings)
    profiles: dict[str, Profile]
    connectors: dict[str, Connector] = Field(default_factory=dict)
    # In order, the first match wins; a routed profile's message no route matches is
    # rejected (`no_route`).
    routes: list[Route] = Field(default_factory=list)
    # In order, the first match wins; no match: the owning profile's callback_url.
    inbound_routes: list[InboundRoute] = Field(default_factory=list)
    # Resolved `{secret:NAME}` values; not a TOML table (parse_settings fills it).
    secrets: dict[str, SecretStr] = Field(default_factory=dict, exclude=True, repr=False)

    @field_validator("numbers")
    @classmethod
    def _normalise_keys(cls, value: dict[str, NumberDetails]) -> dict[str, NumberDetails]:
        out: dict[str, NumberDetails] = {}
        for key, details in value.items():
            try:
                out[normalise_sender(key)] = details
            except ValueError:
                out[key] = details  # reported by the cross-checks
        return out

    @property
    def global_profile(self) -> str | None:
        """The profile for jobs that name none (``global = true``), if any."""
        return next((n for n, p in self.profiles.items() if p.global_), None)

    def all_connectors(self) -> dict[str, Connector]:
        """Every connector: the ``[connectors]`` and each inline profile's own (named
        after the profile)."""
        own = {n: c for n, p in self.profiles.items() if (c := p.connector) is not None}
        return {**self.connectors, **own}

    def sender_addresses(self) -> dict[str, tuple[int, int]]:
        """Sender -> (TON, NPI) for the ``[numbers]`` that set `ton` or `npi` (the
        other from the sender's kind)."""
        out: dict[str, tuple[int, int]] = {}
        for number, details in self.numbers.items():
            if details.ton is None and details.npi is None:
                continue
            _address, ton, npi = source_address(number)
            out[number] = (
                details.ton if details.ton is not None else ton,
                details.npi if details.npi is not None else npi,
            )
        return out

    def number(self, number: str) -> NumberDetails:
        """The ``[numbers]`` entry of a sender number, or the defaults when it has none."""
        return self.numbers.get(number) or _DEFAULT_NUMBER

    def profile_of_number(self, number: str) -> str | None:
        """The profile owning sender `number` (any E.164 spelling), or None."""
        try:
            wanted = normalise_sender(number)
        except ValueError:
            return None
        return next((n for n, p in self.profiles.items() if wanted in p.numbers), None)

    def summary_lines(self) -> list[str]:
        """One line per profile for ``check-config`` and the startup log."""
        lines = []
        for name, p in self.profiles.items():
            if p.protocol is None:
                head = f"{name}: routed {p.direction} numbers={len(p.numbers)}"
            else:
                head = f"{name}: {p.protocol} {p.direction} {p.processing}"
                head += f" window={p.window} tps={p.tps:g} numbers={len(p.numbers)}"
            if p.global_:
                head += " global"
            if p.http is not None:
                where = urlsplit(p.http.url)
                head += f" -> {p.http.method} {where.scheme}://{where.netloc}{where.path}"
            if p.smpp is not None:
                s = p.smpp
                head += f" -> {s.bind} x{s.binds} {s.host}:{s.port} system_id={s.system_id}"
                if s.receipts_note:
                    head += f"; {s.receipts_note}"
            if p.twilio is not None:
                head += f" -> twilio {p.twilio.base_url} account={p.twilio.account_sid}"
            lines.append(head)
        return lines

    def inbound_route_lines(self) -> list[str]:
        """One line per inbound route, in the order they are tried."""
        lines = []
        # The first route with no condition, per destination: later ones of that
        # destination are never reached (`first_callback`, `first_account`).
        catch_all: dict[str, int] = {}
        opt_outs = {
            word.strip().casefold(): name
            for name, p in self.profiles.items()
            for word in (*p.stop_keywords, *p.start_keywords, *p.help_keywords)
        }
        for index, route in enumerate(self.inbound_routes):
            line = f"inbound_routes[{index}]:"
            for key, values in (
                ("profiles", route.profiles),
                ("to", route.to),
                ("keywords", [w.upper() for w in route.keywords]),
                ("from", route.from_),
            ):
                if values:
                    line += f" {key}=" + ",".join(values)
            if route.matches_all:
                line += " (no to/keywords/from: matches every inbound message)"
            kinds: list[str] = []
            if route.callback_url is not None:
                where = urlsplit(route.callback_url)
                line += f" -> {where.scheme}://{where.netloc}{where.path}"
                kinds.append("callback_url")
            if route.account is not None:
                line += "," if kinds else " ->"
                line += f" smpp account {route.account}"
                kinds.append("account")
            for kind in kinds:
                if kind in catch_all:
                    what = "" if len(kinds) == 1 else f" ({kind})"
                    line += (
                        f" (never reached{what}: inbound_routes[{catch_all[kind]}] "
                        "takes every message)"
                    )
                elif route.matches_all:
                    catch_all[kind] = index
            for word in route.keywords:
                if word in opt_outs and route.callback_url is not None:
                    line += (
                        f" ({word.upper()} is an opt-out keyword of profile "
                        f"{opt_outs[word]}: handled there, never routed)"
                    )
            lines.append(line)
        return lines


def resolve_config_path(arg: str | os.PathLike[str] | None) -> Path:
    """The argument, else ``$SMS_ROUTER_CONFIG``, else ``./router.toml``."""
    if arg:
        return Path(arg)
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def load_settings(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
) -> Settings:
    """Read and validate a TOML file; relative paths inside are relative to its folder.

    ``resolve_secrets=False`` (operator commands that only reach Redis): a secret this
    environment cannot resolve is an `UnresolvedSecret`, not a problem; everything else,
    ``[router] redis_password`` included, is checked as usual."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: file not found"], str(file)) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror})"], str(file)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML: {exc}"], str(file)) from None
    try:
        return parse_settings(
            data, env=env, base_dir=file.resolve().parent, resolve_secrets=resolve_secrets
        )
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(file)) from None


def parse_settings(
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    resolve_secrets: bool = True,
) -> Settings:
    """Validate an already-parsed configuration; raises `ConfigError` listing every problem.

    ``resolve_secrets=False``: see `load_settings`."""
    environ = os.environ if env is None else env
    problems: list[str] = []
    raw = dict(data)
    if "secrets" in raw:
        problems.append("secrets: unknown key")
        raw.pop("secrets")
    unresolved: set[str] | None = None if resolve_secrets else set()
    secrets, secret_problems = _collect_secrets(raw, environ, unresolved)
    problems += secret_problems
    context = {"env": environ, "base_dir": base_dir, "resolve_secrets": resolve_secrets}
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(raw, context=context)
    except ValidationError as exc:
        problems += [_describe(error) for error in exc.errors(include_url=False)]
    problems += _cross_check(raw, secrets)
    if settings is not None:
        block = settings.queue.block_ms / 1000
        if settings.router.redis_socket_timeout <= block + 1:
            problems.append(
                f"router.redis_socket_timeout: must be more than queue.block_ms plus 1 s "
                f"({block + 1:g} s): a blocking read waits that long for an answer"
            )
        if settings.router.replicas_ack and settings.router.redis == "embedded":
            problems.append(
                "router.replicas_ack: the embedded Redis has no replicas (every step would "
                "wait out replicas_ack_timeout_ms); set 0, or point redis at a server with "
                "replicas"
            )
        shorten = [name for name, p in settings.profiles.items() if p.shorten]
        if shorten and settings.queue.retention > LINKS_MAX_RETENTION:
            problems.append(
                f"queue.retention: at most {LINKS_MAX_RETENTION:g} s (130 days) while a "
                f"profile shortens its links ({shorten[0]}): a link's hour comes round again "
                "after that"
            )
    problems = list(dict.fromkeys(problems))
    if problems or settings is None:
        raise ConfigError(problems)
    held: dict[str, SecretStr] = {k: SecretStr(v) for k, v in secrets.items()}
    held |= {name: UnresolvedSecret(f"{{secret:{name}}}") for name in unresolved or ()}
    return settings.model_copy(update={"secrets": held})


# ---------------------------------------------------------------- secrets


class UnresolvedSecret(SecretStr):
    """A secret left unresolved (``resolve_secrets=False``): it shows as ``**********``
    like any secret, and reading it raises instead of handing out a wrong value."""

    def __init__(self, reference: str) -> None:
        super().__init__("")
        self.reference = reference  # "env:NAME", "file:PATH", "{secret:NAME}": no secret

    def get_secret_value(self) -> str:
        """Never a value: this command loaded the configuration without its secrets."""
        raise RuntimeError(
            f"secret {self.reference} was not resolved (configuration loaded without "
            "secrets; only commands that need it resolve it)"
        )

    def __str__(self) -> str:
        return "**********"

    def __repr__(self) -> str:
        return f"UnresolvedSecret({self.reference!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnresolvedSecret) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)


def _resolve_reference(value: str, env: Mapping[str, str], base_dir: Any) -> str:
    """``env:NAME`` / ``file:PATH`` → the secret; anything else is the value itself."""
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        if name not in env:
            raise ValueError(f"environment variable {name} is not set")
        return env[name]
    if value.startswith("file:"):
        path = Path(value.removeprefix("file:"))
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path} ({exc.strerror})") from None
    return value


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{_key(str(key))}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")


def _collect_secrets(
    raw: Mapping[str, Any], env: Mapping[str, str], unresolved: set[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Resolve every ``{secret:NAME}`` of the HTTP templates; one that is not set is a
    problem, or goes into `unresolved` when that is given (not resolving secrets)."""
    secrets: dict[str, str] = {}
    problems: list[str] = []
    credentials = env.get("CREDENTIALS_DIRECTORY")
    for name, profile in _tables(raw.get("profiles")):
        http = profile.get("http")
        for path, text in _strings(http, f"profiles.{_key(name)}.http"):
            for ref in _SECRET_REF.findall(text):
                if ref in secrets:
                    continue
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref):
                    problems.append(f"{path}: secret name {ref!r} must be a variable name")
                elif ref in env:
                    secrets[ref] = env[ref]
                elif credentials and (Path(credentials) / ref).is_file():
                    secrets[ref] = (Path(credentials) / ref).read_text("utf-8").rstrip("\r\n")
                elif unresolved is not None:
                    unresolved.add(ref)
                else:
                    problems.append(
                        f"{path}: secret {ref} is not set (environment variable {ref} "
                        "or systemd credential)"
                    )
    return secrets, problems


# ---------------------------------------------------------------- problems


def _key(part: str) -> str:
    return part if _IDENTIFIER.match(part) else f'"{part}"'


def _describe(error: Mapping[str, Any]) -> str:
    path = ""
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + _key(str(part))
    kind = error["type"]
    message = str(error["msg"])
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "literal_error":
        shown = error.get("input")
        message = message.replace("Input should be", "must be")
        if isinstance(shown, str) and len(shown) < 40:
            message += f" (got {shown!r})"
    else:
        message = message.replace("Input should be", "must be")
    return f"{path or 'configuration'}: {message}"


def _tables(node: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(node, Mapping):
        for name, value in node.items():
            if isinstance(value, Mapping):
                yield str(name), value


def _cross_check(raw: Mapping[str, Any], secrets: Mapping[str, str]) -> list[str]:
    """Checks spanning keys or sections, on raw data so they run whatever else failed."""
    problems: list[str] = []
    profiles = raw.get("profiles")
    if not isinstance(profiles, Mapping) or not profiles:
        if "profiles" in raw:
            problems.append("profiles: at least one profile is required")
        return problems
    owner: dict[str, str] = {}
    first_global: str | None = None
    for name, profile in _tables(profiles):
        where = f"profiles.{_key(name)}"
        if not PROFILE_NAME.match(name):
            problems.append(
                f"{where}: a profile name uses only letters, digits, '_' and '-' (1-64)"
            )
        if profile.get("global") is True:
            if first_global is not None:
                problems.append(
                    f"{where}.global: only one profile may be global ('{first_global}' is)"
                )
            else:
                first_global = name
        problems += _check_numbers(where, name, profile.get("numbers"), owner)
        problems += _check_protocol(where, profile, secrets)
        problems += _check_webhooks(where, profile, raw.get("api"))
        problems += _check_inbound_direction(where, profile)
        problems += _check_rules(where, profile, raw)
        problems += _check_shorten(where, profile, raw.get("links"))
    problems += _check_number_table(raw.get("numbers"), raw.get("campaigns"), owner)
    problems += _check_routing(raw, secrets)
    problems += _check_accounts(raw)
    problems += _check_inbound_routes(raw)
    for name, template in _tables(raw.get("templates")):
        texts = template.get("text")
        lang = template.get("default_lang", "en")
        if isinstance(texts, Mapping) and texts and lang not in texts:
            problems.append(
                f"templates.{_key(name)}.default_lang: no text.{lang} (have "
                + ", ".join(sorted(map(str, texts)))
                + ")"
            )
    return problems


def _check_rules(where: str, profile: Mapping[str, Any], raw: Mapping[str, Any]) -> list[str]:
    """A profile's rule keys against the templates, campaigns and each other."""
    problems: list[str] = []
    template = profile.get("template")
    templates = raw.get("templates")
    known = set(templates) if isinstance(templates, Mapping) else set()
    if isinstance(template, str) and template not in known:
        problems.append(
            f"{where}.template: unknown template {template!r} (no [templates.{template}])"
        )
    seen: dict[str, str] = {}
    for kind in ("stop_keywords", "start_keywords", "help_keywords"):
        words = profile.get(kind)
        if not isinstance(words, list):
            continue
        for word in words:
            if not isinstance(word, str):
                continue
            folded = word.strip().upper()
            if not folded:
                problems.append(f"{where}.{kind}: a keyword must not be empty")
            elif folded in seen and seen[folded] != kind:
                problems.append(f"{where}.{kind}: {word!r} is also in {seen[folded]}")
            seen.setdefault(folded, kind)
    use_case = profile.get("default_use_case")
    campaigns = raw.get("campaigns")
    table = raw.get("numbers")
    if isinstance(use_case, str) and isinstance(campaigns, Mapping) and isinstance(table, Mapping):
        numbers = profile.get("numbers")
        for number in numbers if isinstance(numbers, list) else []:
            details = table.get(number)
            campaign = details.get("campaign") if isinstance(details, Mapping) else None
            spec = campaigns.get(campaign) if isinstance(campaign, str) else None
            allowed = spec.get("use_cases") if isinstance(spec, Mapping) else None
            if isinstance(allowed, list) and use_case not in allowed:
                problems.append(
                    f"{where}.default_use_case: {use_case!r} is not among campaign "
                    f"{campaign!r}'s use_cases (number {number})"
                )
    return problems


def _check_shorten(where: str, profile: Mapping[str, Any], links: Any) -> list[str]:
    """``shorten = true`` needs the address the short links are made of."""
    if profile.get("shorten") is not True:
        return []
    if isinstance(links, Mapping) and links.get("base_url"):
        return []
    return [
        f'{where}.shorten: needs [links] base_url (say base_url = "https://s.example.com/l": '
        "the API listener's public address plus /l, where GET /l/<code> redirects)"
    ]


def _check_numbers(where: str, name: str, numbers: Any, owner: dict[str, str]) -> list[str]:
    problems: list[str] = []
    if not isinstance(numbers, list):
        return problems
    seen: set[str] = set()
    for value in numbers:
        try:
            number = normalise_sender(value) if isinstance(value, str) else None
        except ValueError:
            number = None
        if number is None:
            continue  # the schema check reports it
        if number in seen:
            problems.append(f"{where}.numbers: {number} is listed twice")
        elif number in owner and owner[number] != name:
            problems.append(
                f"{where}.numbers: {number} already belongs to profile '{owner[number]}'"
            )
        seen.add(number)
        owner.setdefault(number, name)
    return problems


def _check_protocol(
    where: str, profile: Mapping[str, Any], secrets: Mapping[str, str], *, connector: bool = False
) -> list[str]:
    """A profile's (or, `connector`, a connector's) protocol against its sub-tables."""
    problems: list[str] = []
    protocol = profile.get("protocol")
    if protocol in _PROTOCOLS:
        if profile.get(protocol) is None:
            problems.append(f'{where}.{protocol}: required when protocol = "{protocol}"')
        for other in _PROTOCOLS:
            if other != protocol and profile.get(other) is not None:
                problems.append(
                    f'{where}.{other}: not used when protocol = "{protocol}"; remove it'
                )
    elif protocol is None and not connector:
        for other in _PROTOCOLS:
            if profile.get(other) is not None:
                problems.append(
                    f"{where}.{other}: not used without protocol (a profile without one "
                    "sends over [[routes]]); set protocol, or move it to [connectors.NAME]"
                )
    smpp = profile.get("smpp")
    if profile.get("direction") == "both":
        if isinstance(smpp, Mapping) and smpp.get("bind") == "transmitter":
            problems.append(
                f'{where}.smpp.bind: a transmitter cannot receive; direction = "both" '
                'needs bind = "transceiver"'
            )
        if not connector and not profile.get("callback_url"):
            problems.append(
                f'{where}.callback_url: required when direction = "both" '
                "(inbound messages are posted there)"
            )
    http = profile.get("http")
    if protocol == "http" and isinstance(http, Mapping):
        problems += _check_templates(where, http, secrets)
    return problems


_PROTOCOLS = ("http", "smpp", "twilio")


def _check_accounts(raw: Mapping[str, Any]) -> list[str]:
    """``[accounts]`` against the profiles, and the SMPP server's TLS files."""
    problems: list[str] = []
    profiles = dict(_tables(raw.get("profiles")))
    for name, account in _tables(raw.get("accounts")):
        where = f"accounts.{_key(name)}"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,15}", name):
            problems.append(
                f"{where}: an account name (the SMPP system_id) uses only letters, digits, "
                "'_' and '-' (1-15)"
            )
        if account.get("smpp_password") is None and account.get("api_token") is None:
            problems.append(f"{where}: needs smpp_password, api_token or both (a way in)")
        for profile in account.get("profiles") or []:
            if profile not in profiles:
                problems.append(f"{where}.profiles: no profile {profile!r}")
    server = raw.get("smpp_server")
    if isinstance(server, Mapping) and (server.get("cert") is None) != (server.get("key") is None):
        problems.append("smpp_server: cert and key go together (TLS needs both)")
    return problems


def _check_inbound_routes(raw: Mapping[str, Any]) -> list[str]:
    """``[[inbound_routes]]`` against the profiles and accounts: each route has a
    destination, and names what exists."""
    problems: list[str] = []
    routes = raw.get("inbound_routes")
    if not isinstance(routes, list):
        return problems
    profiles = dict(_tables(raw.get("profiles")))
    accounts = dict(_tables(raw.get("accounts")))
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        where = f"inbound_routes[{index}]"
        account = route.get("account")
        if route.get("callback_url") is None and account is None:
            # Said as before accounts could take inbound messages (an account is the
            # other way: see docs/configuration.md).
            problems.append(f"{where}.callback_url: required key is missing")
        if isinstance(account, str):
            if account not in accounts:
                have = ", ".join(sorted(accounts)) or "none"
                problems.append(f"{where}.account: no account {account!r} (have: {have})")
            elif accounts[account].get("smpp_password") is None:
                problems.append(
                    f"{where}.account: account {account!r} has no smpp_password (inbound "
                    "messages go to its SMPP receiver/transceiver sessions)"
                )
        names = route.get("profiles")
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str) and name not in profiles:
                problems.append(f"{where}.profiles: no profile {name!r}")
    return problems


def _check_routing(raw: Mapping[str, Any], secrets: Mapping[str, str]) -> list[str]:
    """``[connectors]`` and ``[[routes]]`` against the profiles and each other."""
    problems: list[str] = []
    profiles = dict(_tables(raw.get("profiles")))
    inline = {n for n, p in profiles.items() if p.get("protocol") is not None}
    connectors = dict(_tables(raw.get("connectors")))
    for name, connector in connectors.items():
        where = f"connectors.{_key(name)}"
        if not PROFILE_NAME.match(name):
            problems.append(
                f"{where}: a connector name uses only letters, digits, '_' and '-' (1-64)"
            )
        if name in inline:
            problems.append(
                f"{where}: profile {name!r} has an inline protocol, which is a connector "
                "of that name already; rename one"
            )
        elif name in profiles:
            problems.append(
                f"{where}: a profile is named {name!r} too (provider webhooks under "
                f"/v1/providers/{name}/ would be ambiguous); rename one"
            )
        problems += _check_protocol(where, connector, secrets, connector=True)
        problems += _check_inbound_direction(where, connector)
        fallback = connector.get("inbound_profile")
        if isinstance(fallback, str) and fallback not in profiles:
            problems.append(f"{where}.inbound_profile: no profile {fallback!r}")
    known = set(connectors) | inline
    routes = raw.get("routes")
    routes = routes if isinstance(routes, list) else []
    for index, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        where = f"routes[{index}]"
        names = route.get("connectors")
        names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        for name in names:
            if name not in known:
                have = ", ".join(sorted(known)) or "none"
                problems.append(f"{where}.connectors: no connector {name!r} (have: {have})")
        if len(set(names)) != len(names):
            problems.append(f"{where}.connectors: a connector is named twice")
        weights = route.get("weights")
        if route.get("strategy") == "weighted":
            if not isinstance(weights, list) or len(weights) != len(names):
                problems.append(
                    f'{where}.weights: strategy = "weighted" needs one weight per connector '
                    f"({len(names)})"
                )
            elif not any(w for w in weights if isinstance(w, int)):
                problems.append(f"{where}.weights: at least one weight must be above 0")
        elif weights:
            problems.append(f'{where}.weights: only used with strategy = "weighted"')
        for name in route.get("profiles") or []:
            if name not in profiles:
                problems.append(f"{where}.profiles: no profile {name!r}")
            elif name in inline:
                problems.append(
                    f"{where}.profiles: profile {name!r} sends over its own connector "
                    "(inline protocol); routes never apply to it"
                )
    for name in profiles:
        if name in inline:
            continue
        takes = [
            r
            for r in routes
            if isinstance(r, Mapping) and (not r.get("profiles") or name in r["profiles"])
        ]
        if not takes:
            problems.append(
                f"profiles.{_key(name)}.protocol: not set, and no [[routes]] entry can match "
                "this profile's messages; set protocol, or add a route"
            )
    return problems


def _check_inbound_direction(where: str, carrier: Mapping[str, Any]) -> list[str]:
    """A Web-URL inbound webhook takes messages only for a carrier that receives them."""
    http = carrier.get("http")
    if not isinstance(http, Mapping) or http.get("inbound") is None:
        return []
    if carrier.get("direction") == "both":
        return []
    return [
        f'{where}.http.inbound: needs direction = "both" (inbound messages would be '
        "answered but not stored)"
    ]


def _check_webhooks(where: str, profile: Mapping[str, Any], api: Any) -> list[str]:
    """Provider webhooks (Twilio inbound, Web-URL reports) arrive on the API: it must
    listen."""
    listen = isinstance(api, Mapping) and bool(api.get("listen"))
    if listen:
        return []
    problems: list[str] = []
    if profile.get("protocol") == "twilio" and profile.get("direction") == "both":
        problems.append(
            f'{where}.direction: "both" with protocol = "twilio" needs [api] listen '
            "(Twilio posts inbound messages to /v1/providers/<profile>/inbound there)"
        )
    http = profile.get("http")
    if isinstance(http, Mapping) and http.get("reports") is not None:
        problems.append(
            f"{where}.http.reports: needs [api] listen (reports arrive on "
            "/v1/providers/<profile>/report there)"
        )
    if isinstance(http, Mapping) and http.get("inbound") is not None:
        problems.append(
            f"{where}.http.inbound: needs [api] listen (inbound messages arrive on "
            "/v1/providers/<profile>/inbound there)"
        )
    return problems


def _check_templates(where: str, http: Mapping[str, Any], secrets: Mapping[str, str]) -> list[str]:
    """Let the Web-URL bind compile the templates: placeholders, braces, URL, id path."""
    try:
        # Without `reports`: its secret resolves against the real environment here.
        section = HttpSection.model_validate(
            {k: v for k, v in http.items() if k not in ("reports", "inbound")}
        )
    except ValidationError:
        return []  # the schema check reports it
    # A missing secret is reported once by _collect_secrets; stand in for it here.
    known = dict(secrets)
    for _path, text in _strings(dict(http), "http"):
        for ref in _SECRET_REF.findall(text):
            known.setdefault(ref, "unset")
    try:
        section.to_spec(None, secrets=known)
    except BindConfigError as exc:
        return [f"{where}.{exc}"]
    return []


def _check_number_table(table: Any, campaigns: Any, owner: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    countries: dict[str, Any] = {}
    for key, details in _tables(table):
        try:
            countries[normalise_sender(key)] = details.get("country")
        except ValueError:
            pass  # reported below
    for number, profile in owner.items():
        if sender_kind(number) == "short_code" and not countries.get(number):
            problems.append(
                f"profiles.{_key(profile)}.numbers: short code {number} needs its country: "
                f'[numbers."{number}"] country = "US" (an ISO code)'
            )
    known_campaigns = set(campaigns) if isinstance(campaigns, Mapping) else set()
    for key, details in _tables(table):
        where = f"numbers.{_key(key)}"
        try:
            number = normalise_sender(key)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if number not in owner:
            problems.append(f"{where}: {number} is in no profile's numbers")
        campaign = details.get("campaign")
        if isinstance(campaign, str) and campaign not in known_campaigns:
            problems.append(
                f"{where}.campaign: unknown campaign {campaign!r} (no [campaigns.{campaign}])"
            )
        kind = sender_kind(number)
        if campaign is not None and kind in ("short_code", "alphanumeric"):
            problems.append(
                f"{where}.campaign: a 10DLC campaign is for US/CA long codes, not a "
                f"{kind.replace('_', ' ')}"
            )
        if details.get("country") is not None and kind != "short_code":
            problems.append(f"{where}.country: only a short code takes a country")
        features = details.get("features")
        if isinstance(features, list) and "MmsSender" in features and kind == "toll_free":
            problems.append(f"{where}.features: a toll-free number cannot have MmsSender")
    return problems
