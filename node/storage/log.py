"""The durable, append-only update log; also the engine's RecordStore.

File layout (`<state_dir>/updates.log`):

    header  16 bytes  b"onebyte-log\\0" + u32 format version (1)
    entry*  u32 payload length | u32 crc32(payload) | payload
    payload u8 kind | 16B origin | u64 first_step | u64 last_step | body
            kind 1 UPDATES: body = one signed byte q per step (first..last)
            kind 2 RECORD:  body = the origin's signed wire record covering first..last
            kind 3 BASE:    first = last = n, empty body: steps 1..n of the origin are in
                            the snapshot the log starts from (compaction or a snapshot join)
            kind 4 PROOF:   first = k: the origin equivocated (protocol/equivocation.py) and
                            is excluded from step k on; body = u16 len | record a | u16 len |
                            record b | the q of steps k.. that were logged (taken back)
            kind 5 AMEND:   origin = 16 zero bytes, first = last = n: membership amendment n
                            as it travels (protocol/amendments.py), the one kept for n;
                            a later entry for n replaces an earlier one

UPDATES entries are the node's state: the weights are a pure function of the base
model and the set of updates in UPDATES entries (docs/operations.md, "Durability").
RECORD entries are kept to serve other nodes' anti-entropy pulls.

Who writes what: a peer's steps reach the log in one call, the engine's `add(...,
delivered=(first, qs))` as it delivers them (their RECORD and their UPDATES together);
the daemon then takes what landed (`take_landed`) for the worker and writes nothing of
them itself. The node's own steps are the worker's (`append_own`, before they are
published); the engine adds their signed RECORD when it publishes them.

Ordering rules (why this is crash safe):
- a peer's updates are appended, and the log fsynced (policy `fsync`), *before* they
  are handed to the worker for replay; own updates are appended and fsynced by the
  worker right after its local step and *before* the engine publishes them. So every
  applied update is in the log, and a snapshot never covers an update the log lacks.
- on restart the node loads the latest snapshot, then replays every UPDATES step not
  covered by the snapshot's version vector; duplicates (an update logged twice) are
  recognised by (origin, step) and applied once.
- a torn last entry (short header, short payload or checksum mismatch at the very end)
  is what a crash during an append leaves: it is discarded by truncating the file. A
  bad entry followed by valid data is not a torn tail but corruption: StateError.

Everything indexed here is also held in memory (per origin: the contiguous q bytes after
its base, and the records); a 1M-update log costs a few MB. `compact(floor)` bounds both:
it rewrites the log from the index as BASE entries at `floor` (the version vector of a
committed snapshot) plus what lies beyond, atomically (temp file, fsync, rename). Steps
at or below an origin's base are no longer held: the snapshot holds them, they are not
replayed, and `get` serves no record that would leave a peer a gap below the base.

Disk full (ENOSPC/EDQUOT) is a state, not a crash (docs/security.md, "Disk full"):
- an entry lands whole or not at all: a failed or short write is truncated back to the
  last whole entry, and the in-memory index only advances after the write;
- peers' updates and records that do not fit are *held* in memory, in arrival order
  (the daemon stops taking new ones meanwhile, so the hold stays small), and `retry()`
  writes them once space returns: `append_updates` raises DiskFull for held updates,
  `retry()` returns them when they land, to be replayed then (log before apply still);
- the node's own update is never held (`append_own` raises DiskFull; the worker takes
  the step back out of the weights), so nothing unlogged is ever published;
- `disk_full` is set by any of these (or by `mark_disk_full`, for snapshots) and cleared
  by `retry()` once nothing is held and RESUME_FREE_BYTES are free again.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DiskFull, StateError
from .logfile import (FRAME, HEADER, KIND_AMEND, KIND_BASE, KIND_PROOF, NO_ORIGIN, KIND_RECORD, KIND_UPDATES, MAGIC,  # noqa: F401 (the
                      MAX_PAYLOAD, NO_SPACE, PREFIX, VERSION, encode_entry, is_tail, parse_proof_body,  # format
                      proof_body, read_all, write_log)                                         # is named here too)
from .loghold import Hold
from .durable import fsync_path

log = logging.getLogger("onebyte.node.storage.log")

# Free bytes needed to leave the disk-full state once nothing is held: some room for
# snapshots and the next appends, so a node at the edge does not flap in and out.
RESUME_FREE_BYTES = 1 << 20


def index_proof(o, step: int, a: bytes, b: bytes, taken: bytes) -> bool:
    """Origin o (log._Origin) is excluded from step on: its updates from there leave the index
    (their q are kept in the proof, to take them out of a snapshot that holds them), and so
    do its records that start there.  A lower step replaces a higher one."""
    if o.proof is not None and o.proof[0] <= step:
        return False
    del o.qs[max(0, step - o.base - 1):]
    o.records = [r for r in o.records if r[0] < step]
    o.record_keys = {(f, last) for f, last, _ in o.records}
    o.proof = (step, a, b, bytes(taken))
    return True


@dataclass
class _Origin:
    qs: bytearray = field(default_factory=bytearray)          # q of steps base+1..top (contiguous)
    records: list[tuple[int, int, bytes]] = field(default_factory=list)  # sorted by first step
    record_keys: set[tuple[int, int]] = field(default_factory=set)
    base: int = 0      # steps 1..base are in the snapshot the log starts from (KIND_BASE)
    proof: tuple | None = None   # (k, record a, record b, q bytes of steps k.. taken back)

    @property
    def top(self) -> int:
        """Highest step n such that updates 1..n are held (in the base or in qs)."""
        return self.base + len(self.qs)

    def rebase(self, floor: int) -> None:
        """Steps 1..floor are now in the base: drop their q bytes and the records below it."""
        if floor <= self.base:
            return
        del self.qs[:floor - self.base]
        self.base = floor
        self.records = [r for r in self.records if r[1] > floor]
        self.record_keys = {(f, last) for f, last, _ in self.records}

    def records_contiguous(self) -> int:
        """Highest step n such that the base and the records cover 1..n."""
        top = self.base
        for first, last, _ in self.records:
            if first > top + 1:
                break
            top = max(top, last)
        return top


class UpdateLog:
    """Append-only log with an in-memory index; thread safe (the loop appends peers'
    updates and records, the worker appends own updates)."""

    def __init__(self, path: str | Path, *, fsync: bool = True, readonly: bool = False):
        self.path = Path(path)
        self.fsync_enabled = fsync
        self.readonly = readonly
        self._lock = threading.Lock()
        self._origins: dict[bytes, _Origin] = {}
        self._amendments: dict[int, bytes] = {}   # membership amendments kept, by number
        self._dirty = False
        self.entries = 0
        self.truncated_bytes = 0   # discarded torn tail, reported in status
        self.duplicates = 0        # updates seen twice (ignored)
        self._fd: int | None = None
        self._size = 0             # bytes of whole entries in the file: where the next one goes
        self._tail_dirty = False   # a failed write may have left bytes past _size
        self._held = Hold()                       # entries waiting for disk space
        self._landed: list[tuple[bytes, int, int]] = []   # delivered updates written, not yet taken
        self.disk_full = False
        self.disk_full_events = 0                 # times the disk-full state was entered
        self.disk_full_error: str | None = None
        self._open()

    # --- opening and recovery ----------------------------------------------------------

    def _open(self) -> None:
        exists = self.path.exists()
        if self.readonly:
            data = self.path.read_bytes() if exists else b""
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                raise DiskFull(f"no space left on the device of {self.path.parent} to open the "
                               "update log; free some space (or move state_dir) and start again") from None
            data = read_all(self._fd)
        if not data:
            if not self.readonly:
                self._write_header(created=not exists)
            return
        if len(data) < len(HEADER) and HEADER.startswith(data):
            good = 0  # crashed while writing the header of a new log
        elif data[:len(MAGIC)] != MAGIC:
            raise StateError(f"{self.path} is not an onebyte update log (bad magic); "
                             "move it aside or point state_dir elsewhere")
        else:
            (version,) = struct.unpack_from("<I", data, len(MAGIC))
            if version != VERSION:
                raise StateError(f"{self.path}: update log format {version} is not supported "
                                 f"(this onebyte reads format {VERSION})")
            good = self._scan(data)
        self._size = good
        if good < len(data):
            self.truncated_bytes = len(data) - good
            log.warning("update log %s: discarding torn tail of %d bytes at offset %d",
                        self.path, self.truncated_bytes, good)
            if not self.readonly:
                os.ftruncate(self._fd, good)
                if good == 0:
                    self._write_header(created=False)
                    return
                self._sync(force=True)

    def _write_header(self, created: bool) -> None:
        """A new (or emptied) log starts with its header; no room for it is the one-line
        DiskFull error at start, and a file we just created is removed again."""
        try:
            self._write(HEADER)
            self._sync(force=True)
            fsync_path(self.path.parent)
        except DiskFull:
            os.close(self._fd)
            self._fd = None
            if created:
                self.path.unlink(missing_ok=True)
            raise DiskFull(f"no space left on the device of {self.path.parent} to start the update "
                           "log; free some space (or move state_dir) and start again") from None
        self._dirty = False

    def _scan(self, data: bytes) -> int:
        """Index every valid entry; return the offset where valid data ends."""
        off = len(HEADER)
        n = len(data)
        while off < n:
            bad = None
            if n - off < FRAME.size:
                bad = "short header"
            else:
                length, crc = FRAME.unpack_from(data, off)
                end = off + FRAME.size + length
                if length < PREFIX.size or length > MAX_PAYLOAD:
                    bad = f"bad length {length}"
                elif end > n:
                    bad = "short payload"
                else:
                    payload = data[off + FRAME.size:end]
                    if zlib.crc32(payload) != crc:
                        bad = "checksum mismatch"
            if bad is not None:
                if bad in ("short header", "short payload") or is_tail(data, off):
                    return off
                raise StateError(f"update log {self.path} is corrupt at offset {off} ({bad}) "
                                 "with valid entries after it; this is not a crash artefact. "
                                 "Restore the state directory from backup, or move it aside and "
                                 "start while peers are reachable: the node fetches its updates, its "
                                 "own included, back from them (docs/operations.md, Lost state dir)")
            self._index(payload)
            off = end
        return off

    def _index(self, payload: bytes) -> None:
        kind, origin, first, last = PREFIX.unpack_from(payload)
        body = payload[PREFIX.size:]
        if kind == KIND_UPDATES:
            self._index_updates(origin, first, body)
        elif kind == KIND_RECORD:
            self._index_record(origin, first, last, body)
        elif kind == KIND_BASE:
            self._origins.setdefault(origin, _Origin()).rebase(first)
        elif kind == KIND_PROOF:
            index_proof(self._origins.setdefault(origin, _Origin()), first, *parse_proof_body(body))
        elif kind == KIND_AMEND:
            self._amendments[first] = bytes(body)
        else:
            raise StateError(f"update log {self.path}: unknown entry kind {kind} "
                             "(written by a newer onebyte?)")
        self.entries += 1

    def _index_updates(self, origin: bytes, first: int, qs: bytes) -> tuple[int, bytes]:
        """Add to the contiguous prefix; return (first new step, new q bytes)."""
        o = self._origins.setdefault(origin, _Origin())
        have = o.top
        if first > have + 1:
            # The engine delivers each origin's updates contiguously; a gap is a bug upstream.
            raise ValueError(f"gap in updates of origin {origin.hex()}: have 1..{have}, got {first}")
        skip = have + 1 - first
        if skip > 0:
            self.duplicates += min(skip, len(qs))
        fresh = qs[skip:] if skip > 0 else qs
        o.qs.extend(fresh)
        return have + 1, bytes(fresh)

    def _index_record(self, origin: bytes, first: int, last: int, record: bytes) -> bool:
        o = self._origins.setdefault(origin, _Origin())
        if (first, last) in o.record_keys or last <= o.base:
            return False
        o.record_keys.add((first, last))
        bisect.insort(o.records, (first, last, bytes(record)))
        return True

    # --- appending ---------------------------------------------------------------------

    def append_updates(self, origin: bytes, first_step: int, qs: bytes | list[int]) -> list[tuple[bytes, int, int]]:
        """Log updates; returns the ones not seen before as [(origin, step, q)], in order.

        Durable only after `sync()` (or at once when called with the worker's own updates
        through `append_own`). Raises DiskFull when they do not fit: they are then held
        and come back from `retry()` once written."""
        body = bytes(q & 0xFF for q in qs) if not isinstance(qs, (bytes, bytearray)) else bytes(qs)
        if not body:
            return []
        with self._lock:
            start, fresh = self._fresh(origin, first_step, body)
            if not fresh:
                return []
            held = (KIND_UPDATES, origin, start, start + len(fresh) - 1, fresh)
            self._append_or_hold(held)
        return _as_updates(origin, start, fresh)

    def append_own(self, origin: bytes, step: int, qs: list[int]) -> None:
        """The worker's own updates of one local step (steps step.., one per probe): logged
        and fsynced, in one entry, before the engine may publish them.

        Never held: on DiskFull nothing of it is in the log, and the caller must not
        publish it (the worker takes it back out of the weights)."""
        body = bytes(q & 0xFF for q in qs)
        with self._lock:
            start, fresh = self._fresh(origin, step, body)
            if not fresh:
                return
            before = self._size
            self._write(encode_entry(KIND_UPDATES, origin, start, start, fresh))
            try:
                self._sync()
            except DiskFull:   # written but maybe not durable: take it back out
                self._size = before
                self._tail_dirty = True
                raise
            self._dirty = False
            self._index_updates(origin, start, fresh)
            self.entries += 1

    def _fresh(self, origin: bytes, first: int, body: bytes) -> tuple[int, bytes]:
        """(first new step, new q bytes) of updates first.. against the log and the hold."""
        o = self._origins.get(origin)
        have = max(o.top if o else 0, self._held.top(origin))
        if first > have + 1:
            # The engine delivers each origin's updates contiguously; a gap is a bug upstream.
            raise ValueError(f"gap in updates of origin {origin.hex()}: have 1..{have}, got {first}")
        skip = have + 1 - first
        if skip > 0:
            self.duplicates += min(skip, len(body))
        return have + 1, body[max(skip, 0):]

    def _append_or_hold(self, item: tuple) -> None:
        """Write one entry and index it, or hold it (in order) and raise DiskFull."""
        if not self._held:
            try:
                self._write(encode_entry(*item))
            except DiskFull:
                pass
            else:
                self._index_entry(item)
                return
        self._held.add(item)
        raise DiskFull(f"update log {self.path}: disk full, {len(self._held)} entries held")

    def _index_entry(self, item: tuple) -> None:
        kind, origin, first, last, body = item
        if kind == KIND_UPDATES:
            self._index_updates(origin, first, body)
        elif kind == KIND_PROOF:
            index_proof(self._origins.setdefault(origin, _Origin()), first, *parse_proof_body(body))
        elif kind == KIND_AMEND:
            self._amendments[first] = bytes(body)
        else:
            self._index_record(origin, first, last, body)
        self.entries += 1

    def _write(self, entry: bytes) -> None:
        """Append one whole entry, or nothing: a failed or short write is cut back off."""
        if self.readonly:
            raise RuntimeError("update log opened read-only")
        try:
            if self._tail_dirty:
                os.ftruncate(self._fd, self._size)
                self._tail_dirty = False
            view = memoryview(entry)
            while view:  # O_APPEND, under the lock: nothing else writes in between
                n = os.write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
        except OSError as exc:
            self._tail_dirty = True
            try:
                os.ftruncate(self._fd, self._size)
                self._tail_dirty = False
            except OSError:
                pass   # retried before the next write
            if exc.errno in NO_SPACE:
                self._set_full(exc.strerror or "no space left on device")
                raise DiskFull(f"update log {self.path}: {exc.strerror}") from None
            raise
        self._size += len(entry)
        self._dirty = True

    # --- disk full -----------------------------------------------------------------------

    def _set_full(self, why: str) -> None:
        if not self.disk_full:
            self.disk_full = True
            self.disk_full_events += 1
            log.warning("disk full: cannot append to %s (%s); not producing, holding new entries "
                        "in memory and retrying until space returns", self.path, why)
        self.disk_full_error = why

    def mark_disk_full(self, why: str) -> None:
        """Enter the disk-full state from outside the log (a snapshot that did not fit)."""
        with self._lock:
            self._set_full(why)

    @property
    def held(self) -> int:
        return len(self._held)

    def status(self) -> dict:
        """The log's part of the status (docs/status.md)."""
        return {"entries": self.entries, "truncated_bytes": self.truncated_bytes, "duplicates": self.duplicates,
                "fsync": self.fsync_enabled, "held": self.held, "disk_full_events": self.disk_full_events,
                "disk_full_error": self.disk_full_error}

    def retry(self) -> list[tuple[bytes, int, int]]:
        """Write what is held, in order, as far as it fits; returns the updates that landed
        (not yet synced: the caller syncs, then replays them). Leaves the disk-full state
        once nothing is held and RESUME_FREE_BYTES are free."""
        landed: list[tuple[bytes, int, int]] = []
        with self._lock:
            while self._held:
                try:
                    self._write(encode_entry(*self._held.first()))
                except DiskFull:
                    break
                item = self._held.written()
                kind, origin, first, _, body = item
                if kind == KIND_UPDATES:
                    landed.extend(_as_updates(origin, first, body))
                self._index_entry(item)
            if self.disk_full and not self._held and self._free_bytes() >= RESUME_FREE_BYTES:
                self.disk_full = False
                self.disk_full_error = None
                log.info("disk space available again: update log %s writable, resuming", self.path)
        return landed

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def sync(self) -> None:
        """Make everything appended so far durable (per the fsync policy); DiskFull if the
        file system cannot (some report ENOSPC only at fsync): retry later."""
        with self._lock:
            if self._dirty:
                self._sync()
                self._dirty = False

    def _sync(self, force: bool = False) -> None:
        if self._fd is not None and (self.fsync_enabled or force):
            try:
                os.fsync(self._fd)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                self._set_full(exc.strerror or "no space left on device")
                raise DiskFull(f"update log {self.path}: fsync: {exc.strerror}") from None

    def close(self) -> None:
        with self._lock:
            if self._held:
                log.warning("update log %s: %d entries never fitted on the disk; peers will send "
                            "them again", self.path, len(self._held))
            if self._fd is not None:
                try:
                    self._sync()
                except DiskFull:
                    pass   # what is not durable is fetched again from peers after the restart
                os.close(self._fd)
                self._fd = None

    # --- RecordStore interface (onebyte.protocol) ---------------------------------------

    def add(self, origin: bytes, first_step: int, last_step: int, record: bytes,
            delivered: tuple[int, bytes | list[int]] | None = None) -> None:
        """Called inside the engine: the record, and the steps of it the engine delivers
        (delivered = (first, qs); None for our own, which the worker logged). Never raises:
        for a full disk the entries are held and written by `retry()` (until then the record
        is not served, and `retry()` returns the updates when they land); updates written
        now are taken by `take_landed()`."""
        with self._lock:
            o = self._origins.get(origin)
            key = (first_step, last_step)
            if not ((o is not None and key in o.record_keys) or self._held.has_record(origin, *key)):
                try:
                    self._append_or_hold((KIND_RECORD, origin, first_step, last_step, bytes(record)))
                except DiskFull:
                    pass
        if delivered is not None:
            try:
                landed = self.append_updates(origin, *delivered)
            except DiskFull:
                return
            except ValueError as exc:   # a gap: the engine broke its contract; never apply it
                log.error("update log %s: ignoring updates: %s", self.path, exc)
                return
            with self._lock:
                self._landed.extend(landed)

    def take_landed(self) -> list[tuple[bytes, int, int]]:
        """The delivered updates written since the last call [(origin, step, q)], in order
        (not yet synced: the caller syncs, then replays them)."""
        with self._lock:
            landed, self._landed = self._landed, []
        return landed

    def get(self, origin: bytes, from_step: int, limit_bytes: int) -> list[bytes]:
        """Records covering from_step onwards, in step order, up to limit_bytes (at least one)."""
        with self._lock:
            o = self._origins.get(origin)
            if o is None:
                return []
            out, size = [], 0
            i = max(0, bisect.bisect_left(o.records, (from_step, 0, b"")) - 1)
            for first, last, rec in o.records[i:]:
                if last < from_step:
                    continue
                if not out and first > from_step and from_step <= o.base:
                    return []   # compacted away: the peer needs a snapshot, not a gap
                if out and size + len(rec) > limit_bytes:
                    break
                out.append(rec)
                size += len(rec)
            return out

    def add_proof(self, origin: bytes, step: int, record_a: bytes, record_b: bytes) -> None:
        """Called inside the engine when it holds a new lowest proof against origin: the
        exclusion is in the index at once (a full disk holds the entry; until it lands a
        restart learns the proof from peers again), with the q it takes back."""
        with self._lock:
            o = self._origins.setdefault(origin, _Origin())
            if o.proof is not None and o.proof[0] <= step:
                return
            taken = bytes(o.qs[max(0, step - o.base - 1):]) + (o.proof[3] if o.proof else b"")
            self._held.drop_from(origin, step)
            index_proof(o, step, record_a, record_b, taken)
            try:   # (indexed again once written: a no-op)
                self._append_or_hold((KIND_PROOF, origin, step, step + len(taken) - 1,
                                      proof_body(record_a, record_b, taken)))
            except DiskFull:
                pass

    def add_exclusion(self, origin: bytes, step: int, reason: str) -> None:
        """Called inside the engine when a rule the shell evaluates (the steering rule) excludes
        origin from step on: kept as a PROOF entry whose first record is empty and whose
        second holds the reason, so restart, compaction and the disk-full hold treat it as
        they treat an equivocation proof."""
        self.add_proof(origin, step, b"", reason.encode())

    def add_amendment(self, number: int, packed: bytes) -> None:
        """Called inside the engine when it keeps a membership amendment (the engine checked
        it); a full disk holds the entry, and peers announce it again after a restart."""
        with self._lock:
            if self._amendments.get(number) == packed:
                return
            try:
                self._append_or_hold((KIND_AMEND, NO_ORIGIN, number, number, bytes(packed)))
            except DiskFull:
                pass

    def amendments(self) -> list[bytes]:
        """The kept membership amendments, in number order (the engine checks them again)."""
        with self._lock:
            return [self._amendments[n] for n in sorted(self._amendments)]

    def proofs(self) -> dict[bytes, tuple[bytes, bytes]]:
        """Equivocation proofs: {origin: (record a, record b)}."""
        with self._lock:
            return {o: v.proof[1:3] for o, v in self._origins.items() if v.proof and v.proof[1]}

    def rule_exclusions(self) -> dict[bytes, tuple[int, str]]:
        """Exclusions by a rule the shell evaluates (add_exclusion): {origin: (step, reason)}."""
        with self._lock:
            return {o: (v.proof[0], v.proof[2].decode(errors="replace"))
                    for o, v in self._origins.items() if v.proof and not v.proof[1]}

    def taken_back(self, origin: bytes) -> tuple[int, list[int]] | None:
        """(k, q of steps k.. the log held when the origin was excluded), if it was."""
        with self._lock:
            o = self._origins.get(origin)
            if o is None or o.proof is None:
                return None
            return o.proof[0], [_signed(b) for b in o.proof[3]]

    def exclusions(self) -> dict[bytes, int]:
        with self._lock:
            return {o: v.proof[0] for o, v in self._origins.items() if v.proof}

    def version_vector(self) -> dict[bytes, int]:
        """Per origin, the highest step n such that records for 1..n are stored *and* the
        updates 1..n are logged: after a crash between the two appends the engine pulls
        the record again and the updates get logged."""
        with self._lock:
            vv = {}
            for origin, o in self._origins.items():
                n = min(o.records_contiguous(), o.top)
                if n:
                    vv[origin] = n
            return vv

    # --- state views ---------------------------------------------------------------------

    def updates_vv(self) -> dict[bytes, int]:
        """Per origin, how many updates (steps 1..n) the log holds: the node's durable state."""
        with self._lock:
            return {o: v.top for o, v in self._origins.items() if v.top}

    def updates_after(self, vv: dict[bytes, int]) -> list[tuple[bytes, int, int]]:
        """Every logged update not covered by `vv`, as [(origin, step, q)]."""
        with self._lock:
            out = []
            for origin in sorted(self._origins):
                o = self._origins[origin]
                for step in range(max(vv.get(origin, 0), o.base) + 1, o.top + 1):
                    out.append((origin, step, _signed(o.qs[step - o.base - 1])))
            return out

    def qs_of(self, origin: bytes, first: int, last: int) -> list[int]:
        """q of steps first..last that the log holds (none at or below the origin's base)."""
        with self._lock:
            o = self._origins.get(origin, _Origin())
            lo = max(first, o.base + 1)
            return [_signed(b) for b in o.qs[lo - o.base - 1:last - o.base]] if last >= lo else []

    def floor_vv(self) -> dict[bytes, int]:
        """Per origin, the base: steps 1..n the log does not hold (its snapshot does)."""
        with self._lock:
            return {o: v.base for o, v in self._origins.items() if v.base}

    @property
    def size_bytes(self) -> int:
        return self._size

    def index_updates(self) -> int:
        """q bytes held in memory (what compaction bounds)."""
        with self._lock:
            return sum(len(v.qs) for v in self._origins.values())

    # --- compaction ----------------------------------------------------------------------

    def compact(self, floor: dict[bytes, int]) -> tuple[int, int] | None:
        """Drop every step at or below `floor` (per origin) from the file and the index.

        The caller guarantees a committed snapshot holds exactly the updates of `floor`
        (and so covers them). The new log is written from the index to a temp file,
        fsynced and renamed over the old one: a crash leaves one or the other, whole.
        Returns (bytes before, bytes after), or None when nothing would go or entries
        are held for a full disk (the hold must land in the old file first)."""
        with self._lock:
            if self.readonly or self._held:
                return None
            if not any(floor.get(o, 0) > v.base and (v.qs or v.records) for o, v in self._origins.items()) \
                    and not any(o not in self._origins for o in floor):
                return None
            origins = {o: _Origin(bytearray(v.qs), list(v.records), set(v.record_keys), v.base, v.proof)
                       for o, v in self._origins.items()}
            for o, n in floor.items():
                if o in origins and origins[o].proof is not None:
                    n = min(n, origins[o].proof[0] - 1)   # never a base past an exclusion
                origins.setdefault(o, _Origin()).rebase(n)
            before = self._size
            try:
                fd, size, n = write_log(self.path, origins, dict(self._amendments))
            except DiskFull:
                return None   # the old log stays, whole; compaction is retried later
            os.close(self._fd)
            self._fd = fd
            self._origins = origins
            self._size = size
            self.entries = n
            self._dirty = False
            self._tail_dirty = False
            return before, self._size


def _as_updates(origin: bytes, first: int, qs: bytes) -> list[tuple[bytes, int, int]]:
    return [(origin, first + i, _signed(b)) for i, b in enumerate(qs)]


def _signed(b: int) -> int:
    return b - 256 if b > 127 else b
