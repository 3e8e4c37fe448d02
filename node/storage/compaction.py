"""Log compaction: keep the update log and its in-memory index bounded.

Every `compact_interval_s` the node looks at its newest committed snapshot (vv S). Once
every live member's log holds at least S (asked over the snapshot service, `info`), no
live member can still need a record at or below S from us, and the log is compacted to
S (UpdateLog.compact: BASE entries at S, then what lies beyond). A member that was away
(not live) meanwhile and comes back behind that horizon joins from a snapshot at its next
start (node/join/snapshot_join.py): peers serve it a snapshot instead of records.

The floor is the newest snapshot this node wrote at least `compact_delay_s` ago (any
earlier snapshot's vv is covered by the newest one): a joiner that surveyed the swarm a
moment ago and took a snapshot then still finds the records after it while it becomes a
live member.

A member that does not answer `info` (an older onebyte, or a firewall on TCP) holds the
horizon back: compaction then waits, it never strands a live member.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Callable

from ..config import format_addr
from .snapshot import read_snapshot
from .snapwire import ask, vv_from_json

log = logging.getLogger("onebyte.node.storage.compaction")


class Compactor:
    """Compacts `update_log` to the newest snapshot in `snapshots` once it is delay_s old and
    every live peer (`live_peers()`: [(node_id, addr)]) logged past it."""

    def __init__(self, snapshots: Path, update_log, swarm_hex: str, live_peers: Callable[[], list],
                 interval_s: float, delay_s: float):
        self.snapshots, self.update_log, self.swarm_hex, self.live_peers = snapshots, update_log, swarm_hex, live_peers
        self.interval_s = interval_s
        self.delay_s = delay_s
        self.seen: deque = deque(maxlen=64)   # (monotonic time first seen, snapshot vv)
        self.compactions = 0
        self.last: dict | None = None        # the last compaction: floor updates, bytes, when
        self.waiting_for: str | None = None  # why the last round did not compact

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.round()
            except Exception:
                log.exception("log compaction round failed")

    async def round(self) -> bool:
        ulog = self.update_log
        snap = read_snapshot(self.snapshots)
        if snap is None:
            self.waiting_for = "no snapshot yet"
            return False
        vv = {o: n for o, n in snap.vv.items() if n}
        now = time.monotonic()
        if not self.seen or self.seen[-1][1] != vv:
            self.seen.append((now, vv))
        old = [v for t, v in self.seen if now - t >= self.delay_s]
        if not old:
            self.waiting_for = "no snapshot old enough (compact_delay_s)"
            return False
        floor = old[-1]
        have = ulog.floor_vv()
        if all(have.get(o, 0) >= n for o, n in floor.items()):
            self.waiting_for = None
            return False
        live = self.live_peers()
        answers = await asyncio.gather(*(ask(tuple(addr[:2]), self.swarm_hex, {"op": "info"}) for _, addr in live))
        for (node_id, addr), info in zip(live, answers):
            who = f"{node_id.hex()[:16]} at {format_addr(addr)}"
            if info is None:
                self.waiting_for = f"member {who} did not answer"
                return False
            try:
                theirs = vv_from_json(info.get("log", {}))
            except ValueError:
                self.waiting_for = f"member {who} answered garbage"
                return False
            if any(theirs.get(o, 0) < n for o, n in floor.items()):
                self.waiting_for = f"member {who} has not passed the snapshot yet"
                return False
        sizes = await asyncio.to_thread(ulog.compact, floor)
        if sizes is None:
            self.waiting_for = "log busy (disk full)"
            return False
        self.compactions += 1
        self.waiting_for = None
        self.last = {"floor_updates": sum(floor.values()), "bytes_before": sizes[0], "bytes_after": sizes[1],
                     "at": round(time.time(), 3)}
        log.info("log compacted to the snapshot of %d updates: %d -> %d bytes", sum(floor.values()), *sizes)
        return True

    def status(self) -> dict:
        ulog = self.update_log
        return {"compactions": self.compactions, "last": self.last, "waiting_for": self.waiting_for,
                "floor_updates": sum(ulog.floor_vv().values()), "log_bytes": ulog.size_bytes,
                "index_updates": ulog.index_updates()}
