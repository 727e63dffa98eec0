"""Checks of a decoded job against its profile, before anything is recorded or sent.

`JobCheck.text` is the one verdict on a job's content: every door (`Client`, so the
HTTP API, the Twilio API and the CLI) runs it before enqueuing, and the worker runs
it again when it plans the job (a job may arrive by plain ``XADD``, or the
configuration may have changed since). Doors and worker call the same code, so a job
a door accepts is one the worker will compose, and a job the worker would
dead-letter is refused at the door with the same reason. Everything here runs on the
event loop for every job, so each check is cheap and bounded whatever was sent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from binds.smpp.codec import EncodeError, Encoding, LongMode, count_segments
from router.config import Profile, Template
from router.policy.compose import TemplateError, pick_text, render, smart_encode
from router.policy.jobs import Job, JobError

__all__ = ["JobCheck", "check_sender", "text_problem"]

# The most characters one SMS part carries in any alphabet (a single GSM message).
# A text longer than max_segments times this cannot fit, whatever its characters.
_MOST_CHARS_PER_PART = 160
# The fewest units one part of a long message carries (UCS2 with a 16-bit reference).
_FEWEST_UNITS_PER_PART = 66


class JobCheck:
    """Composes and checks jobs for one profile: the text (template, language, smart
    encoding) must fit the profile, and a chosen sender must be one of its numbers."""

    def __init__(self, name: str, profile: Profile, templates: Mapping[str, Template]) -> None:
        self.name = name
        self.profile = profile
        self._templates = templates
        self._owned = frozenset(profile.numbers)

    def text(self, job: Job) -> str:
        """The text `job` sends through this profile, or JobError naming the field
        (``text``, ``template``, ``vars.NAME``, ``from``). Reads the job, changes
        nothing: the worker puts the result on the job, a door only wants the verdict."""
        text = job.text
        if text is None:
            if job.media and job.template is None and self.profile.template is None:
                # An MMS may be its media alone (Twilio's MediaUrl without a Body).
                check_sender(job, self.name, self._owned)
                return ""
            text = self._render(job)
        if self.profile.smart_encoding:
            text = smart_encode(text)
        problem = _text_problem(text, self.profile)
        if problem is not None:
            raise JobError("text", problem)
        check_sender(job, self.name, self._owned)
        return text

    def _render(self, job: Job) -> str:
        name = job.template or self.profile.template
        if name is None:
            raise JobError(
                "text", f"required (or 'template'; profile {self.name!r} has no default template)"
            )
        template = self._templates.get(name)
        if template is None:
            raise JobError("template", f"unknown template {name!r}")
        try:
            text = render(
                pick_text(template.text, template.default_lang, job.lang), job.vars, job.meta
            )
        except TemplateError as exc:
            # A missing or unusable value names its variable: `vars.code`, or
            # `meta.code` when the value that cannot be used came from `meta`.
            where = "template"
            if exc.variable is not None:
                own = exc.variable not in job.vars and exc.variable in job.meta
                where = f"{'meta' if own else 'vars'}.{exc.variable}"
            raise JobError(where, f"{exc} (template {name!r})") from None
        if not text:
            raise JobError("text", f"template {name!r} rendered an empty text")
        return text


def check_sender(job: Job, profile: str, owned: Collection[str]) -> None:
    """JobError if the job names a sender (`from`) that is not one of `owned`."""
    if job.sender is not None and job.sender not in owned:
        raise JobError("from", f"{job.sender} is not a number of profile {profile!r}")


def text_problem(text: str, profile: Profile) -> str | None:
    """Why `text` cannot be sent through `profile` (``job.text: ...``), or None: too
    many parts, or (for an SMPP profile with a forced alphabet) a character the
    alphabet lacks."""
    problem = _text_problem(text, profile)
    return None if problem is None else f"job.text: {problem}"


def segments(text: str, profile: Profile) -> int:
    """The parts `text` is sent (and billed) in through `profile` (1 when it cannot be
    encoded: the check that refuses it runs elsewhere)."""
    encoding, long_mode = _coding(profile)
    try:
        return count_segments(text, encoding=encoding, long_mode=long_mode)
    except EncodeError:
        return 1


def _coding(profile: Profile) -> tuple[Encoding, LongMode]:
    """The alphabet and long-message mode texts of `profile` are counted in."""
    if profile.smpp is None:
        return "auto", "udh8"  # HTTP providers: the GSM/UCS2 rule, 160/153 and 70/67
    mode = profile.smpp.long_messages
    # message_payload is one PDU, but the SMSC still cuts (and bills) it in parts.
    return profile.smpp.encoding, "udh8" if mode == "payload" else mode


def _text_problem(text: str, profile: Profile) -> str | None:
    limit = profile.max_segments
    # Cheap bound first: counting is O(len(text)), and a 1 MB text must not cost the
    # loop more than this comparison.
    if len(text) > limit * _MOST_CHARS_PER_PART:
        return (
            f"{len(text)} characters, more than max_segments = {limit} "
            f"can carry (at most {limit * _MOST_CHARS_PER_PART})"
        )
    encoding, long_mode = _coding(profile)
    # Every character is at most 2 units (a GSM escape pair, a UTF-16 surrogate pair)
    # and a part holds at least 66 units: a text within that bound fits without
    # counting, in the automatic alphabet, once it holds no lone surrogate (which
    # UTF-16 cannot carry; str.encode finds one in C).
    if encoding == "auto" and -(-2 * len(text) // _FEWEST_UNITS_PER_PART) <= limit:
        try:
            text.encode("utf-16-be")
        except UnicodeEncodeError:
            pass
        else:
            return None
    try:
        parts = count_segments(text, encoding=encoding, long_mode=long_mode)
    except EncodeError as exc:
        return str(exc)
    if parts > limit:
        return f"{parts} segments, more than max_segments = {limit}"
    return None
