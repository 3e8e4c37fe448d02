"""Deterministic swarm simulator: many Engines in one process over a simulated network.

An event-driven loop over one heap of (time, seq, kind, ...) entries: engine
timers, in-flight datagrams and scheduled actions.  The network has delay and
jitter, loss, duplication, reordering (extra delay), partitions and churn
(join, leave, crash, restart), and NATs: a node may sit alone behind a
port-restricted cone or a symmetric NAT (SimNat) with a mapping timeout.
Same seed => same run, bit for bit.

Crypto is real.  By default all engines share one CryptoCache (memoized
Ed25519 verifications and X25519 secrets): each distinct signature is verified
once per process instead of once per simulated node.  This changes CPU time
only, never an outcome; bench JSON says so in its "crypto" field.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from .config import ProtocolConfig
from .engine import Engine
from .identity import CryptoCache, Identity
from .store import MemoryRecordStore
from .wire import MessageType

_TYPE_OFFSET = 9   # version u8 | swarm_tag 8 | type u8 (wire.py)

TIMER, DGRAM, ACTION = 0, 1, 2
NAT_KINDS = ("cone", "symmetric")


class SimNat:
    """One node's NAT.  cone: one public port for every remote (endpoint-independent mapping);
    symmetric: a port per remote.  Both filter port-restricted: a datagram from outside passes
    only from a remote the inside sent to within timeout_s.  Mappings expire timeout_s after
    their last outbound datagram, as in tests/net/netlab_switch.py."""

    def __init__(self, kind: str, public_ip: str, timeout_s: float):
        if kind not in NAT_KINDS:
            raise ValueError(f"NAT kind must be one of {NAT_KINDS}, not {kind!r}")
        self.kind, self.ip, self.timeout_s = kind, public_ip, timeout_s
        self.by_remote: dict = {}   # remote (symmetric) or None (cone) -> public port
        self.ports: dict = {}       # public port -> [key, last outbound, {remote: last sent to}]
        self._next_port = 40000

    def outbound(self, remote, now: float) -> tuple:
        key = remote if self.kind == "symmetric" else None
        port = self.by_remote.get(key)
        if port is not None and now - self.ports[port][1] >= self.timeout_s:
            del self.ports[port]
            port = None
        if port is None:
            port = self.by_remote[key] = self._next_port
            self._next_port += 1
            self.ports[port] = [key, now, {}]
        entry = self.ports[port]
        entry[1] = now
        entry[2][remote] = now
        return (self.ip, port)

    def inbound(self, port: int, remote, now: float) -> bool:
        entry = self.ports.get(port)
        if entry is None or now - entry[1] >= self.timeout_s:
            return False
        sent = entry[2].get(remote)
        return sent is not None and now - sent < self.timeout_s


@dataclass
class NetConfig:
    delay_s: float = 0.01        # one-way base latency (LAN-like)
    jitter_s: float = 0.005      # uniform extra latency
    loss: float = 0.0            # probability a datagram is lost
    duplicate: float = 0.0       # probability a datagram is delivered twice
    reorder: float = 0.0         # probability a datagram gets a large extra delay
    reorder_delay_s: float = 0.1


@dataclass
class SimNode:
    index: int
    identity: Identity
    addr: tuple
    store: MemoryRecordStore
    engine: Engine | None = None
    alive: bool = False
    generation: int = 0
    timer_at: float | None = None
    group: int = 0
    publishing: bool = False
    rate: float = 0.0
    own_emitted: int = 0             # own contiguous step already reported as a record
    events: list = field(default_factory=list)
    nat: SimNat | None = None        # its NAT; addr is then its inside address


class Swarm:
    def __init__(self, n: int, config: ProtocolConfig, *, seed: int = 0, net: NetConfig | None = None,
                 bootstrap_k: int = 3, share_crypto: bool = True, keep_events: bool = False,
                 on_event=None, on_record=None, nat: dict | None = None, nat_timeout_s: float = 30.0):
        """nat: {node index: "cone" | "symmetric"} for nodes behind a NAT of their own.  With
        any NAT, engines learn their bound address and bootstrap from public nodes only."""
        self.config = config
        self.net = net or NetConfig()
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = 0.0
        self.bootstrap_k = bootstrap_k
        self.shared_crypto = CryptoCache(max_entries=2_000_000) if share_crypto else None
        self.keep_events = keep_events
        self.on_event = on_event      # on_event(node, event, now)
        self.on_record = on_record    # on_record(node, first_step, last_step, now): own record emitted
        self._heap: list = []
        self._seq = 0
        self.nodes: list[SimNode] = []
        self.by_addr: dict = {}
        self.partitioned = False
        self.stats = {"sent": 0, "lost": 0, "duplicated": 0, "partition_dropped": 0, "delivered": 0,
                      "largest_datagram": 0, "bytes": 0, "relay_bytes": 0, "nat_dropped": 0}
        self.nat_kinds = dict(nat or {})
        self.nat_timeout_s = nat_timeout_s
        self.nat_ips: dict = {}   # a NAT's public ip -> its node
        for _ in range(n):
            self.add_node(start=False)

    # ------------------------------------------------------------ setup and churn
    def add_node(self, start: bool = True) -> SimNode:
        i = len(self.nodes)
        # Both address families appear: every third node has an IPv6 address.
        addr = (f"fd00::{i:x}", 7000) if i % 3 == 2 else (f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 7000)
        node = SimNode(i, Identity.from_seed(self.seed * 1_000_003 + i), addr, MemoryRecordStore())
        self.nodes.append(node)
        kind = self.nat_kinds.get(i)
        if kind is None:
            self.by_addr[addr] = node
        else:   # its inside address is reachable from nowhere; its NAT's public one from all
            node.addr = (f"192.168.{(i // 256) % 256}.{i % 256}", 7000)
            node.nat = SimNat(kind, f"203.{i // 65536}.{(i // 256) % 256}.{i % 256}", self.nat_timeout_s)
            self.nat_ips[node.nat.ip] = node
        if start:
            self.start(node)
        return node

    def _bootstrap_for(self, node: SimNode) -> list:
        others = [m.addr for m in self.nodes[:max(node.index, 1)] if m is not node and m.nat is None]
        if not others and self.nat_kinds:
            others = [m.addr for m in self.nodes if m is not node and m.nat is None]
        if not others:
            return []
        return self.rng.sample(others, min(self.bootstrap_k, len(others)))

    def start(self, node: SimNode, own_last_step: int | None = None) -> None:
        node.generation += 1
        node.engine = Engine(node.identity, self.config, rng=random.Random(self.rng.getrandbits(64)),
                             now=self.now, store=node.store, bootstrap=self._bootstrap_for(node),
                             own_last_step=own_last_step, generation=node.generation,
                             crypto=self.shared_crypto, bound_addr=node.addr if self.nat_kinds else None)
        node.alive = True
        node.own_emitted = node.engine.book.contiguous(node.engine.node_id)
        node.timer_at = None
        self._after(node)

    def start_all(self, stagger_s: float = 0.0) -> None:
        for node in self.nodes:
            if not node.alive:
                if stagger_s:
                    self.schedule(self.rng.uniform(0, stagger_s), self.start, node)
                else:
                    self.start(node)

    def crash(self, node: SimNode) -> None:
        """Lose the engine's memory (not its store), silently."""
        node.alive = False
        node.engine = None
        node.publishing = False

    def restart(self, node: SimNode) -> None:
        self.start(node)

    def leave(self, node: SimNode) -> None:
        node.publishing = False
        node.engine.leave(self.now)
        self._after(node)
        node.alive = False

    def partition(self, groups: list) -> None:
        """groups: list of lists of node indices; nodes in different groups cannot talk."""
        for g, members in enumerate(groups):
            for i in members:
                self.nodes[i].group = g
        self.partitioned = True

    def heal(self) -> None:
        for node in self.nodes:
            node.group = 0
        self.partitioned = False

    def live_nodes(self) -> list:
        return [n for n in self.nodes if n.alive]

    # ------------------------------------------------------------ publishing
    def set_publishing(self, node: SimNode, rate: float) -> None:
        """Publish `rate` updates per simulated second from node (steady, random phase)."""
        node.rate = rate
        if not node.publishing and rate > 0:
            node.publishing = True
            self.schedule(self.rng.uniform(0, 1.0 / rate), self._publish_tick, node, node.generation)
        elif rate <= 0:
            node.publishing = False

    def _publish_tick(self, node: SimNode, gen: int) -> None:
        if not node.alive or not node.publishing or node.generation != gen:
            return
        eng = node.engine
        # q like an honest node's (mean |q| about 10, as in docs/results.md), well inside the
        # influence budget; tests of the budget publish their own q.
        q = max(-127, min(127, round(self.rng.gauss(0.0, 12.0))))
        eng.publish(eng.next_own_step, q, self.now)
        self._after(node)
        self.schedule(1.0 / node.rate, self._publish_tick, node, gen)

    # ------------------------------------------------------------ loop
    def schedule(self, delay: float, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, ACTION, fn, args))

    def _after(self, node: SimNode) -> None:
        """Collect a node's output, events and timer after any interaction."""
        eng = node.engine
        now = self.now
        out = eng.datagrams_to_send(now)
        if out:
            self._transmit(node, out)
        ev = eng.next_event()
        while ev is not None:
            if self.keep_events:
                node.events.append(ev)
            if self.on_event is not None:
                self.on_event(node, ev, now)
            ev = eng.next_event()
        own = eng.book.origins.get(eng.node_id)
        if own is not None and own.contiguous != node.own_emitted:
            if self.on_record is not None:
                self.on_record(node, node.own_emitted + 1, own.contiguous, now)
            node.own_emitted = own.contiguous
        t = eng.get_timer()
        if t is not None:
            t = max(t, now)
            if t != node.timer_at:
                node.timer_at = t
                self._seq += 1
                heapq.heappush(self._heap, (t, self._seq, TIMER, node, node.generation))

    def _transmit(self, src: SimNode, out: list) -> None:
        net, rng, heap = self.net, self.rng, self._heap
        stats = self.stats
        for data, dst in out:
            stats["sent"] += 1
            stats["bytes"] += len(data)
            if data[_TYPE_OFFSET] == MessageType.RELAY:
                stats["relay_bytes"] += len(data)
            if len(data) > stats["largest_datagram"]:
                stats["largest_datagram"] = len(data)
            src_addr = src.addr if src.nat is None else src.nat.outbound(dst, self.now)
            if net.loss and rng.random() < net.loss:
                self.stats["lost"] += 1
                continue
            target = self.by_addr.get(dst)
            if target is None:
                target = self.nat_ips.get(dst[0])
                if target is None:
                    continue
                if not target.nat.inbound(dst[1], src_addr, self.now):
                    stats["nat_dropped"] += 1
                    continue
            if self.partitioned and target.group != src.group:
                self.stats["partition_dropped"] += 1
                continue
            copies = 2 if net.duplicate and rng.random() < net.duplicate else 1
            if copies == 2:
                self.stats["duplicated"] += 1
            for _ in range(copies):
                delay = net.delay_s + rng.random() * net.jitter_s
                if net.reorder and rng.random() < net.reorder:
                    delay += rng.random() * net.reorder_delay_s
                self._seq += 1
                heapq.heappush(heap, (self.now + delay, self._seq, DGRAM, target, (data, src_addr)))

    def run_until(self, t_end: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t_end:
            t, _, kind, a, b = heapq.heappop(heap)
            self.now = t
            if kind == DGRAM:
                if a.alive:
                    self.stats["delivered"] += 1
                    a.engine.receive_datagram(b[0], b[1], t)
                    self._after(a)
            elif kind == TIMER:
                if a.alive and a.generation == b and a.timer_at == t:
                    a.timer_at = None
                    a.engine.handle_timer(t)
                    self._after(a)
            else:
                a(*b)
        self.now = max(self.now, t_end)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def inject(self, dst: SimNode, data: bytes, src_addr) -> None:
        """Deliver raw bytes to a node now (tests: forged or replayed datagrams)."""
        dst.engine.receive_datagram(data, src_addr, self.now)
        self._after(dst)

    # ------------------------------------------------------------ checks
    def converged(self, nodes=None) -> bool:
        """Every given live node holds, per origin, at least what every other holds."""
        nodes = [n for n in (nodes or self.nodes) if n.alive]
        if not nodes:
            return True
        best: dict = {}
        for n in nodes:
            for o, s in n.engine.version_vector().items():
                if s > best.get(o, 0):
                    best[o] = s
        return all(all(n.engine.book.contiguous(o) >= s for o, s in best.items()) for n in nodes)
