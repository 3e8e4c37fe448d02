"""Who this node knows, for `onebyte members` and the bootstrap warnings.

The engine's membership table (SWIM: alive / suspect / dead / left) forgets a dead peer
after a while and knows nothing of traffic; the operator wants both. `PeerBook` lives
on the loop thread and keeps, per address, what was exchanged and when, per node id
the last state change (kept MEMBER_RETENTION_S after the engine forgot it), and per
configured bootstrap peer whether it ever answered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..config import format_addr

log = logging.getLogger("onebyte.node.ops.members")

MEMBER_RETENTION_S = 3600.0     # a forgotten peer stays listed this long after its last change
BOOTSTRAP_SILENT_WARN_S = 30.0  # warn once about a bootstrap peer silent this long


@dataclass
class Traffic:
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    last_heard: float | None = None


@dataclass
class Bootstrap:
    """A configured peer: "host:port" as written, its resolved address once known."""
    spec: str
    addr: tuple | None = None
    since: float = field(default_factory=time.time)   # configured (start) time
    error: str | None = None                          # last resolution error
    warned: bool = False


@dataclass
class Seen:
    state: str
    since: float          # wall-clock time of the last state change
    addr: object = None


class PeerBook:
    def __init__(self, labels: dict[str, str] | None = None):
        self.traffic: dict[tuple, Traffic] = {}
        self.seen: dict[bytes, Seen] = {}
        self.bootstrap: list[Bootstrap] = []
        self.labels = dict(labels or {})

    # --- fed by the daemon ------------------------------------------------------------------

    def heard(self, addr, size: int) -> None:
        t = self.traffic.setdefault(_key(addr), Traffic())
        now = time.time()
        t.bytes_in += size
        t.datagrams_in += 1
        t.last_heard = now

    def sent(self, addr, size: int) -> None:
        t = self.traffic.setdefault(_key(addr), Traffic())
        t.bytes_out += size

    def state_changed(self, node_id: bytes, state: str, addr=None) -> None:
        prev = self.seen.get(node_id)
        self.seen[node_id] = Seen(state, time.time(), addr if addr is not None else (prev.addr if prev else None))
        self._expire()

    def label(self, node_id: bytes) -> str | None:
        hexid = node_id.hex()
        for prefix, name in self.labels.items():
            if hexid.startswith(prefix.lower()):
                return name
        return None

    def silent_status(self) -> list[dict]:
        """Configured bootstrap peers never heard from (wrong address, firewall, down)."""
        now = time.time()
        return [{"peer": b.spec, "addr": addr_text(b.addr), "error": b.error, "silent_s": round(now - b.since, 1)}
                for b in self.silent_bootstrap(now)]

    def silent_bootstrap(self, now: float | None = None) -> list[Bootstrap]:
        """Bootstrap peers that never answered (or never resolved), warning once about each
        one silent for BOOTSTRAP_SILENT_WARN_S."""
        now = time.time() if now is None else now
        out = []
        for b in self.bootstrap:
            t = self.traffic.get(_key(b.addr)) if b.addr else None
            if t is not None and t.datagrams_in:
                continue
            out.append(b)
            if not b.warned and now - b.since >= BOOTSTRAP_SILENT_WARN_S:
                b.warned = True
                why = f"cannot resolve: {b.error}" if b.addr is None else "no answer"
                log.warning("bootstrap peer %s: %s for %.0f s (wrong address, firewall, or the peer is down)",
                            b.spec, why, now - b.since)
        return out

    def _expire(self) -> None:
        cutoff = time.time() - MEMBER_RETENTION_S
        for nid in [n for n, s in self.seen.items() if s.state in ("dead", "left") and s.since < cutoff]:
            del self.seen[nid]


def build_members(d) -> list[dict]:
    """Every member known to daemon `d`: the engine's table, peers it forgot recently, and
    for a closed swarm the genesis members never seen. Sorted: live first, then by id."""
    book: PeerBook = d.peers
    now = time.time()
    vv = d.update_log.updates_vv()
    rows: dict[bytes, dict] = {}
    for p in d.engine.peers() if d.engine is not None else ():
        seen = book.seen.get(p.node_id)
        rows[p.node_id] = _row(book, p.node_id, p.state, p.addr, seen.since if seen else None,
                               p.rtt_s, vv, now, version=p.version, incarnation=p.incarnation,
                               generation=p.generation)
    for nid, seen in book.seen.items():
        if nid not in rows and nid != d.node_id:
            rows[nid] = _row(book, nid, seen.state if seen.state != "alive" else "forgotten", seen.addr,
                             seen.since, None, vv, now)
    am = d.engine.amendments if d.engine is not None else None
    for pub in d.genesis.member_keys() | (am.admitted if am is not None else set()):
        nid = d.node_id_of(pub)
        if nid not in rows and nid != d.node_id:
            rows[nid] = _row(book, nid, "never seen", None, None, None, vv, now)
    for pub, step in (am.revoked.items() if am is not None else ()):
        nid = d.node_id_of(pub)
        if nid != d.node_id:   # its row says so, whatever the table held last
            rows[nid] = dict(rows.get(nid) or _row(book, nid, "revoked", None, None, None, vv, now),
                             state="revoked", revoked_from_step=step)
    order = {"alive": 0, "suspect": 1, "dead": 2, "left": 3, "forgotten": 4, "never seen": 5, "revoked": 6}
    return sorted(rows.values(), key=lambda r: (order.get(r["state"], 9), r["node_id"]))


def build_amendments(d) -> list[dict]:
    """The membership amendments daemon `d` holds (protocol/amendments.py), in number order;
    in_effect: inside the contiguous prefix that applies (a later one waits for a gap)."""
    from onebyte.protocol.amendments import AmendKind
    am = d.engine.amendments if d.engine is not None else None
    if am is None:
        return []
    return [{"number": n, "kind": AmendKind(a.kind).name.lower(), "key": a.key.hex(),
             "node_id": d.node_id_of(a.key).hex(), "step": a.step or None,
             "new_key": a.new_key.hex() or None, "signatures": len(a.sigs), "in_effect": n <= am.applied}
            for n, a in sorted(am.held.items())]


def _row(book: PeerBook, nid: bytes, state: str, addr, since, rtt, vv, now: float, version=None,
         **extra) -> dict:
    t = book.traffic.get(_key(addr)) if addr is not None else None
    return {
        "node_id": nid.hex(),
        "label": book.label(nid),
        "addr": addr_text(addr),
        "state": state,
        "since": since,
        "version": version,   # as its ALIVE items announce it (unsigned: a hint for operators)
        "last_heard_s_ago": round(now - t.last_heard, 1) if t and t.last_heard else None,
        "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
        "updates": vv.get(nid, 0),
        "bytes_in": t.bytes_in if t else 0,
        "bytes_out": t.bytes_out if t else 0,
        **extra,
    }


def _key(addr) -> tuple:
    return (str(addr[0]), int(addr[1])) if addr is not None else ("", 0)


def addr_text(addr) -> str | None:
    """config.format_addr, or None for a member whose address we do not know."""
    return format_addr(addr) if addr is not None else None
