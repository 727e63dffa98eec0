"""SMPP 3.4 binds: our session layer on aiosmpplib's PDU classes and codecs.

One job per module:
- `session`: `SmppBind` (connect, bind, reconnect; read and write PDUs; deliver_sm;
  the submit fast path) and its `SmppSpec`;
- `window`: where each message taken is (queued, outstanding, held), time-outs and
  the parts of long messages, with no I/O;
- `pacing`: how fast to submit (rate controller, queue-full probe, their log lines);
- `bodies`: the submit_sm bodies of a message;
- `pdu`, `codec`, `receipt`: PDU framing and fields, text encoding, delivery receipts.
"""

from .session import DeliverHandler, DeliverManyHandler, SmppBind, SmppSpec, receipts_by_default

__all__ = ["DeliverHandler", "DeliverManyHandler", "SmppBind", "SmppSpec", "receipts_by_default"]
