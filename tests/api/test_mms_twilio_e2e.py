"""An MMS through the whole chain with the official Twilio SDK: the SDK posts
``media_url`` to the router's Twilio-compatible API, the router checks the media and
sends it over a Twilio bind to a local provider that records the request (``MediaUrl``
once per URL), the provider's signed status callback brings it to ``delivered``, and
the application's status callback gets it with its media."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router.config import Settings, parse_settings
from router.store.ledger import Ledger

from ..binds.test_smpp_flow import Inbox
from ..conftest import Provider, RunningDaemon, wait_for
from ..policy import test_media
from ..policy.test_media import Serve
from . import test_api_twilio, test_providers
from .test_api_twilio import ACCOUNT, TOKEN, sdk, started
from .test_providers import ENV, TW_NUMBER, FakeTwilio, providers_config

serve = test_media.serve  # a media server on a loopback address
twilio = test_providers.twilio  # the recording Twilio provider
inbox = test_providers.inbox
status_app = test_api_twilio.status_app  # the application's status callback

TO = "+14155552690"


async def test_the_twilio_sdk_sends_an_mms_through_the_router_to_twilio(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    twilio: FakeTwilio,
    inbox: Inbox,
    serve: Serve,
    status_app: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    site = await serve("127.0.0.2")
    media = [f"{site.base}/a.png", f"{site.base}/card.vcf"]
    data = providers_config(redis_url, provider.url, twilio.url, inbox.url, tmp_path)
    data["numbers"][TW_NUMBER]["features"].append("MmsSender")
    data["router"]["media_allow_networks"] = ["127.0.0.2/32"]
    data["api"]["twilio"] = {"account_sid": ACCOUNT, "auth_token": TOKEN}
    running = run_daemon(parse_settings(data, env=ENV, base_dir=tmp_path))
    base = await started(running)
    client = sdk(base)
    callback_url, callbacks = status_app

    message = await asyncio.to_thread(
        client.messages.create,
        to=TO,
        from_=TW_NUMBER,
        body="the photo",
        media_url=media,
        status_callback=callback_url,
    )
    assert message.num_media == "2"

    # The provider got one MediaUrl per URL, from the number with MmsSender.
    await wait_for(lambda: bool(twilio.media), 15, "the Twilio provider's request")
    assert twilio.media == [media]
    (request,) = twilio.requests
    assert (request["From"], request["To"], request["Body"]) == (TW_NUMBER, TO, "the photo")

    # Its status callback brings the message to delivered; the record shows the media.
    ledger = Ledger(redis, retention=60, events_maxlen=1000)

    async def delivered() -> bool:
        record = await ledger.get(str(message.sid))
        return bool(record and record["status"] == "delivered")

    await wait_for(delivered, 15, "delivered")
    record = await ledger.get(str(message.sid))
    assert record is not None
    assert (record["media"], record["num_media"], record["mms"]) == (media, 2, "mms")
    assert ("delivered", 200) in twilio.callbacks

    fetched = await asyncio.to_thread(client.messages(str(message.sid)).fetch)
    assert (fetched.status, fetched.num_media) == ("delivered", "2")
    listed = await asyncio.to_thread(client.messages(str(message.sid)).media.list)
    assert len(listed) == 2

    # The application's status callback: delivered, with the media.
    await wait_for(lambda: any(c["status"] == "delivered" for c in callbacks), 15, "callback")
    (last,) = [c for c in callbacks if c["status"] == "delivered"]
    assert last["id"] == message.sid
