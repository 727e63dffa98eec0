"""The SMPP 3.4 server: client applications bind and submit.

``[smpp_server] listen`` (off when absent; TLS with `cert` and `key`). A client binds
as transmitter, receiver or transceiver with system_id = an account's name and
password = its `smpp_password`; each submit_sm (or data_sm) becomes a job through the
same checks as every other door, and its submit_sm_resp carries the job id, sent only
once the job is durably in Redis.

- `listener`: the server (start, configure on reload, stop).
- `session`: one connection: bind, submits, enquire_link, unbind, generic_nack.
- `submit`: submit_sm / data_sm bodies read into a `Part`; `addresses`, `times`: its
  fields as a job takes them.
- `reassembly`: long messages' parts held in Redis until the whole message is there.
- `intake`: a message made a job, admitted, limited, checked and enqueued.
- `receipts`: final statuses relayed to the submitting account's receipt stream and
  sent to its receiver/transceiver sessions as deliver_sm receipts; inbound messages
  an `[[inbound_routes]]` entry gives to an account go the same way (`inbound`).
- `wire`: bind bodies, response bodies, framing; `statuses`: the answers.
"""

from router.smpp_server.listener import SmppServer

__all__ = ["SmppServer"]
