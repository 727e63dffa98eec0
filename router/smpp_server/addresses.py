"""Addresses as submit_sm carries them (digits with a TON and NPI) turned into what a
job carries: `to` in E.164 with '+', `from` as a sender (E.164, short code or
alphanumeric ID). The job decoder (`router.policy.jobs`) then checks them as it does
for every door; this only decides how the TON reads the digits.

TON (SMPP 3.4 section 5.2.5): 0 unknown, 1 international, 2 national, 3 network
specific, 4 subscriber number, 5 alphanumeric, 6 abbreviated. A national or subscriber
number cannot be made E.164 without knowing the client's country, so it is refused:
clients send international numbers (TON 1, or TON 0 with the country code).
"""

from __future__ import annotations

from typing import Final

from router.smpp_server.statuses import (
    ESME_RINVDSTADR,
    ESME_RINVDSTNPI,
    ESME_RINVDSTTON,
    ESME_RINVSRCADR,
    ESME_RINVSRCNPI,
    ESME_RINVSRCTON,
    Refused,
)

__all__ = ["destination", "source"]

TON_UNKNOWN, TON_INTERNATIONAL, TON_NATIONAL, TON_NETWORK = 0, 1, 2, 3
TON_SUBSCRIBER, TON_ALPHANUMERIC, TON_ABBREVIATED = 4, 5, 6
# NPI values SMPP 3.4 defines (section 5.2.6).
NPIS: Final = frozenset({0, 1, 3, 4, 6, 8, 9, 10, 14, 18})
SHORT_CODE_DIGITS: Final = 8  # TON 0 digits up to this many are a short code


def destination(address: str, ton: int, npi: int) -> str:
    """destination_addr as a job's `to` ("+" and the digits); Refused otherwise."""
    if ton > TON_ABBREVIATED:
        raise Refused(ESME_RINVDSTTON, f"dest_addr_ton {ton} is not a TON")
    if npi not in NPIS:
        raise Refused(ESME_RINVDSTNPI, f"dest_addr_npi {npi} is not an NPI")
    digits = address.removeprefix("+")
    if not digits:
        raise Refused(ESME_RINVDSTADR, "destination_addr is empty")
    if ton not in (TON_UNKNOWN, TON_INTERNATIONAL):
        raise Refused(
            ESME_RINVDSTADR,
            f"destination_addr with dest_addr_ton {ton}: send international numbers "
            "(TON 1, digits with the country code)",
        )
    if not digits.isdigit() or not digits.isascii():
        raise Refused(ESME_RINVDSTADR, f"destination_addr {address!r} is not a number")
    return "+" + digits


def source(address: str, ton: int, npi: int) -> str | None:
    """source_addr as a job's `from`, None when empty (the profile picks the sender);
    Refused when the TON or NPI is not one, or a national number is given."""
    if ton > TON_ABBREVIATED:
        raise Refused(ESME_RINVSRCTON, f"source_addr_ton {ton} is not a TON")
    if npi not in NPIS:
        raise Refused(ESME_RINVSRCNPI, f"source_addr_npi {npi} is not an NPI")
    if not address:
        return None
    digits = address.removeprefix("+")
    numeric = digits.isdigit() and digits.isascii()
    long_number = address.startswith("+") or len(digits) > SHORT_CODE_DIGITS
    if ton == TON_INTERNATIONAL or (ton == TON_UNKNOWN and numeric and long_number):
        if not numeric:
            raise Refused(ESME_RINVSRCADR, f"source_addr {address!r} is not a number")
        return "+" + digits
    if ton in (TON_NATIONAL, TON_SUBSCRIBER):
        raise Refused(
            ESME_RINVSRCADR,
            f"source_addr with source_addr_ton {ton}: send international numbers "
            "(TON 1), short codes (TON 3) or alphanumeric IDs (TON 5)",
        )
    # A short code (TON 3, 6, or a few digits) or an alphanumeric ID (TON 5): the job
    # decoder checks which it is.
    return address
