"""Fake network and fake clock for driving Engines in tests (no sockets, no sleeps).

Kept in the package (not tests/) so that other rooms' tests and the docs'
examples can drive engines the same way.
"""
import random
from dataclasses import dataclass

from .engine import Engine
from .identity import Identity
from .store import MemoryRecordStore
from .config import ProtocolConfig
from .wire import parse_header, unpack_body

SWARM = bytes(range(32))


@dataclass(frozen=True)
class Raw:
    """A message with a payload packed by hand (Outbox.send takes it as any message): what a
    hostile or older peer might send, e.g. a malformed payload or an unpadded PULL."""
    TYPE: int
    payload: bytes

    def encode(self) -> bytes:
        return self.payload

class Net:
    """Engines addressed by (host, port); datagrams move only when deliver() is called."""

    def __init__(self, config: ProtocolConfig):
        self.config = config
        self.now = 0.0
        self.engines = {}          # addr -> Engine
        self.addr_of = {}          # node_id -> addr
        self.wire = []             # (data, src, dst) in flight
        self.events = {}           # addr -> [events]
        self.log = []              # every datagram ever sent: (data, src, dst)
        self.nodrain = set()       # addrs whose events are left in the engine (back-pressure tests)

    def add(self, seed: int, addr=None, bootstrap=(), store=None, config=None, generation=0,
            own_last_step=None, software="", bound_addr=None) -> Engine:
        addr = addr or (f"10.0.0.{seed}", 7000)
        eng = Engine(Identity.from_seed(seed), config or self.config, rng=random.Random(seed),
                     now=self.now, store=store if store is not None else MemoryRecordStore(),
                     bootstrap=bootstrap, generation=generation, own_last_step=own_last_step,
                     software=software, bound_addr=bound_addr)
        self.engines[addr] = eng
        self.addr_of[eng.node_id] = addr
        self.events.setdefault(addr, [])
        self.collect(addr)
        return eng

    def collect(self, addr) -> None:
        eng = self.engines[addr]
        for data, dst in eng.datagrams_to_send(self.now):
            self.wire.append((data, addr, dst))
            self.log.append((data, addr, dst))
        if addr in self.nodrain:
            return
        ev = eng.next_event()
        while ev is not None:
            self.events[addr].append(ev)
            ev = eng.next_event()

    def deliver(self, drop=lambda data, src, dst: False) -> int:
        n = 0
        while self.wire:
            batch, self.wire = self.wire, []
            for data, src, dst in batch:
                if dst in self.engines and not drop(data, src, dst):
                    self.engines[dst].receive_datagram(data, src, self.now)
                    self.collect(dst)
                    n += 1
        return n

    def advance(self, seconds: float, step: float = 0.05, drop=lambda d, s, t: False) -> None:
        end = self.now + seconds
        while self.now < end - 1e-12:
            self.now = min(end, self.now + step)
            for addr, eng in list(self.engines.items()):
                t = eng.get_timer()
                if t is not None and t <= self.now:
                    eng.handle_timer(self.now)
                    self.collect(addr)
            self.deliver(drop)

    def swarm(self, n: int, settle_s: float = 20.0) -> list:
        """n engines (seeds 1..n) that all bootstrapped from the first, settle_s later."""
        engines = [self.add(1)]
        first = self.addr_of[engines[0].node_id]
        for seed in range(2, n + 1):
            engines.append(self.add(seed, bootstrap=[first]))
        self.deliver()
        self.advance(settle_s)
        return engines

    def pair(self, settle_s: float = 2.0) -> tuple:
        """Engines a (seed 1) and b (seed 2, bootstrapped from a), settle_s later."""
        a = self.add(1)
        b = self.add(2, bootstrap=[self.addr_of[a.node_id]])
        self.advance(settle_s)
        return a, b

    def publish_unseen(self, origin: Engine, steps: int, by: Engine, seconds: float = 3.0) -> None:
        """origin publishes its steps 1..steps while every datagram carrying records to `by` is
        lost, for `seconds` (records sealed and pushed meanwhile never reach it)."""
        cfg, dst = self.config, self.addr_of[by.node_id]
        for step in range(1, steps + 1):
            origin.publish(step, step % 7 - 3, self.now)

        def lost(data, src, to):
            if to != dst:
                return False
            h = parse_header(data, cfg.protocol_version, cfg.swarm_tag, cfg.max_datagram + 200)
            return bool(unpack_body(h.body)[2])
        self.advance(seconds, drop=lost)

    def of_type(self, addr, cls):
        return [e for e in self.events[addr] if isinstance(e, cls)]


def state_of(eng: Engine) -> tuple:
    """Everything a dropped datagram must leave unchanged (counters, caches, limiters excluded)."""
    members = tuple(sorted((m.node_id, m.state, m.incarnation, m.generation, m.addr, m.channel.window.top,
                            m.channel.window.bits, m.channel.confirmed, m.channel.mac_key) for m in eng.members.members.values()))
    book = tuple(sorted((o, st.contiguous, tuple(sorted(st.pending)), st.equivocating)
                        for o, st in eng.sync.book.origins.items()))
    return (members, book, tuple(sorted(eng.store.version_vector().items())), len(eng.gossip_q),
            len(eng.sync.record_q), len(eng.events.high), eng.session.counter,
            eng.session.incarnation, tuple(sorted(eng.probing.probes)), tuple(sorted(eng.sync.pulls)),
            len(eng.outbox.datagrams))
