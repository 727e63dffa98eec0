"""The MMS stage: whether a message with media goes as an MMS, as an SMS with links, or
not at all; run by the planner for the jobs of a batch that carry media, before the
senders are picked.

1. Media checks (`MediaChecker`: a HEAD per URL, cached, no request to private
   addresses unless ``[router] media_allow_private``): a URL that answers no 2xx, not
   an image, audio, video or vCard, or more than the profile's ``mms_max_bytes``
   refuses the message ``media_refused``, naming it (``media[1] https://...: content
   type text/html is not ...``).
2. Who may send it as an MMS: a number of the profile that may send the message at all
   (the rules), has the ``MmsSender`` feature, is neither toll-free nor an alphanumeric
   sender ID, and has a route to the recipient with a connector that carries media
   (Twilio; a Web-URL provider whose template uses ``{media}``; never SMPP). Those
   numbers are the only ones the pick may choose (`Want.only`).
3. When none may: the profile's ``mms_fallback``. ``link`` sends an SMS whose text is
   the message's text and its media URLs, one a line (`with_links`; shortened with
   the rest of the text when the profile shortens its links), the reason kept on the
   job (`Job.fallback`: the record's `sending` step notes it, `mms` = ``link``);
   ``reject`` refuses it ``mms_not_supported`` naming why.

Jobs without media pass untouched and cost nothing here. Everything but the media
checks is a pure decision: `sms-router route --mms` asks `MmsStage.decide` as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from router.config import Profile, Settings
from router.policy.jobs import Job
from router.policy.media import MediaChecker, MediaError
from router.policy.routes import RouteTable
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import Want

__all__ = ["MEDIA_REFUSED", "MMS_NOT_SUPPORTED", "MmsStage", "with_links"]

MEDIA_REFUSED = "media_refused"
MMS_NOT_SUPPORTED = "mms_not_supported"
_REASONS_SHOWN = 3  # numbers named in a reason; the rest are counted


class MmsStage:
    """The MMS decisions of one profile (see the module docstring)."""

    def __init__(
        self, name: str, settings: Settings, rules: SenderRules, table: RouteTable
    ) -> None:
        self.name = name
        self.profile: Profile = settings.profiles[name]
        self.rules = rules
        self.table = table
        self._router = settings.router
        self._checker: MediaChecker | None = None  # made at the first MMS

    @property
    def checker(self) -> MediaChecker:
        """The media checker (its HTTP session is opened at the first MMS)."""
        if self._checker is None:
            router = self._router
            self._checker = MediaChecker(
                allow_private=router.media_allow_private,
                allow_networks=[str(n) for n in router.media_allow_networks],
                timeout=router.media_timeout,
            )
        return self._checker

    async def close(self) -> None:
        """Close the media checker's HTTP session."""
        if self._checker is not None:
            await self._checker.close()

    async def screen(self, jobs: Sequence[Job], wants: Sequence[Want]) -> None:
        """Decide each job with media (see the module docstring): a refusal goes on its
        want; an MMS's want gets the numbers that may send it; a fallback rewrites the
        job's text. Every job's media are checked at the same time."""
        mms = [(job, want) for job, want in zip(jobs, wants, strict=True) if job.media]
        if not mms:
            return
        limit = self.profile.mms_max_bytes
        checks = await asyncio.gather(
            *(self.checker.check(job.media, limit) for job, _ in mms), return_exceptions=True
        )
        for (job, want), checked in zip(mms, checks, strict=True):
            if want.refused is not None:
                continue
            if isinstance(checked, MediaError):
                want.refused = Refusal(MEDIA_REFUSED, str(checked))
            elif isinstance(checked, BaseException):
                raise checked  # a bug in the checker, not the message's fault
            else:
                want.refused = self.decide(job, want)

    def decide(self, job: Job, want: Want) -> Refusal | None:
        """For a job with media whose media passed: the numbers that may send it as an
        MMS (on `want`), or the fallback (the job's text and `fallback` rewritten), or
        the refusal (``mms_fallback = "reject"``)."""
        use_case = want.use_case
        capable = self.rules.capable(job.to, use_case)
        candidates = (want.sender,) if want.sender is not None else capable.numbers
        if not candidates:
            return None  # no number may send it at all: the pick says why
        problems: list[str] = []
        able: list[str] = []
        for number in candidates:
            problem = self.mms_problem(number, job.to, use_case)
            if problem is None:
                able.append(number)
            else:
                problems.append(problem)
        if able:
            want.only = frozenset(able)
            return None
        reason = "; ".join(problems[:_REASONS_SHOWN])
        if len(problems) > _REASONS_SHOWN:
            reason += f" (and {len(problems) - _REASONS_SHOWN} more)"
        if self.profile.mms_fallback == "reject":
            return Refusal(
                MMS_NOT_SUPPORTED,
                f"profile {self.name!r} cannot send an MMS to {job.to}: {reason}",
            )
        job.fallback = reason
        job.text = with_links(job.text or "", job.media)
        return None

    def mms_problem(self, number: str, to: str, use_case: str | None) -> str | None:
        """Why `number` cannot send an MMS to `to`, or None when it can."""
        problem = self.rules.mms_problem(number)
        if problem is not None:
            return problem
        if self.table.match(self.name, to, number, use_case, "mms") is None:
            return f"no route carries MMS from {number} to {to} (no connector of it takes media)"
        return None


def with_links(text: str, media: Sequence[str]) -> str:
    """An MMS's text as the SMS that stands in for it: the text, then each media URL on
    a line of its own."""
    links = "\n".join(media)
    return f"{text}\n{links}" if text else links
