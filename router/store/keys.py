"""Every Redis key the router uses, in one place.

All keys of one profile share the hash tag ``{P}`` so that each multi-key step
(record and publish, defer to the schedule, dead-letter, promote) stays in one Redis
Cluster slot; every key a script touches is passed to it in KEYS. The exceptions
stand alone: the daily caps (one key, ``{caps}``), the job id locator of older versions
(read, no longer written), the health and lease records of instances.
"""

from __future__ import annotations

import time

GROUP = "router"


def queue(profile: str) -> str:
    """Work stream of a profile (consumer group `GROUP`)."""
    return f"sms:{{{profile}}}:q"


def schedule(profile: str) -> str:
    """Sorted set of scheduled sends and retry back-offs, scored by due time."""
    return f"sms:{{{profile}}}:sched"


def dead_letters(profile: str) -> str:
    """Dead-letter stream: the job as it came and the reason."""
    return f"sms:{{{profile}}}:dlq"


def round_robin(profile: str) -> str:
    """Counter shared by every instance so sender numbers rotate globally."""
    return f"sms:{{{profile}}}:rr"


def stats(profile: str) -> str:
    """Hash of counters (possible duplicates, dead letters, duplicates dropped...)."""
    return f"sms:{{{profile}}}:stats"


def provider_id(profile: str, provider_message_id: str) -> str:
    """Provider message id -> job id, so delivery reports find their message."""
    return f"sms:{{{profile}}}:pmid:{provider_message_id}"


