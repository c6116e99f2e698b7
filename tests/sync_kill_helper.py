"""Subprocess for test_sync: deliver the outbox's pending windows to PostgreSQL, COMMIT, then
SIGKILL itself before marking them synced locally (the crash window store-and-forward must
survive).

Usage: SOUNDSCAPE_TEST_DSN=... python sync_kill_helper.py QUEUE_DB
Prints the number of rows the committed batch inserted, then dies by SIGKILL.
"""

import asyncio
import os
import signal
import sys
import uuid

import psycopg

from agent.config import StoreConfig
from agent.store import Outbox
from agent.sync import send_batch


async def main(queue_db: str, dsn: str) -> None:
    ob = Outbox(StoreConfig(path=queue_db))
    await ob.open()
    batch = await ob.pending(100_000)
    conn = await psycopg.AsyncConnection.connect(dsn)
    inserted = await send_batch(conn, batch, str(uuid.uuid4()))
    await conn.commit()
    print(inserted, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before ob.mark_synced(...)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], os.environ["SOUNDSCAPE_TEST_DSN"]))
