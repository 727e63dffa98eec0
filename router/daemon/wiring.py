"""Wiring: from a profile's configuration to its binds.

Each protocol section of the configuration builds its bind's spec (`to_spec` in
router/config.py); this module picks the bind class, names each bind and hands the
SMPP sessions the handler of the messages they receive.
"""

from __future__ import annotations

from binds.base import Bind
from binds.http import HttpSender
from binds.smpp import DeliverHandler, DeliverManyHandler, SmppBind
from binds.twilio import TwilioSender
from router.config import Connector, Profile, Settings

__all__ = ["build_binds"]


def build_binds(
    name: str,
    profile: Profile | Connector,
    settings: Settings,
    on_deliver: DeliverHandler | None = None,
    *,
    on_deliver_many: DeliverManyHandler | None = None,
    status_callback: str | None = None,
) -> list[Bind]:
    """The binds of one connector (`profile`: a ``[connectors]`` entry, or a profile
    with an inline protocol): one HTTP sender, one Twilio sender (its StatusCallback
    `status_callback`), or `smpp.binds` SMPP sessions (what they receive goes to
    `on_deliver_many` a read at a time when given, else to `on_deliver`)."""
    if profile.protocol == "twilio" and profile.twilio is not None:
        twilio = profile.twilio.to_spec(profile, status_callback=status_callback)
        return [TwilioSender(f"{name}/twilio", twilio)]
    if profile.protocol == "http" and profile.http is not None:
        secrets = {key: value.get_secret_value() for key, value in settings.secrets.items()}
        return [HttpSender(f"{name}/http", profile.http.to_spec(profile, secrets=secrets))]
    if profile.protocol == "smpp" and profile.smpp is not None:
        session = profile.smpp.to_spec(profile, sender_addresses=settings.sender_addresses())
        return [
            SmppBind(f"{name}/smpp{i}", session, on_deliver, on_deliver_many=on_deliver_many)
            for i in range(profile.smpp.binds)
        ]
    return []