def utc_day(at: float | None = None) -> str:
    """The UTC day (YYYY-MM-DD) of Unix time `at` (default: now): the day spend and
    account quotas are counted in."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if at is None else at))


def spend(profile: str, day: str) -> str:
    """Hash: the money `profile`'s sent messages cost on UTC `day` (YYYY-MM-DD), in
    millionths of the price lists' unit: ``total`` and one field per connector
    (finish.lua; `spend_amount` reads one)."""
    return f"sms:{{{profile}}}:spend:{day}"


def record(profile: str, job_id: str) -> str:
    """Message record (hash) of one job of `profile`."""
    return f"sms:{{{profile}}}:msg:{job_id}"


def locator(job_id: str) -> str:
    """Job id -> the profile whose record it is, written by versions before the
    locator was folded in (with the record's retention; no longer written: a record is
    found by looking in each configured profile). Read only for an id no configured
    profile holds, until the last expires. Not hash-tagged."""
    return f"sms:loc:{job_id}"


def events(profile: str) -> str:
    """The profile's event stream: its status changes and inbound messages (trimmed by
    length). A view over every profile is a merge of these (router/store/smslog.py and
    router/api/events.py)."""
    return f"sms:{{{profile}}}:events"


def callbacks(profile: str) -> str:
    """Status changes of the profile's messages that have a status_callback_url,
    waiting to be POSTed (consumer group ``posters``)."""
    return f"sms:{{{profile}}}:callbacks"


def callback_dead_letters(profile: str) -> str:
    """Status callbacks given up, with the reason."""
    return f"sms:{{{profile}}}:callbacks:dlq"


def profile_of_queue(key: str) -> str | None:
    """Inverse of `queue`: the profile name inside ``sms:{P}:q``."""
    if key.startswith("sms:{") and key.endswith("}:q"):
        return key[5:-3]
    return None


def early_bucket(profile: str, bucket: int) -> str:
    """Hash: provider id -> a delivery report that arrived before its message was
    recorded sent (applied by the step that records `sent`), of the reports that came in
    time bucket `bucket` (unix seconds // the time a report is kept). The hash expires
    as a whole a bucket after its own ends, so a report never applied is dropped with
    it: no deadline of its own to keep."""
    return f"sms:{{{profile}}}:early:{bucket}"


def early_reports(profile: str) -> str:
    """Hash: early reports as the older layout kept them (one hash, each report's
    deadline in `early_deadlines`); still applied and swept after an upgrade."""
    return f"sms:{{{profile}}}:early"


def early_deadlines(profile: str) -> str:
    """Sorted set: the older layout's early reports' provider ids, scored by when each
    is dropped."""
    return f"sms:{{{profile}}}:early:due"


def awaiting_reports(profile: str) -> str:
    """Sorted set of sent messages (job ids) waiting for a delivery report, by deadline."""
    return f"sms:{{{profile}}}:awaiting"


def inbound(profile: str) -> str:
    """Stream of inbound messages waiting to be posted to the profile's callback_url."""
    return f"sms:{{{profile}}}:in"


def inbound_parts(profile: str, source: str, reference: str) -> str:
    """Hash of the parts received so far of one concatenated inbound message."""
    return f"sms:{{{profile}}}:parts:{source}:{reference}"


def inbound_partial(profile: str) -> str:
    """Sorted set of incomplete concatenated messages, scored by their deadline."""
    return f"sms:{{{profile}}}:partial"


def sticky(profile: str, recipient: str) -> str:
    """The sender number a recipient keeps getting (``sticky`` strategy), with a TTL."""
    return f"sms:{{{profile}}}:sticky:{recipient}"


def campaign_counts(day: str) -> str:
    """Hash of one UTC day (YYYYMMDD): campaign id -> messages counted against its cap.
    One key for every campaign (a campaign's numbers may span profiles), so a batch's
    caps are one single-slot script call."""
    return f"sms:{{caps}}:{day}"


def opt_outs(profile: str) -> str:
    """Set of the E.164 numbers that opted out of the profile (STOP)."""
    return f"sms:{{{profile}}}:optout"


def block_list(profile: str) -> str:
    """Set of numbers or prefixes the profile never sends to (besides its config)."""
    return f"sms:{{{profile}}}:block"


def allow_list(profile: str) -> str:
    """Set of numbers or prefixes the profile only sends to (besides its config)."""
    return f"sms:{{{profile}}}:allow"


def lists_version(profile: str) -> str:
    """Counter INCR'd by every change of the block/allow sets, so readers reload them."""
    return f"sms:{{{profile}}}:lists:ver"


def spend_amount(raw: bytes | str | int | None) -> float:
    """A field of a `spend` hash in the price lists' unit (stored in millionths)."""
    return int(raw) / 1_000_000 if raw is not None else 0.0


def long_message_parts(
    account: str, source: str, destination: str, reference: int, total: int, kind: str
) -> str:
    """Hash: the parts received so far of one long message an SMPP client of `account`
    is sending (`kind` ``bits8``, ``bits16`` or ``sar``): ``id`` (the job id the parts
    were answered with), ``total``, ``n`` (parts held), ``p<seq>`` (each part, packed),
    and once decided ``done`` (enqueued) or ``expired`` (recorded rejected)."""
    return f"sms:{{acct:{account}}}:parts:{source}:{destination}:{reference}:{total}:{kind}"


def long_message_due(account: str) -> str:
    """Sorted set of `account`'s long messages being put together (their parts keys),
    scored by when a sweeper takes them (ms, Redis' clock): the reassembly time-out,
    then a lease while one instance enqueues or rejects it."""
    return f"sms:{{acct:{account}}}:parts:due"


def links_hour(profile: str, hour: str) -> str:
    """Hash: the tracked links `profile` made in the hour named `hour` (two letters;
    router/links.py): field = code, value = JSON {u: original URL, i: message id, c:
    status callback URL}; expires `retention` after the hour."""
    return f"sms:{{{profile}}}:links:{hour}"


def message_clicks(profile: str, message_id: str) -> str:
    """Counter: one message's clicks on its tracked links (expires with its link)."""
    return f"sms:{{{profile}}}:clicks:msg:{message_id}"


def top_clicks(profile: str, day: str) -> str:
    """Sorted set: the profile's most clicked messages (id -> clicks) on UTC `day`
    (YYYY-MM-DD)."""
    return f"sms:{{{profile}}}:clicks:top:{day}"


def recipient_index(profile: str, day: str) -> str:
    """Sorted set: `profile`'s messages created on UTC `day` (YYYYMMDD, `recipient_day`),
    for the console's search by recipient. Every member scores 0 and reads
    ``<to>|<stamp>|<id>`` (`recipient_member`: the record's `to`, its creation time as
    `recipient_stamp`, its job id), so one recipient's messages are a lexicographic
    range (ZRANGE BYLEX) in time order. One ZADD per message, by the step that creates
    its record (enqueue.lua, sending.lua; none when ``[queue] recipient_index = false``);
    no key per recipient. The whole day expires the retention after the day ends."""
    return f"sms:{{{profile}}}:to:{day}"


RECIPIENT_STAMP_WIDTH = 11  # base 36 digits of a time in microseconds (to year 5000+)
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def recipient_day(at: float) -> str:
    """The UTC day (YYYYMMDD) of Unix time `at`: the recipient index that holds the
    messages created then."""
    return time.strftime("%Y%m%d", time.gmtime(at))


def recipient_stamp(at: str | float) -> str:
    """A creation time (`now` as the ledger formats it, ``<s>.<us>``, or a float) as
    `RECIPIENT_STAMP_WIDTH` base-36 digits of microseconds, zero-padded: compared as
    text they are in time order."""
    if isinstance(at, str):
        whole, _, frac = at.partition(".")
        us = int(whole) * 1_000_000 + int((frac + "000000")[:6])
    else:
        us = max(0, round(at * 1_000_000))
    digits = ""
    while us:
        us, d = divmod(us, 36)
        digits = _BASE36[d] + digits
    return digits.rjust(RECIPIENT_STAMP_WIDTH, "0")


def recipient_stamp_time(stamp: str) -> float:
    """The Unix time a `recipient_stamp` stands for (ValueError when it is none)."""
    if len(stamp) != RECIPIENT_STAMP_WIDTH or stamp.strip(_BASE36):
        raise ValueError(f"not a recipient index time: {stamp!r}")
    return int(stamp, 36) / 1_000_000


def recipient_member(to: str, stamp: str, job_id: str) -> str:
    """A recipient index member: ``<to>|<stamp>|<job id>`` (enqueue.lua and
    sending.lua build the same)."""
    return f"{to}|{stamp}|{job_id}"


def health_index() -> str:
    """Sorted set: the instances that publish health records, scored by the time of
    their latest one (router/store/instances.py): readers find the records without
    a SCAN of the keyspace."""
    return "sms:instances"  # not under sms:health:*, which names the records


def health(instance: str) -> str:
    """Where a running instance publishes its health record (JSON, short TTL; written
    by the daemon, read by `sms-router health` and the web console)."""
    return f"sms:health:{instance}"


def console_session(digest: str) -> str:
    """Hash: one web console session (caller name, scopes, CSRF token, created and
    last-seen times), named by the SHA-256 of its cookie value so a copy of Redis holds
    no usable cookie; expires with the session."""
    return f"sms:console:session:{digest}"


def console_sessions_pattern() -> str:
    """SCAN pattern of every web console session (`console_session`)."""
    return "sms:console:session:*"


def console_failures(address: str) -> str:
    """Counter: wrong tokens given to the web console's sign-in from one client
    address in the current throttle window (expires with the window)."""
    return f"sms:console:fail:{address}"
