"""The Twilio bind: sends through Twilio's Messages API.

It is an `HttpSender` with Twilio's request shape: ``POST {base_url}/2010-04-01/
Accounts/{sid}/Messages.json`` as a form (``To``, ``From`` or ``MessagingServiceSid``,
``Body``, ``MediaUrl`` once per media URL of an MMS, ``StatusCallback``), HTTP Basic
auth with the account SID and auth token, and the message id read from the JSON
``sid``. Only the failure mapping is Twilio's own: a 4xx answer carries Twilio's
error code (``{"code": 21211, "message": ...}``), which becomes the outcome's code
(``twilio_21211``); 429 and 5xx are retried as for any Web-URL provider.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

import aiohttp

from .base import BindConfigError, Failed, Outcome
from .http import REASON_BODY_LIMIT, HttpSender, HttpSpec

__all__ = ["TWILIO_API", "TwilioSender", "TwilioSpec"]

TWILIO_API = "https://api.twilio.com"
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")


@dataclass(frozen=True, kw_only=True)
class TwilioSpec:
    """One Twilio account (or Messaging Service) to send through.

    `status_callback` is the URL Twilio posts each message's status changes to (the
    router's ``/v1/providers/{profile}/status``); None sends none, and messages then
    end at ``sent``.
    """

    account_sid: str
    auth_token: str = field(repr=False)
    messaging_service_sid: str | None = None
    base_url: str = TWILIO_API
    status_callback: str | None = None
    timeout: float = 10.0
    window: int = 10
    tps: float = 0.0
    sync: bool = False

    def http_spec(self) -> HttpSpec:
        """The Web-URL spec that sends as Twilio wants; raises `BindConfigError`."""
        if not _ACCOUNT_SID.match(self.account_sid):
            raise BindConfigError("twilio.account_sid: must be AC followed by 32 hex digits")
        if self.messaging_service_sid is not None and not _SERVICE_SID.match(
            self.messaging_service_sid
        ):
            raise BindConfigError(
                "twilio.messaging_service_sid: must be MG followed by 32 hex digits"
            )
        if not self.auth_token:
            raise BindConfigError("twilio.auth_token: must not be empty")
        # MediaUrl once per media URL of an MMS (none for an SMS: binds/http.py).
        form = {"To": "{to}", "Body": "{text}", "MediaUrl": "{media}"}
        if self.messaging_service_sid is not None:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            form["From"] = "{from}"
        if self.status_callback:
            form["StatusCallback"] = _literal(self.status_callback)
        basic = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        base = _literal(self.base_url.rstrip("/"))
        return HttpSpec(
            url=f"{base}/2010-04-01/Accounts/{self.account_sid}/Messages.json",
            method="POST",
            form=form,
            headers={"Authorization": "Basic {secret:basic}", "Accept": "application/json"},
            success_status=(200, 201),
            message_id="json:sid",
            timeout=self.timeout,
            window=self.window,
            tps=self.tps,
            sync=self.sync,
            # Both are redacted from every outcome's text; only `basic` is sent.
            secrets={"basic": basic, "auth_token": self.auth_token},
        )


class TwilioSender(HttpSender):
    """A `Bind` sending through Twilio's Messages API (see the module docstring)."""

    def __init__(
        self, name: str, spec: TwilioSpec, session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__(name, spec.http_spec(), session)
        self.twilio = spec

    def _outcome(
        self, status: int, text: str, retry_after: str | None, *, cut: bool = False
    ) -> Outcome:
        outcome = super()._outcome(status, text, retry_after, cut=cut)
        if not isinstance(outcome, Failed):
            return outcome
        error = twilio_error(text)
        if error is None:
            return outcome
        code, message = error
        message = " ".join(self.redact(message).split())
        if len(message) > REASON_BODY_LIMIT:
            message = message[: REASON_BODY_LIMIT - 3] + "..."
        reason = f"twilio {code} (http {status})" + (f": {message}" if message else "")
        return Failed(reason=reason, code=f"twilio_{code}", raw=outcome.raw)


def twilio_error(body: str) -> tuple[int, str] | None:
    """Twilio's error code and message from an error answer's JSON, if it has them."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    code = data.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    message = data.get("message")
    return code, message if isinstance(message, str) else ""


def _literal(text: str) -> str:
    """`text` inside an `HttpSpec` template: its braces are not placeholders."""
    return text.replace("{", "{{").replace("}", "}}")
