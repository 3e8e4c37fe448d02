"""SWIM membership table: states, incarnations, suspicion, forgetting.

The engine feeds it verified facts (a certificate, an accusation from an
authenticated member, a signed leave) and it decides state transitions,
emitting events and gossip through callbacks.  Rules follow SWIM/memberlist:
a higher (generation, incarnation) always wins; a SUSPECT or DEAD with an
incarnation >= ours overrides ALIVE; only the subject can refute, by bumping
its incarnation.
"""
from __future__ import annotations

from enum import IntEnum

from .events import PeerAlive, PeerDead, PeerJoined, PeerLeft, PeerSuspected
from .replay_window import ReplayWindow


class MemberState(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class Member:
    __slots__ = ("node_id", "pub", "xpub", "generation", "incarnation", "cert", "addr", "state",
                 "state_since", "mac_key", "window", "confirmed", "rtt", "last_heard",
                 "told_dead")

    def __init__(self, node_id, pub, xpub, generation, incarnation, cert, addr, now):
        self.node_id = node_id
        self.pub = pub
        self.xpub = xpub
        self.generation = generation
        self.incarnation = incarnation
        self.cert = cert
        self.addr = addr
        self.state = MemberState.ALIVE
        self.state_since = now
        self.mac_key: bytes | None = None
        self.window = ReplayWindow()
        self.confirmed = False   # peer proved it holds our cert (sent us a MAC'd datagram)
        self.rtt: float | None = None
        self.last_heard = None
        self.told_dead = 0.0     # last time we told this (dead-to-us) peer so it can refute

    @property
    def live(self) -> bool:
        return self.state <= MemberState.SUSPECT


class Membership:
    def __init__(self, config, self_id: bytes, emit, broadcast):
        self.config = config
        self.self_id = self_id
        self.members: dict[bytes, Member] = {}
        self._emit = emit               # emit(Event)
        self._broadcast = broadcast     # broadcast(kind, node_id, member|None)
        self._probe_order: list = []
        self._live_count = 0
        self._live: list | None = None   # cached live members with an address
        # ids in SUSPECT, DEAD or LEFT: what expire() looks at (a dict: insertion-ordered, so
        # runs are reproducible across processes, unlike a set of bytes)
        self._not_alive: dict = {}

    def invalidate(self) -> None:
        self._live = None

    # ---------------------------------------------------------- views
    def live_count(self) -> int:
        return self._live_count

    def live_members(self) -> list:
        if self._live is None:
            self._live = [m for m in self.members.values() if m.live and m.addr is not None]
        return self._live

    def random_live(self, rng, k: int, exclude=()) -> list:
        pool = self.live_members()
        if len(pool) <= k + len(exclude):
            return [m for m in pool if m.node_id not in exclude][:k]
        out = []
        for m in rng.sample(pool, k + len(exclude)):
            if m.node_id not in exclude:
                out.append(m)
        return out[:k]

    def _set_state(self, m: Member, state: MemberState, now: float) -> None:
        was_live = m.live
        self._live = None
        m.state = state
        m.state_since = now
        if state == MemberState.ALIVE:
            self._not_alive.pop(m.node_id, None)
        else:
            self._not_alive[m.node_id] = None
        self._live_count += int(m.live) - int(was_live)

    # ---------------------------------------------------------- facts
    def on_cert(self, node_id, pub, xpub, gen, inc, cert, addr, now, direct: bool):
        """A verified certificate.  Returns (member, fresh_session) or (None, False) if stale."""
        m = self.members.get(node_id)
        if m is None:
            if len(self.members) >= self.config.max_peers and not self._evict_one():
                return None, False
            m = Member(node_id, pub, xpub, gen, inc, cert, addr, now)
            self.members[node_id] = m
            self._live = None
            self._live_count += 1
            self._probe_order.append(node_id)
            self._emit(PeerJoined(node_id, addr))
            self._broadcast("alive", node_id, m)
            return m, True
        if addr is not None and m.addr != addr:
            self._live = None
        if direct and addr is not None:
            m.addr = addr  # an authenticated datagram's source address is authoritative
        elif m.addr is None:
            m.addr = addr
        if (gen, inc) <= (m.generation, m.incarnation):
            return m, False
        if gen == m.generation and xpub != m.xpub:
            return m, False  # two session keys in one generation: the first one seen wins
        fresh = gen != m.generation
        if fresh:
            if gen < m.generation:
                return m, False
            # A restart: new session key, new counter space.
            m.xpub, m.mac_key, m.window, m.confirmed = xpub, None, ReplayWindow(), False
            if not direct and addr is not None:
                m.addr = addr
        m.generation, m.incarnation, m.cert = gen, inc, cert
        if not m.live:
            self._set_state(m, MemberState.ALIVE, now)
            self._emit(PeerJoined(node_id, m.addr))
        elif m.state == MemberState.SUSPECT:
            self._set_state(m, MemberState.ALIVE, now)
            self._emit(PeerAlive(node_id))
        self._broadcast("alive", node_id, m)
        return m, fresh

    def on_suspect(self, node_id, inc, now) -> None:
        m = self.members.get(node_id)
        if m is None or inc < m.incarnation or m.state != MemberState.ALIVE:
            return
        m.incarnation = inc  # noqa: accusation about the current incarnation
        self._set_state(m, MemberState.SUSPECT, now)
        self._emit(PeerSuspected(node_id))
        self._broadcast("suspect", node_id, m)

    def on_dead(self, node_id, inc, now) -> None:
        m = self.members.get(node_id)
        if m is None or inc < m.incarnation or not m.live:
            return
        self._set_state(m, MemberState.DEAD, now)
        self._emit(PeerDead(node_id))
        self._broadcast("dead", node_id, m)

    def on_leave(self, m: Member, gen, inc, now) -> None:
        if (gen, inc) < (m.generation, m.incarnation) or m.state == MemberState.LEFT:
            return
        m.incarnation = inc
        self._set_state(m, MemberState.LEFT, now)
        self._emit(PeerLeft(m.node_id))
        self._broadcast("leave", m.node_id, m)

    # ---------------------------------------------------------- probing
    def next_probe_target(self, rng):
        """Round-robin over a shuffled list (SWIM's bounded detection time)."""
        for _ in range(2):
            while self._probe_order:
                nid = self._probe_order.pop()
                m = self.members.get(nid)
                if m is not None and m.live and m.addr is not None:
                    return m
            order = [nid for nid, m in self.members.items() if m.live]
            rng.shuffle(order)
            self._probe_order = order
        return None

    def expire(self, now: float) -> None:
        """Suspects past their timeout become dead; dead/left past dead_forget_s are forgotten."""
        timeout = self.config.suspicion_timeout(self._live_count + 1)
        forget = []
        for nid in list(self._not_alive):
            m = self.members.get(nid)
            if m is None:
                self._not_alive.pop(nid, None)
                continue
            if m.state == MemberState.SUSPECT and now - m.state_since >= timeout:
                self._set_state(m, MemberState.DEAD, now)
                self._emit(PeerDead(m.node_id))
                self._broadcast("dead", m.node_id, m)
            elif not m.live and now - m.state_since >= self.config.dead_forget_s:
                forget.append(m.node_id)
        for nid in forget:
            del self.members[nid]
            self._not_alive.pop(nid, None)
            self._live = None

    def _evict_one(self) -> bool:
        """Table full: forget the longest-dead member, if any (live ones are never evicted)."""
        dead = [m for m in self.members.values() if not m.live]
        if not dead:
            return False
        victim = min(dead, key=lambda m: m.state_since)
        del self.members[victim.node_id]
        self._not_alive.pop(victim.node_id, None)
        self._live = None
        return True
