"""SMPP 3.4 binds: our session layer on aiosmpplib's PDU classes and codecs."""

from .session import DeliverHandler, SmppBind, SmppSpec

__all__ = ["DeliverHandler", "SmppBind", "SmppSpec"]
