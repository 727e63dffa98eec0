"""What every session of the server shares: the settings, the intake, the long
messages being put together, and who is bound."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.config import Settings
from router.smpp_server.intake import Intake
from router.smpp_server.reassembly import Reassembly

__all__ = ["Context"]


@dataclass
class Context:
    """Shared by the server's sessions (one per instance)."""

    settings: Settings
    intake: Intake
    reassembly: Reassembly
    # Sessions bound now, by account name (an account's `max_binds` counts them).
    bound: dict[str, set[object]] = field(default_factory=dict)
    sessions: set[object] = field(default_factory=set)  # every open connection

    def binds_of(self, account: str) -> int:
        """Sessions of `account` bound now."""
        return len(self.bound.get(account, ()))
