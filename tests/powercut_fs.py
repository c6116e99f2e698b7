"""A FUSE filesystem that behaves like a disk with a volatile write cache: what was not
``fsync``-ed is gone after a power cut. Run by :mod:`tests.powercut` (the fault ``power_cut``).

Run it with Debian's Python, which has ``python3-pyfuse3`` (scripts/bootstrap.sh installs it;
the project's venv does not need it)::

    /usr/bin/python3 tests/powercut_fs.py BACKING MOUNTPOINT

The model. ``BACKING`` is the platter: ``BACKING/meta.json`` (the durable directory tree:
each directory's ``name -> inode``, each inode's mode, owner) and ``BACKING/data/<inode>`` (each
file's durable content). At mount the whole durable state is loaded into memory; from then on
every operation works on the in-memory copy only (the cache), and nothing reaches the platter
except through:

* ``fsync``/``fdatasync`` of a file: that file's writes and truncations since its last sync
  are applied to ``data/<inode>``, in order (its size and mode with them). The inode is durable
  from then on, but reachable after a cut only through a durable directory entry;
* ``fsync`` of a directory: that directory's entries as they are now (creates, unlinks,
  renames, links) replace its durable entries; a file that becomes reachable that way and was
  never synced is empty on the platter (the "zero-length file after a crash").

Nothing else persists: not a ``close``, not an unmount (this disk has no clean shutdown), not
the memory-mapped ``-shm`` (SQLite rebuilds it from the WAL). Inodes no durable directory
reaches are removed at the next mount, as ``fsck`` would.

Control: one command per line on stdin, one JSON answer per line on stdout.

* ``stats``: counters (writes, syncs, bytes cached and persisted, ...);
* ``cut [KEEP [SEED]]``: the power cut. Every cached change since the last sync of its file or
  directory is dropped; with ``KEEP`` > 0 each 512-byte sector of each cached write (and each
  cached truncation) reaches the platter first with that probability, in order (a disk whose
  cache had flushed part of itself, any part). From then on every request fails with EIO; the
  test kills the writer and unmounts, and a new mount sees only the platter;
* ``arm checkpoint|sync N``: cut (KEEP 0) by itself, inside the filesystem, at the next write
  to a file named ``*.db`` (the middle of a SQLite WAL checkpoint) or at the Nth ``fsync`` of a
  ``*-wal`` file from now, before that request is carried out; the answer line comes then.

EOF on stdin unmounts and exits (the test's cleanup). ``mode`` bits are checked by the kernel
(``default_permissions``); locks (fcntl, flock) are the kernel's own, local to this machine.
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

#: Sector size of the partial flush at a cut with KEEP > 0, bytes.
SECTOR = 512
ROOT = pyfuse3.ROOT_INODE


@dataclass
class Node:
    """One inode as the cache sees it (the platter's copy is in ``data/<ino>``)."""

    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytearray = field(default_factory=bytearray)
    entries: dict[bytes, int] | None = None  # directories: name -> inode
    # cached changes since the last fsync: ("w", offset, bytes) or ("t", size)
    pending: list[tuple] = field(default_factory=list)
    links: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return self.entries is not None


class VolatileCacheFS(pyfuse3.Operations):
    """The filesystem (see the module docstring)."""

    def __init__(self, backing: Path) -> None:
        super().__init__()
        self.backing = backing
        self.datadir = backing / "data"
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.dead = False
        self.handles: dict[int, int] = {}  # file handle -> inode
        self.next_fh = 1
        self.names: dict[int, bytes] = {}  # inode -> a name it had (for the triggers)
        self.trigger: tuple[str, int] | None = None
        self.on_cut: trio.MemorySendChannel | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("writes", "bytes_written", "truncates", "fsyncs", "fsyncdirs", "bytes_persisted", "creates",
             "unlinks", "renames"), 0)
        self.load()

    # -- the platter --------------------------------------------------------------------------

    def load(self) -> None:
        """Read the durable state into the cache; drop inodes no durable directory reaches."""
        meta_path = self.backing / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
        else:
            meta = {"next_ino": ROOT + 1,
                    "inodes": {str(ROOT): {"mode": stat.S_IFDIR | 0o755, "uid": 0, "gid": 0, "entries": {}}}}
        self.next_ino: int = meta["next_ino"]
        self.durable: dict[int, dict] = {int(k): v for k, v in meta["inodes"].items()}
        reachable, todo = set(), [ROOT]
        while todo:
            ino = todo.pop()
            if ino in reachable or ino not in self.durable:
                continue
            reachable.add(ino)
            todo.extend(self.durable[ino].get("entries", {}).values())
        self.orphans_removed = len(set(self.durable) - reachable)
        for ino in set(self.durable) - reachable:
            del self.durable[ino]
        for f in self.datadir.iterdir():
            if int(f.name) not in reachable:
                f.unlink()
        self.nodes: dict[int, Node] = {}
        for ino, rec in self.durable.items():
            entries = rec.get("entries")
            node = Node(ino, rec["mode"], rec["uid"], rec["gid"],
                        entries=None if entries is None else {k.encode("utf-8", "surrogateescape"): v
                                                              for k, v in entries.items()})
            if entries is None:
                f = self.datadir / str(ino)
                node.data = bytearray(f.read_bytes()) if f.exists() else bytearray()
            self.nodes[ino] = node
        for node in list(self.nodes.values()):
            for name, child in (node.entries or {}).items():
                self.nodes[child].links += 1
                self.names[child] = name
        self.nodes[ROOT].links = 1
        self.save_meta()

    def save_meta(self) -> None:
        doc = {"next_ino": self.next_ino, "inodes": {str(ino): rec for ino, rec in self.durable.items()}}
        tmp = self.backing / "meta.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.backing / "meta.json")

    def persist_ops(self, node: Node, ops: list[tuple]) -> int:
        """Apply cached changes to ``data/<ino>``; return the bytes written."""
        n = 0
        fd = os.open(self.datadir / str(node.ino), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for op in ops:
                if op[0] == "w":
                    n += os.pwrite(fd, op[2], op[1])
                else:
                    os.ftruncate(fd, op[1])
        finally:
            os.close(fd)
        return n

    def persist_file(self, node: Node) -> None:
        """fsync: the file's cached changes, its mode and owner reach the platter."""
        self.stats["bytes_persisted"] += self.persist_ops(node, node.pending)
        node.pending.clear()
        rec = {"mode": node.mode, "uid": node.uid, "gid": node.gid}
        if self.durable.get(node.ino) != rec:
            self.durable[node.ino] = rec
            self.save_meta()

    def persist_dir(self, node: Node) -> None:
        """fsync of a directory: its entries as they are now replace its durable entries."""
        assert node.entries is not None
        self.durable[node.ino] = {"mode": node.mode, "uid": node.uid, "gid": node.gid,
                                  "entries": {k.decode("utf-8", "surrogateescape"): v
                                              for k, v in node.entries.items()}}
        for child in node.entries.values():
            if child in self.durable:
                continue
            c = self.nodes[child]
            self.durable[child] = {"mode": c.mode, "uid": c.uid, "gid": c.gid,
                                   **({"entries": {}} if c.is_dir else {})}
            if not c.is_dir:
                # reachable now, never synced: empty on the platter
                os.close(os.open(self.datadir / str(child), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        self.save_meta()

    def cut(self, keep: float = 0.0, seed: int = 0, why: str = "command") -> dict:
        """The power cut (see the module docstring); returns what it dropped."""
        rng = random.Random(seed)
        dropped_writes = dropped_bytes = kept_sectors = dropped_sectors = files = 0
        for node in self.nodes.values():
            if not node.pending:
                continue
            files += 1
            dropped_writes += sum(1 for op in node.pending if op[0] == "w")
            dropped_bytes += sum(len(op[2]) for op in node.pending if op[0] == "w")
            if keep <= 0 or node.ino not in self.durable:
                continue
            kept: list[tuple] = []
            for op in node.pending:
                if op[0] == "t":
                    if rng.random() < keep:
                        kept.append(op)
                    continue
                off, buf = op[1], op[2]
                pos = 0
                while pos < len(buf):
                    end = min(len(buf), pos + SECTOR - (off + pos) % SECTOR)
                    if rng.random() < keep:
                        kept.append(("w", off + pos, buf[pos:end]))
                        kept_sectors += 1
                    else:
                        dropped_sectors += 1
                    pos = end
            self.persist_ops(node, kept)
        lost_entries = 0
        for node in self.nodes.values():
            if node.is_dir:
                durable = self.durable.get(node.ino, {}).get("entries", {})
                now = {k.decode("utf-8", "surrogateescape"): v for k, v in (node.entries or {}).items()}
                lost_entries += len(set(durable.items()) ^ set(now.items()))
        self.dead = True
        for node in self.nodes.values():
            node.pending.clear()
        return {"cut": why, "keep": keep, "seed": seed, "files_with_unsynced_writes": files,
                "unsynced_writes_dropped": dropped_writes, "unsynced_bytes_dropped": dropped_bytes,
                "sectors_kept": kept_sectors, "sectors_dropped": dropped_sectors,
                "directory_changes_dropped": lost_entries, **self.stats}

    def fire(self, why: str) -> None:
        """An armed trigger went off: cut now, tell the controller."""
        self.trigger = None
        answer = self.cut(why=why)
        if self.on_cut is not None:
            self.on_cut.send_nowait(answer)

    # -- helpers --------------------------------------------------------------------------------

    def alive(self) -> None:
        if self.dead:
            raise pyfuse3.FUSEError(errno.EIO)

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_mode = node.mode
        a.st_nlink = (2 + sum(self.nodes[c].is_dir for c in node.entries.values())) if node.is_dir else node.links
        a.st_uid, a.st_gid, a.st_rdev = node.uid, node.gid, 0
        a.st_size = 4096 if node.is_dir else len(node.data)
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a

    def child(self, parent: int, name: bytes) -> Node:
        entries = self.node(parent).entries
        if entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name not in entries:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.nodes[entries[name]]

    def new_node(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext, is_dir: bool) -> Node:
        p = self.node(parent)
        if p.entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in p.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, mode, ctx.uid, ctx.gid, entries={} if is_dir else None, links=1)
        self.next_ino += 1
        self.nodes[node.ino] = node
        p.entries[name] = node.ino
        self.names[node.ino] = name
        p.mtime_ns = time.time_ns()
        self.stats["creates"] += 1
        return node

    def open_handle(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    def truncate(self, node: Node, size: int) -> None:
        if size < len(node.data):
            del node.data[size:]
        else:
            node.data.extend(bytes(size - len(node.data)))
        node.pending.append(("t", size))
        node.mtime_ns = time.time_ns()
        self.stats["truncates"] += 1

    # -- operations -----------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx):
        self.alive()
        return self.attrs(self.child(parent_inode, name))

    async def getattr(self, inode, ctx):
        self.alive()
        return self.attrs(self.node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        self.alive()
        node = self.node(inode)
        if fields.update_size:
            self.truncate(node, attr.st_size)
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self.attrs(node)

    async def access(self, inode, mode, ctx):
        self.alive()
        return True

    async def statfs(self, ctx):
        self.alive()
        st = os.statvfs(self.backing)
        s = pyfuse3.StatvfsData()
        s.f_bsize, s.f_frsize = st.f_bsize, st.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        s.f_files, s.f_ffree, s.f_favail = st.f_files, st.f_ffree, st.f_favail
        s.f_namemax = 255
        return s

    async def opendir(self, inode, ctx):
        self.alive()
        if not self.node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self.open_handle(inode)

    async def readdir(self, fh, start_id, token):
        self.alive()
        node = self.node(self.handles[fh])
        entries = sorted((node.entries or {}).items())
        for i, (name, ino) in enumerate(entries[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, name, self.attrs(self.nodes[ino]), i + 1):
                break

    async def releasedir(self, fh):
        self.handles.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        self.alive()
        self.persist_dir(self.node(self.handles[fh]))
        self.stats["fsyncdirs"] += 1

    async def mkdir(self, parent_inode, name, mode, ctx):
        self.alive()
        return self.attrs(self.new_node(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx, True))

    async def create(self, parent_inode, name, mode, flags, ctx):
        self.alive()
        node = self.new_node(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx, False)
        return pyfuse3.FileInfo(fh=self.open_handle(node.ino)), self.attrs(node)

    async def open(self, inode, flags, ctx):
        self.alive()
        node = self.node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:
            self.truncate(node, 0)
        return pyfuse3.FileInfo(fh=self.open_handle(inode))

    async def read(self, fh, off, size):
        self.alive()
        return bytes(self.node(self.handles[fh]).data[off:off + size])

    async def write(self, fh, off, buf):
        self.alive()
        node = self.node(self.handles[fh])
        if self.trigger and self.trigger[0] == "checkpoint" and self.names.get(node.ino, b"").endswith(b".db"):
            self.fire("checkpoint: a write to the database file")
            raise pyfuse3.FUSEError(errno.EIO)
        if off > len(node.data):
            node.data.extend(bytes(off - len(node.data)))
        node.data[off:off + len(buf)] = buf
        node.pending.append(("w", off, bytes(buf)))
        node.mtime_ns = time.time_ns()
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(buf)
        return len(buf)

    async def fsync(self, fh, datasync):
        self.alive()
        node = self.node(self.handles[fh])
        if self.trigger and self.trigger[0] == "sync" and self.names.get(node.ino, b"").endswith(b"-wal"):
            if self.trigger[1] <= 1:
                self.fire("sync: an fsync of the WAL (a commit) in progress")
                raise pyfuse3.FUSEError(errno.EIO)
            self.trigger = ("sync", self.trigger[1] - 1)
        self.persist_file(node)
        self.stats["fsyncs"] += 1

    async def flush(self, fh):
        pass

    async def release(self, fh):
        self.handles.pop(fh, None)

    async def unlink(self, parent_inode, name, ctx):
        self.alive()
        node = self.child(parent_inode, name)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        del self.node(parent_inode).entries[name]
        node.links -= 1
        self.stats["unlinks"] += 1

    async def rmdir(self, parent_inode, name, ctx):
        self.alive()
        node = self.child(parent_inode, name)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del self.node(parent_inode).entries[name]
        node.links -= 1

    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.alive()
        node, p = self.node(inode), self.node(new_parent_inode)
        if p.entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if new_name in p.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        p.entries[new_name] = inode
        node.links += 1
        return self.attrs(node)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.alive()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        node = self.child(parent_inode_old, name_old)
        new_parent = self.node(parent_inode_new)
        if new_parent.entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        old = new_parent.entries.get(name_new)
        if old is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            target = self.nodes[old]
            if target.is_dir and target.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            target.links -= 1
        del self.node(parent_inode_old).entries[name_old]
        new_parent.entries[name_new] = node.ino
        self.names[node.ino] = name_new
        self.stats["renames"] += 1

    async def forget(self, inode_list):
        pass


async def control(fs: VolatileCacheFS) -> None:
    """Commands on stdin, answers on stdout (see the module docstring)."""
    send, receive = trio.open_memory_channel(10)
    fs.on_cut = send

    def answer(doc: dict) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    async def forward() -> None:
        async for doc in receive:
            answer(doc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "stats":
                    answer({**fs.stats, "dead": fs.dead})
                elif words[0] == "cut":
                    keep = float(words[1]) if len(words) > 1 else 0.0
                    seed = int(words[2]) if len(words) > 2 else 0
                    answer(fs.cut(keep, seed) if not fs.dead else {"cut": "already", **fs.stats})
                elif words[0] == "arm":
                    fs.trigger = (words[1], int(words[2]) if len(words) > 2 else 1)
                else:
                    answer({"error": f"unknown command {words[0]!r}"})
        pyfuse3.terminate()
        nursery.cancel_scope.cancel()


async def serve(fs: VolatileCacheFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control, fs)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    backing, mountpoint = Path(sys.argv[1]), sys.argv[2]
    fs = VolatileCacheFS(backing)
    options = set(pyfuse3.default_options) | {"fsname=powercut", "subtype=volatilecache"}
    pyfuse3.init(fs, mountpoint, options)
    print(json.dumps({"ready": True, "pid": os.getpid(), "orphans_removed": fs.orphans_removed,
                      "files": sum(1 for n in fs.nodes.values() if not n.is_dir)}), flush=True)
    try:
        trio.run(serve, fs)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
