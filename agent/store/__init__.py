"""The local SQLite outbox (:class:`Outbox`): every window result is queued here until the sync
has delivered it. Modules: :mod:`~agent.store.outbox` (the writer thread and the queue
operations), :mod:`~agent.store.eviction` (the space policy), :mod:`~agent.store.schema` (the
migrations ``agent/sql/sqlite/NNNN_*.sql``), :mod:`~agent.store.codec` (rows <-> records),
:mod:`~agent.store.inspection` (statistics, read-only inspection), :mod:`~agent.store.db`
(SQLite plumbing)."""

from agent.store.codec import EVENT_KINDS, nan_to_none
from agent.store.db import BUSY_TIMEOUT_MS, MB, WAL_AUTOCHECKPOINT_PAGES, StoreFullError
from agent.store.eviction import (
    DELETE_BATCH,
    EVICT_SHARE,
    FULL_RECENT_S,
    REPLACED_RECENT_S,
    EvictionPolicy,
    StorePressure,
)
from agent.store.inspection import QueueInspection, QueueReplacement, QueueStats, damaged_queues, inspect_queue
from agent.store.outbox import Outbox
from agent.store.schema import SCHEMA_VERSION

__all__ = ["BUSY_TIMEOUT_MS", "DELETE_BATCH", "EVENT_KINDS", "EVICT_SHARE", "FULL_RECENT_S", "MB", "REPLACED_RECENT_S",
           "SCHEMA_VERSION", "WAL_AUTOCHECKPOINT_PAGES", "EvictionPolicy", "Outbox", "QueueInspection",
           "QueueReplacement", "QueueStats", "StoreFullError", "StorePressure", "damaged_queues", "inspect_queue",
           "nan_to_none"]
