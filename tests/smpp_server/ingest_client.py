"""A raw asyncio SMPP client that submits as fast as a window allows, in a process of
its own (so the figure is the server's, not the client's CPU).

python -m tests.smpp_server.ingest_client PORT COUNT WINDOW SYSTEM_ID PASSWORD
Prints {"ok": N, "seconds": S}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from binds.smpp import pdu

from .raw import RawClient, submit_body


async def submit(port: int, count: int, window: int, system_id: str, password: str) -> None:
    client = await RawClient.connect(port)
    answer = await client.bind(system_id, password)
    assert answer.status == 0, pdu.status_name(answer.status)
    bodies = [submit_body(f"+4479111{n % 100_000:05d}", b"ingest %d" % n) for n in range(count)]
    free = asyncio.Semaphore(window)
    ok = 0

    async def read_all() -> None:
        nonlocal ok
        for _ in range(count):
            answer = await client.read(60)
            assert answer is not None and answer.command_id == pdu.SUBMIT_SM | pdu.RESPONSE
            ok += answer.status == 0
            free.release()

    started = time.perf_counter()
    reader = asyncio.create_task(read_all())
    for body in bodies:
        await free.acquire()
        client.send(pdu.SUBMIT_SM, body)
    await reader
    seconds = time.perf_counter() - started
    await client.request(pdu.UNBIND)
    await client.close()
    print(json.dumps({"ok": ok, "seconds": seconds}))


if __name__ == "__main__":
    port, count, window = (int(a) for a in sys.argv[1:4])
    asyncio.run(submit(port, count, window, sys.argv[4], sys.argv[5]))
