"""Accounts at the doors: who is submitting, and may they send this.

Every door names the account its caller authenticated as: the JSON and Twilio APIs
by an account's `api_token` (bearer), Kannel's sendsms by ``username`` = the account's
name and ``password`` = its `api_token`, the SMPP server by ``system_id`` = the name
and its `smpp_password`. `admit` then applies what the account allows to each job: the
profile (its first one when the job names none), the sender. Secrets are compared in
constant time and never appear in an error.

Rates and daily quotas are counted in Redis, shared by every instance
(router/store/limits.py).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

from router.config import Account, Settings
from router.errors import RouterError
from router.numbers import normalise_sender
from router.policy.jobs import Job

__all__ = ["AccountError", "Caller", "admit", "by_password", "by_token"]

# Why a caller was refused, as each door answers it (HTTP status; SMPP command_status).
BAD_CREDENTIALS: Final = "bad_credentials"
PROFILE_NOT_ALLOWED: Final = "profile_not_allowed"
SENDER_NOT_ALLOWED: Final = "sender_not_allowed"


class AccountError(RouterError):
    """A caller or a job its account does not allow; `code` says which (the doors map
    it to their own answers), the message names the field, never a secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated account."""

    name: str
    account: Account


def _same(given: str, secret: SecretStr | None) -> bool:
    if secret is None:
        return False
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def by_token(settings: Settings, token: str) -> Caller | None:
    """The account whose `api_token` is `token`, or None."""
    for name, account in settings.accounts.items():
        if _same(token, account.api_token):
            return Caller(name, account)
    return None


def by_password(settings: Settings, name: str, password: str, *, smpp: bool) -> Caller:
    """The account `name` if `password` is its `smpp_password` (`smpp`) or its
    `api_token` (sendsms); AccountError (`bad_credentials`) otherwise, the same for an
    unknown name as for a wrong password."""
    account = settings.accounts.get(name)
    secret = None if account is None else account.smpp_password if smpp else account.api_token
    if account is None or not _same(password, secret):
        raise AccountError(BAD_CREDENTIALS, "unknown account or wrong password")
    return Caller(name, account)


def admit(caller: Caller, job: Job, settings: Settings) -> None:
    """Apply the account to `job` (in place): its default profile when the job names
    none, and refuse a profile or sender it does not allow (AccountError naming the
    field). Records which account sent it (`job.account`)."""
    account = caller.account
    if account.profiles:
        if job.profile is None:
            job.profile = account.profiles[0]
        elif job.profile not in account.profiles:
            raise AccountError(
                PROFILE_NOT_ALLOWED,
                f"profile: account {caller.name!r} may not send through {job.profile!r} "
                f"(allowed: {', '.join(account.profiles)})",
            )
    if account.senders and job.sender is not None:
        try:
            sender = normalise_sender(job.sender)
        except ValueError:
            sender = job.sender
        if sender not in account.senders:
            raise AccountError(
                SENDER_NOT_ALLOWED,
                f"from: account {caller.name!r} may not send from {job.sender!r}",
            )
    job.account = caller.name
