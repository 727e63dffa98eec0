"""SMPP 3.4 command statuses the server answers with (section 5.1.3) beyond those
`binds.smpp.pdu` names, and `Refused`: why a PDU gets one of them."""

from __future__ import annotations

from typing import Final

from binds.smpp import pdu
from router.errors import RouterError

__all__ = ["Refused", "name"]

ESME_RINVREGDLVFLG: Final = 0x07
ESME_RINVSRCADR: Final = 0x0A
ESME_RINVDSTADR: Final = 0x0B
ESME_RINVSERTYP: Final = 0x15
ESME_RINVESMCLASS: Final = 0x43
ESME_RSUBMITFAIL: Final = 0x45
ESME_RINVSRCTON: Final = 0x48
ESME_RINVSRCNPI: Final = 0x49
ESME_RINVDSTTON: Final = 0x50
ESME_RINVDSTNPI: Final = 0x51
ESME_RINVSCHED: Final = 0x61
ESME_RINVEXPIRY: Final = 0x62
ESME_RINVOPTPARSTREAM: Final = 0xC0
ESME_ROPTPARNOTALLWD: Final = 0xC1
ESME_RINVPARLEN: Final = 0xC2
ESME_RMISSINGOPTPARAM: Final = 0xC3
ESME_RINVOPTPARAMVAL: Final = 0xC4


def name(status: int) -> str:
    """A command status as logs show it: ``ESME_RINVDSTADR``."""
    return pdu.status_name(status)


class Refused(RouterError):
    """A request answered with `status` (never ESME_ROK); `reason` says why, for the
    log line (never a secret)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{name(self.status)}: {self.reason}"
