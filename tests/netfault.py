"""A GSM-like link for the fault suite: a TCP fault proxy in front of PostgreSQL and a network
namespace joined to the host by a veth pair whose two ends are shaped by ``tc qdisc ... tbf``.

The kernel's ``netem`` is not available on these machines, so latency and the link's faults
are made by :class:`FaultProxy`, a user-space TCP proxy (asyncio, in a background thread)
that forwards byte for byte to the real PostgreSQL server and knows just enough of the
PostgreSQL wire protocol (version 3) to place faults and to account for batches:

* latency: every chunk is delivered ``delay_s`` after it was read, per direction, in order
  (0.3 s each way: a 600 ms round trip, as on 2G/3G);
* faults, one per *session* connection, taken in order from a plan (:meth:`FaultProxy.schedule`)
  or applied at once to the open connections (:meth:`FaultProxy.apply_now`):
  ``stall`` (forward nothing either way for N s, then resume), ``blackhole`` (forward nothing,
  ever, and never close: only the client can end it), ``reset`` (a TCP RST to the client, via
  ``SO_LINGER`` 0, after N bytes of a batch), ``ackloss`` (the server's ``CommandComplete`` of
  a ``COMMIT`` never reaches the client: the client is reset just before it, so the server
  has committed a batch the client does not know about);
* records per connection (:class:`ConnRecord`): open and close times and who closed, bytes
  each way, the time of the last byte delivered to the client, the fault and when it hit,
  and one :class:`TxnRecord` per transaction (bytes, round trips, ``Bind`` messages by
  parameter count, how it ended).

Cancel requests (``CancelRequest``, which psycopg sends over a new connection when a query
is interrupted) and the TLS/GSS negotiation packets are recognised and never take a fault
from the plan. A fault whose connection ends before reaching its trigger (e.g. a round with
no window to send) goes back to the head of the plan, for the next session connection.
During a stall or a black-hole the proxy goes on reading what the client sends (the shaped
link keeps carrying it) and holds or drops it: the client gets no answer, the server no data.

:class:`ShapedNetns` builds the link itself: a namespace ``sgsm-<pid>-<k>``, a veth pair with
addresses in a private /30, and a token-bucket filter on the egress of each end (about
64 kbit/s). A process started with :attr:`ShapedNetns.prefix` (``ip netns exec NAME``) can
reach the host only through that pair. Everything is removed on exit, also after a failure;
namespaces left by a killed earlier run of this module (its pid gone) are removed too.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

#: PostgreSQL protocol codes sent in place of a protocol version in the first, untyped packet.
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

#: The server's CommandComplete message for COMMIT and ROLLBACK (type, int32 length, tag).
COMMIT_COMPLETE = b"C" + struct.pack("!i", 4 + len(b"COMMIT\x00")) + b"COMMIT\x00"
ROLLBACK_COMPLETE = b"C" + struct.pack("!i", 4 + len(b"ROLLBACK\x00")) + b"ROLLBACK\x00"

FAULT_KINDS = ("stall", "blackhole", "reset", "ackloss")


# ---------------------------------------------------------------------------------------------
# faults and records


@dataclass(frozen=True)
class Fault:
    """One fault for one proxied connection.

    Attributes:
        kind: ``stall``, ``blackhole``, ``reset`` or ``ackloss``.
        after_bytes: where a ``stall``, ``blackhole`` or ``reset`` hits: after this many
            client->server bytes counted from the start of the connection's first batch (the
            first ``Bind`` message with the proxy's ``batch_nparams`` parameters), bytes >= 0;
            ``None`` = at the session's start-up packet, before it is forwarded (the TLS/GSS
            negotiation that precedes it passes: only then can a session be told from a
            cancel request, which libpq >= 17 negotiates the same way). Unused by ``ackloss``.
        seconds: length of a ``stall``, s.

    Raises:
        ValueError: unknown kind, negative ``after_bytes``, or a stall without ``seconds``.
    """

    kind: str
    after_bytes: int | None = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {FAULT_KINDS}")
        if self.after_bytes is not None and self.after_bytes < 0:
            raise ValueError(f"after_bytes must be >= 0 or None, got {self.after_bytes}")
        if self.kind == "stall" and self.seconds <= 0:
            raise ValueError("a stall needs seconds > 0")

    @classmethod
    def stall(cls, seconds: float, after_bytes: int | None = 0) -> Fault:
        """Forward nothing either way for ``seconds`` s once the trigger is reached, then resume."""
        return cls("stall", after_bytes, float(seconds))

    @classmethod
    def blackhole(cls, after_bytes: int | None = None) -> Fault:
        """Forward nothing more either way and never close (default: from the start-up packet)."""
        return cls("blackhole", after_bytes)

    @classmethod
    def reset(cls, after_bytes: int = 0) -> Fault:
        """Send the client a TCP RST (and drop the server side) after ``after_bytes`` of a batch."""
        return cls("reset", after_bytes)

    @classmethod
    def ackloss(cls) -> Fault:
        """Reset the client just before the server's first ``COMMIT`` completion of a batch
        (a transaction with ``Bind`` messages of the proxy's ``batch_nparams``) reaches it."""
        return cls("ackloss", None)


@dataclass
class TxnRecord:
    """What one transaction (as the proxy sees it) carried.

    A transaction starts with the first client->server bytes after the previous one ended
    and ends when the server's ``COMMIT`` or ``ROLLBACK`` completion is delivered to the
    client (``commit`` / ``rollback``), or when the connection ends first (``aborted``). The
    connection's start-up and authentication are part of its first transaction.

    Attributes:
        started_at: time.monotonic() of its first client->server byte forwarded, s.
        ended_at: time.monotonic() when it ended, s (None while open).
        c2s_bytes, s2c_bytes: bytes forwarded each way.
        turns: client->server then server->client alternations: the round trips it needed.
        binds: ``Bind`` messages by parameter count (one per row of an ``executemany``).
        outcome: ``commit``, ``rollback``, ``aborted`` or ``open``.
    """

    started_at: float | None = None
    ended_at: float | None = None
    c2s_bytes: int = 0
    s2c_bytes: int = 0
    turns: int = 0
    binds: collections.Counter = field(default_factory=collections.Counter)
    outcome: str = "open"

    @property
    def seconds(self) -> float | None:
        """From its first byte to its end, s (None while open)."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


@dataclass
class ConnRecord:
    """One proxied TCP connection.

    Attributes:
        n: connection number, from 1 in accept order.
        kind: ``session`` (a PostgreSQL session), ``cancel`` (a CancelRequest) or
            ``unknown`` (closed before its first packet was complete).
        opened_at: time.monotonic() of the accept, s.
        fault: the fault given to it (None: clean, latency only).
        fault_at: when the fault hit, s (None: it never did, e.g. no batch was sent).
        fault_end_at: when a stall ended, or when a black-holed connection was closed, s.
        fault_mid_batch: the fault hit while a batch was being sent (the transaction then open
            had ``Bind`` messages of the batch size and had not committed).
        closed_at: when the connection ended, s (None: still open).
        closed_by: ``client`` (EOF or RST from the client), ``server`` or ``proxy`` (a fault).
        c2s_bytes, s2c_bytes: bytes forwarded each way (dropped bytes not counted).
        last_s2c_at: when bytes were last delivered to the client (``opened_at`` if never), s.
        max_wait_s: the longest the client waited for an answer: from the first bytes it sent
            after the last delivery to it, to the next delivery or the end of the connection, s.
            A client that bounds its calls keeps this under its bound, whatever the fault.
        deferred: the fault never hit (e.g. the connection carried no batch), so it was put
            back at the head of the plan for the next session connection.
        txns: its transactions, oldest first (the open one last).
        error: an unexpected exception inside the proxy while serving it (a bug of the test
            suite, never the agent's doing: the connection was then dropped).
    """

    n: int
    opened_at: float
    kind: str = "unknown"
    fault: Fault | None = None
    fault_at: float | None = None
    fault_end_at: float | None = None
    fault_mid_batch: bool = False
    closed_at: float | None = None
    closed_by: str | None = None
    c2s_bytes: int = 0
    s2c_bytes: int = 0
    last_s2c_at: float = 0.0
    max_wait_s: float = 0.0
    deferred: bool = False
    txns: list[TxnRecord] = field(default_factory=list)
    error: str | None = None

    @property
    def commits(self) -> list[TxnRecord]:
        """Its committed transactions."""
        return [t for t in self.txns if t.outcome == "commit"]


class _C2SParser:
    """Splits the client->server byte stream into protocol messages (start-up packets first).

    Tracks absolute stream offsets; reports the offset of each ``Bind`` with its parameter count.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0  # absolute stream offset of buf[0]
        self.typed = False
        self.kind: str | None = None

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Add bytes; return ``(start offset, n params)`` of every Bind completed by them."""
        self.buf += data
        binds = []
        while True:
            if self.kind == "cancel":
                self.pos += len(self.buf)
                self.buf.clear()
                break
            if not self.typed:
                if len(self.buf) < 8:
                    break
                length, code = struct.unpack_from("!ii", self.buf, 0)
                if len(self.buf) < length:
                    break
                if code == CANCEL_REQUEST:
                    self.kind = "cancel"
                elif code not in (SSL_REQUEST, GSSENC_REQUEST):
                    self.kind, self.typed = "session", True
                del self.buf[:length]
                self.pos += length
                continue
            if len(self.buf) < 5:
                break
            mtype = self.buf[0]
            (length,) = struct.unpack_from("!i", self.buf, 1)
            if len(self.buf) < 1 + length:
                break
            if mtype == ord("B"):
                binds.append((self.pos, _bind_nparams(bytes(self.buf[5:1 + length]))))
            del self.buf[:1 + length]
            self.pos += 1 + length
        return binds


def _bind_nparams(body: bytes) -> int:
    """Parameter count of a Bind message body (portal, statement, format codes, params); -1 if malformed."""
    try:
        i = body.index(b"\x00") + 1          # portal name
        i = body.index(b"\x00", i) + 1       # statement name
        (nfmt,) = struct.unpack_from("!h", body, i)
        i += 2 + 2 * nfmt
        (nparams,) = struct.unpack_from("!h", body, i)
    except (ValueError, struct.error):
        return -1
    return int(nparams)


class _Conn:
    """Live state of one proxied connection (event-loop thread only)."""

    def __init__(self, rec: ConnRecord) -> None:
        self.rec = rec
        self.parser = _C2SParser()
        self.c2s_pos = 0            # client->server bytes forwarded (absolute offset)
        self.batch_mark: int | None = None
        self.startup_pos: int | None = None  # stream offset of the start-up packet
        self.stall_until = 0.0
        self.blackholed = False
        self.dead = False
        self.last_dir = ""
        self.tails = {COMMIT_COMPLETE: b"", ROLLBACK_COMPLETE: b""}
        self.client_w: asyncio.StreamWriter | None = None
        self.server_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.fault_done = False
        self.awaiting_since: float | None = None  # client sent, no answer delivered since

    @property
    def txn(self) -> TxnRecord:
        if not self.rec.txns or self.rec.txns[-1].outcome != "open":
            self.rec.txns.append(TxnRecord())
        return self.rec.txns[-1]


def _seen(tails: dict[bytes, bytes], pattern: bytes, data: bytes) -> int:
    """Occurrences of ``pattern`` ending in ``data``, given the stream's previous bytes in
    ``tails[pattern]`` (updated: the last len(pattern) - 1 bytes)."""
    window = tails[pattern] + data
    tails[pattern] = window[-(len(pattern) - 1):]
    return window.count(pattern)


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close a stream with a TCP RST (SO_LINGER on, 0 s), not a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


# ---------------------------------------------------------------------------------------------
# the proxy


class FaultProxy:
    """A TCP proxy to PostgreSQL adding latency and injecting faults (see the module docstring).

    Runs its own asyncio event loop in a daemon thread; every public method is thread-safe.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        listen_host: address to listen on (e.g. the host end of a :class:`ShapedNetns`).
        upstream: ``(host, port)`` of the PostgreSQL server.
        delay_s: latency added to each direction, s (default 0.3: a 600 ms round trip).
        batch_nparams: a batch starts at the first ``Bind`` with this many parameters (the
            window INSERT's placeholder count); it is where ``Fault.after_bytes`` counts from
            and what :attr:`TxnRecord.binds` is read with. None: batches are not recognised,
            and ``after_bytes`` counts from the connection's first byte.
        listen_port: port, 0 = a free one (see :attr:`port` after :meth:`start`).

    Raises:
        OSError: from :meth:`start`, when the address cannot be bound.
    """

    def __init__(self, listen_host: str, upstream: tuple[str, int], *, delay_s: float = 0.3,
                 batch_nparams: int | None = None, listen_port: int = 0) -> None:
        self.listen_host = listen_host
        self.port = listen_port
        self.upstream = upstream
        self.delay_s = float(delay_s)
        self.batch_nparams = batch_nparams
        self._plan: collections.deque[Fault | None] = collections.deque()
        self._conns: list[_Conn] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start listening; returns self. Raises OSError if the address cannot be bound."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self.listen_host, self.port, reuse_address=True), self._loop)
        try:
            self._server = fut.result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection (RST), stop the thread. Idempotent."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for c in self._conns:
                self._finish(c, "proxy")
            tasks = [t for c in self._conns for t in c.tasks]
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control and records (any thread) ------------------------------------------------------

    def schedule(self, *faults: Fault | None) -> None:
        """Queue faults for the next session connections, one each, in order (None = a clean one).

        Connections accepted when the plan is empty are clean.
        """
        with self._lock:
            self._plan.extend(faults)

    def plan_left(self) -> int:
        """Plan entries not yet taken by a connection."""
        with self._lock:
            return len(self._plan)

    def apply_now(self, fault: Fault) -> int:
        """Give ``fault`` to every open session connection that has none yet, triggering at once
        (``after_bytes`` is ignored: 0 bytes from now). Returns how many connections got it."""
        async def go() -> int:
            hit = 0
            for c in self._conns:
                if c.rec.kind == "session" and c.rec.closed_at is None and c.rec.fault is None:
                    c.rec.fault = fault
                    if fault.kind == "ackloss":
                        hit += 1
                        continue
                    c.batch_mark = c.c2s_pos
                    self._trigger(c, time.monotonic())
                    hit += 1
            return hit

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(timeout=10)

    def connections(self) -> list[ConnRecord]:
        """A consistent snapshot (deep copy) of every connection's record, in accept order."""
        async def snap() -> list[ConnRecord]:
            return [copy.deepcopy(c.rec) for c in self._conns]

        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(timeout=10)

    # -- event-loop side ------------------------------------------------------------------------

    def _take_fault(self) -> Fault | None:
        with self._lock:
            return self._plan.popleft() if self._plan else None

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        now = time.monotonic()
        c = _Conn(ConnRecord(n=len(self._conns) + 1, opened_at=now, last_s2c_at=now))
        c.client_w = cwriter
        self._conns.append(c)
        c2s_q: asyncio.Queue = asyncio.Queue()
        s2c_q: asyncio.Queue = asyncio.Queue()
        try:
            sreader, swriter = await asyncio.open_connection(*self.upstream)
        except OSError as err:
            c.rec.error = f"upstream {self.upstream}: {err}"
            self._finish(c, "proxy")
            return
        c.server_w = swriter
        c.tasks += [self._task(c, self._read(c, sreader, s2c_q, "server")),
                    self._task(c, self._write_s2c(c, s2c_q)),
                    self._task(c, self._read(c, creader, c2s_q, "client")),
                    self._task(c, self._write_c2s(c, c2s_q))]

    def _task(self, c: _Conn, coro) -> asyncio.Task:
        """Run one pump; an unexpected exception is recorded and drops the connection."""
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug here must not pass for an agent that hangs
                c.rec.error = f"{type(err).__name__}: {err}"
                self._finish(c, "proxy")

        return asyncio.ensure_future(guarded())

    async def _read(self, c: _Conn, reader: asyncio.StreamReader, q: asyncio.Queue, side: str) -> None:
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            now = time.monotonic()
            if not data:
                if side == "server" and c.blackholed:
                    return  # the client, black-holed, must not learn of it: the proxy never closes
                self._closed(c, side)
                q.put_nowait((now, None))
                return
            if side == "client" and c.awaiting_since is None:
                c.awaiting_since = now
            q.put_nowait((now, data))

    async def _hold(self, c: _Conn, t_read: float) -> None:
        """Wait out the latency of a chunk read at ``t_read``, then any stall."""
        wait = t_read + self.delay_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        while (left := c.stall_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def _closed(self, c: _Conn, by: str) -> None:
        """Note the first close of a connection (by ``client``, ``server`` or ``proxy``)."""
        if c.rec.closed_at is None:
            c.rec.closed_at = time.monotonic()
            c.rec.closed_by = by
            if c.awaiting_since is not None:
                c.rec.max_wait_s = max(c.rec.max_wait_s, c.rec.closed_at - c.awaiting_since)
                c.awaiting_since = None
            if c.rec.kind == "session" and c.rec.fault is not None and c.rec.fault_at is None \
                    and self._server is not None and self._server.is_serving():
                c.rec.deferred = True
                with self._lock:
                    self._plan.appendleft(c.rec.fault)
            if c.blackholed and c.rec.fault_end_at is None:
                c.rec.fault_end_at = c.rec.closed_at
            if c.rec.txns and c.rec.txns[-1].outcome == "open":
                c.rec.txns[-1].outcome = "aborted"
                c.rec.txns[-1].ended_at = c.rec.closed_at

    def _finish(self, c: _Conn, by: str, rst_client: bool = False) -> None:
        """Tear both sides down (the client with a RST when asked) and stop the pumps."""
        self._closed(c, by)
        if c.dead:
            return
        c.dead = True
        if rst_client:
            _rst(c.client_w)
        for w in (c.client_w, c.server_w):
            if w is not None and not w.transport.is_closing():
                w.transport.abort() if by == "proxy" else w.close()
        current = asyncio.current_task()
        for t in c.tasks:
            if t is not current:
                t.cancel()

    def _trigger(self, c: _Conn, now: float) -> None:
        """Apply the connection's stall / black-hole / reset now."""
        f = c.rec.fault
        if f is None or c.fault_done:
            return
        c.fault_done = True
        c.rec.fault_at = now
        txn = c.rec.txns[-1] if c.rec.txns else None
        c.rec.fault_mid_batch = bool(
            self.batch_nparams is not None and txn is not None and txn.outcome == "open"
            and txn.binds.get(self.batch_nparams, 0) > 0)
        if f.kind == "stall":
            c.stall_until = now + f.seconds
            c.rec.fault_end_at = c.stall_until
        elif f.kind == "blackhole":
            c.blackholed = True
        elif f.kind == "reset":
            c.rec.fault_end_at = now
            self._finish(c, "proxy", rst_client=True)

    def _trigger_pos(self, c: _Conn) -> int | None:
        f = c.rec.fault
        if f is None or c.fault_done or f.kind not in ("stall", "blackhole", "reset"):
            return None
        if f.after_bytes is None:
            return c.startup_pos
        if self.batch_nparams is None:
            return f.after_bytes
        if c.batch_mark is None:
            return None
        return c.batch_mark + f.after_bytes

    async def _write_c2s(self, c: _Conn, q: asyncio.Queue) -> None:
        while not c.dead:
            t_read, data = await q.get()
            await self._hold(c, t_read)
            if c.dead:
                return
            if data is None:  # the client closed: pass it on (a black-hole keeps nothing else)
                self._finish(c, "client")
                return
            if c.blackholed:
                continue
            for start, nparams in c.parser.feed(data):
                txn = c.txn
                txn.binds[nparams] += 1
                if c.batch_mark is None and nparams == self.batch_nparams:
                    c.batch_mark = start
            if c.rec.kind == "unknown" and c.parser.kind:
                # the start-up packet (or a CancelRequest), after any TLS/GSS negotiation
                c.rec.kind = c.parser.kind
                c.startup_pos = c.c2s_pos
                if c.rec.kind == "session" and c.rec.fault is None:
                    c.rec.fault = self._take_fault()
            pos = self._trigger_pos(c)
            if pos is not None and pos < c.c2s_pos + len(data):
                head = data[:max(0, pos - c.c2s_pos)]
                if head:
                    await self._send_c2s(c, head)
                if not c.dead:
                    self._trigger(c, time.monotonic())
                if c.dead or c.blackholed:
                    continue
                rest = data[len(head):]
                while (left := c.stall_until - time.monotonic()) > 0:
                    await asyncio.sleep(left)
                if rest and not c.dead:
                    await self._send_c2s(c, rest)
                continue
            await self._send_c2s(c, data)

    async def _send_c2s(self, c: _Conn, data: bytes) -> None:
        txn = c.txn
        if txn.started_at is None:
            txn.started_at = time.monotonic()
        txn.c2s_bytes += len(data)
        c.rec.c2s_bytes += len(data)
        c.c2s_pos += len(data)
        c.last_dir = "c2s"
        try:
            c.server_w.write(data)
            await c.server_w.drain()
        except (ConnectionError, OSError):
            self._finish(c, "server")

    async def _write_s2c(self, c: _Conn, q: asyncio.Queue) -> None:
        while not c.dead:
            t_read, data = await q.get()
            await self._hold(c, t_read)
            if c.dead:
                return
            if c.blackholed:
                continue  # never close a black-holed client, even when the server goes away
            if data is None:
                self._finish(c, "server")
                return
            commits, rollbacks = (_seen(c.tails, pat, data) for pat in (COMMIT_COMPLETE, ROLLBACK_COMPLETE))
            f = c.rec.fault
            batch_commit = commits and (self.batch_nparams is None or c.txn.binds.get(self.batch_nparams, 0) > 0)
            if batch_commit and f is not None and f.kind == "ackloss" and not c.fault_done:
                c.fault_done = True
                now = time.monotonic()
                c.rec.fault_at = c.rec.fault_end_at = now
                c.rec.fault_mid_batch = bool(self.batch_nparams and c.txn.binds.get(self.batch_nparams, 0))
                self._finish(c, "proxy", rst_client=True)
                return
            txn = c.txn
            if c.last_dir == "c2s":
                txn.turns += 1
            c.last_dir = "s2c"
            txn.s2c_bytes += len(data)
            c.rec.s2c_bytes += len(data)
            try:
                c.client_w.write(data)
                await c.client_w.drain()
            except (ConnectionError, OSError):
                self._finish(c, "client")
                return
            now = time.monotonic()
            c.rec.last_s2c_at = now
            if c.awaiting_since is not None:
                c.rec.max_wait_s = max(c.rec.max_wait_s, now - c.awaiting_since)
                c.awaiting_since = None
            if commits or rollbacks:
                txn.ended_at = now
                txn.outcome = "commit" if commits else "rollback"


# ---------------------------------------------------------------------------------------------
# the shaped link: a network namespace behind a veth pair with tbf on both ends


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


_NS_PREFIX = "sgsm-"
_NS_NAME = re.compile(r"^sgsm-(\d+)-(\d+)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete the ``sgsm-<pid>-<k>`` namespaces (and their veth pairs) of test processes that
    no longer exist, e.g. after a run was killed. Returns the names removed."""
    out = _run("ip", "netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        m = _NS_NAME.match(line.strip())
        if m and not _pid_alive(int(m[1])):
            name = line.split()[0]
            _run("ip", "netns", "del", name, check=False)
            _run("ip", "link", "del", f"sgh{m[1]}x{m[2]}", check=False)
            removed.append(name)
    return removed


class ShapedNetns:
    """A network namespace reachable only through a veth pair shaped by tbf on both ends.

    The host end gets ``host_addr`` and the namespace end ``ns_addr``, both in a /30 of
    10.211.0.0/16 (chosen from the pid, skipping any prefix already on the host). Each end's
    egress runs ``tc qdisc add dev X root tbf rate R burst B latency L``: traffic from the
    namespace to the host and from the host to the namespace is each capped at ``rate_kbit``.

    Args:
        rate_kbit: token rate, kbit/s (1 kbit = 1000 bit; default 64, a GSM/GPRS-class link).
        burst_bytes: bucket size, bytes (default 3200: two full Ethernet frames, the least
            tbf needs to pass a 1514-byte frame without a long stall).
        latency_ms: longest a packet may wait in the tbf queue before it is dropped, ms
            (default 5000: a deep modem buffer, as cellular modems have; with a shallow one
            TCP loses a third of the link to drops and retransmission timeouts).

    Raises:
        RuntimeError: from :meth:`open` when a command fails (after removing what was made).
    """

    _count = 0

    def __init__(self, rate_kbit: int = 64, burst_bytes: int = 3200, latency_ms: int = 5000) -> None:
        ShapedNetns._count += 1
        pid, k = os.getpid(), ShapedNetns._count
        self.rate_kbit = int(rate_kbit)
        self.burst_bytes = int(burst_bytes)
        self.latency_ms = int(latency_ms)
        self.name = f"{_NS_PREFIX}{pid}-{k}"
        self.host_if = f"sgh{pid}x{k}"
        self.ns_if = f"sgn{pid}x{k}"
        if max(len(self.host_if), len(self.ns_if)) > 15:
            raise RuntimeError(f"interface name {self.host_if!r} longer than 15 characters")
        self.host_addr = self.ns_addr = ""
        #: (namespace->host, host->namespace) kbit/s of the last :meth:`measure_rate`.
        self.measured_kbit_s: tuple[float, float] | None = None
        self._open = False

    @property
    def prefix(self) -> tuple[str, ...]:
        """Command prefix running a program inside the namespace: ``("ip", "netns", "exec", name)``."""
        return ("ip", "netns", "exec", self.name)

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = _run("ip", "-o", "-4", "addr", "show").stdout
        base = ipaddress.IPv4Network("10.211.0.0/16")
        start = (os.getpid() * 8 + ShapedNetns._count) % 16384
        for i in range(16384):
            net = ipaddress.IPv4Network((int(base.network_address) + 4 * ((start + i) % 16384), 30))
            hosts = [str(h) for h in net.hosts()]
            if not any(f" {h}/" in used for h in hosts):
                return net
        raise RuntimeError("no free /30 in 10.211.0.0/16")

    def open(self) -> ShapedNetns:
        """Create the namespace, the veth pair, the addresses and both tbf qdiscs; returns self."""
        remove_stale_namespaces()
        try:
            net = self._pick_subnet()
            h, n = (str(a) for a in net.hosts())
            self.host_addr, self.ns_addr = h, n
            _run("ip", "netns", "add", self.name)
            self._open = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
            _run("ip", "addr", "add", f"{h}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
            _run("ip", "-n", self.name, "addr", "add", f"{n}/30", "dev", self.ns_if)
            _run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
            tbf = ("root", "tbf", "rate", f"{self.rate_kbit}kbit", "burst", str(self.burst_bytes),
                   "latency", f"{self.latency_ms}ms")
            _run("tc", "qdisc", "add", "dev", self.host_if, *tbf)
            _run("ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", self.ns_if, *tbf)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete the namespace and the veth pair (idempotent; never raises for a missing one)."""
        if self._open:
            _run("ip", "netns", "del", self.name, check=False)
            self._open = False
        # deleting the namespace deletes its veth end, and the peer with it; make sure
        if _run("ip", "link", "show", self.host_if, check=False).returncode == 0:
            _run("ip", "link", "del", self.host_if, check=False)

    def __enter__(self) -> ShapedNetns:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self) -> bool:
        """True while the namespace is listed by ``ip netns``."""
        listed = _run("ip", "netns", "list").stdout.splitlines()
        return any(line.split()[0] == self.name for line in listed if line.strip())

    def qdisc_stats(self) -> dict[str, dict]:
        """``tc -s`` statistics of both tbf qdiscs: ``{"host": {...}, "ns": {...}}``, each with
        ``bytes`` and ``packets`` sent (link-layer bytes, headers included), ``drops`` and
        ``overlimits`` (packets that had to wait for tokens)."""
        def one(*prefix: str, dev: str) -> dict:
            doc = json.loads(_run(*prefix, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout)
            q = next(d for d in doc if d.get("kind") == "tbf")
            return {k: int(q.get(k, 0)) for k in ("bytes", "packets", "drops", "overlimits")}

        return {"host": one(dev=self.host_if), "ns": one(*self.prefix, dev=self.ns_if)}

    def measure_rate(self, nbytes: int = 24_000, timeout: float = 60.0) -> tuple[float, float]:
        """Send ``nbytes`` of TCP payload each way across the link and time it.

        Namespace -> host is timed on the host from the first to the last byte received;
        host -> namespace from the first byte sent until the namespace acknowledges the last
        one. Both leave out the bucket's size (``burst_bytes``), which passes at once.

        Returns:
            (namespace->host, host->namespace) payload throughput, kbit/s.

        Raises:
            RuntimeError: the transfer failed or took longer than ``timeout`` s.
        """
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.host_addr, 0))
        srv.listen(1)
        srv.settimeout(timeout)
        port = srv.getsockname()[1]
        script = (
            "import socket,sys\n"
            "h,p,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])\n"
            "s=socket.create_connection((h,p),timeout=%r)\n"
            "s.sendall(b'u'*n)\n"
            "got=0\n"
            "while got<n:\n"
            "    d=s.recv(65536)\n"
            "    if not d: sys.exit('closed early')\n"
            "    got+=len(d)\n"
            "s.sendall(b'k'); s.close()\n" % timeout
        )
        child = subprocess.Popen([*self.prefix, sys.executable, "-c", script, self.host_addr, str(port), str(nbytes)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = srv.accept()
            conn.settimeout(timeout)
            with conn:
                got, first_len, t_first, t_last = 0, 0, None, None
                while got < nbytes:
                    d = conn.recv(65536)
                    if not d:
                        raise RuntimeError("the namespace side closed early")
                    now = time.monotonic()
                    if t_first is None:
                        t_first, first_len = now, len(d)
                    got += len(d)
                    t_last = now
                up = (nbytes - max(first_len, self.burst_bytes)) * 8 / max(t_last - t_first, 1e-6) / 1000
                t0 = time.monotonic()
                conn.sendall(b"d" * nbytes)
                if conn.recv(1) != b"k":
                    raise RuntimeError("no acknowledgement from the namespace side")
                down = max(nbytes - self.burst_bytes, 1) * 8 / (time.monotonic() - t0) / 1000
        except (OSError, socket.timeout) as err:
            raise RuntimeError(f"rate measurement across {self.name} failed: {err}") from None
        finally:
            srv.close()
            try:
                _, err = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                err = "timeout"
        if child.returncode != 0:
            raise RuntimeError(f"rate measurement across {self.name} failed in the namespace: {err}")
        self.measured_kbit_s = (round(up, 1), round(down, 1))
        return up, down


__all__ = [
    "COMMIT_COMPLETE", "ConnRecord", "Fault", "FaultProxy", "ShapedNetns", "TxnRecord", "remove_stale_namespaces",
]
