"""SWIM membership table: states, incarnations, suspicion, forgetting.

The engine feeds it verified facts (a certificate, an accusation from an
authenticated member, a signed leave) and it decides state transitions.  Each
transition comes back as a Change value: the event for the driver and the gossip
item that spreads it, for the engine to hand on.  Rules follow SWIM/memberlist:
a higher (generation, incarnation) always wins; a SUSPECT or DEAD with an
incarnation >= ours overrides ALIVE; only the subject can refute, by bumping its
incarnation.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .config import ProtocolConfig
from .events import Event, PeerAlive, PeerDead, PeerJoined, PeerLeft, PeerSuspected
from .replay_window import ReplayWindow
from .session import Cert
from .wire import NatKind, WireError, alive_tag, encode_alive, encode_dead, encode_leave, encode_suspect


# Peer exchange compares how many live nodes each side holds per bucket of node ids (the
# PEERS_REQ payload, one byte per bucket): where the asker holds fewer, a certificate we
# believe it holds may have been lost on its way.
MEMBER_BUCKETS = 32


def member_bucket(node_id: bytes) -> int:
    return node_id[0] % MEMBER_BUCKETS


class MemberState(IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class PeerChannel:
    """Our authenticated channel with a peer (protocol/session.py writes it); a new
    certificate generation of the peer starts a new one."""
    __slots__ = ("mac_key", "window", "confirmed")

    def __init__(self):
        self.mac_key: bytes | None = None
        self.window = ReplayWindow()
        self.confirmed = False   # the peer proved it holds our cert (sent us a MAC'd datagram)


class PeerPath:
    """How we reach a peer behind a NAT (protocol/nat.py writes it)."""
    __slots__ = ("until", "relay")

    def __init__(self):
        self.until = float("-inf")        # until when we hold a direct path through its NAT
        self.relay: bytes | None = None   # the member relaying for us, if no path


class PeerProbe:
    """What probing learns of a peer (protocol/probing.py writes it)."""
    __slots__ = ("rtt", "told_dead", "heard_at")

    def __init__(self):
        self.rtt: float | None = None
        self.told_dead = 0.0            # last time we told this (dead-to-us) peer so it can refute
        self.heard_at = float("-inf")   # its last authenticated datagram


class Member:
    """One peer as this node knows it. Each part has one writer: the identity and membership
    state here (Membership), `channel` (Session), `probe` (Probing), `path` (Nat), `known`
    (dissemination.note_held)."""
    __slots__ = ("node_id", "pub", "xpub", "generation", "incarnation", "cert", "addr", "state",
                 "state_since", "channel", "probe",
                 "nat", "path", "known", "version", "asked")

    def __init__(self, cert: Cert, addr, now: float):
        self.node_id = cert.node_id
        self.pub = cert.pub
        self.xpub = cert.xpub
        self.generation = cert.generation
        self.incarnation = cert.incarnation
        self.cert = cert.raw
        self.addr = addr
        self.state = MemberState.ALIVE
        self.state_since = now
        self.channel = PeerChannel()
        self.probe = PeerProbe()
        # Reachability (protocol/nat.py): what it announces, until when we hold a direct path
        # through its NAT (it sent to us lately), and the member relaying for us if no path.
        self.nat = NatKind.OPEN
        self.version: str | None = None   # its software version, as its ALIVE items say (a hint)
        self.path = PeerPath()
        # Certificates it is known to hold: node id -> alive_tag (protocol/wire.py), from ALIVE
        # items it sent us or we sent it; ALIVE gossip skips these (dissemination.py).
        self.known: dict = {}
        self.asked = False   # while SUSPECT: we asked whether it was refuted (ripe_suspects)

    @property
    def live(self) -> bool:
        return self.state <= MemberState.SUSPECT


@dataclass(frozen=True)
class Change:
    """A membership transition, as a value for the engine to hand on."""
    node_id: bytes
    event: Event | None   # for the driver; None: news for peers only (a new incarnation)
    gossip: bytes         # the packed item that spreads it (replaces older items about node_id)
    back: bool = False    # a member we held dead (or gone) is alive again


class Membership:
    def __init__(self, config: ProtocolConfig):
        self.config = config
        self.members: dict[bytes, Member] = {}
        self._probe_order: list = []
        self._live_count = 0
        self._live: list | None = None   # cached live members with an address
        # ids in SUSPECT, DEAD or LEFT: what expire() looks at (a dict: insertion-ordered, so
        # runs are reproducible across processes, unlike a set of bytes)
        self._not_alive: dict = {}
        # Who we can reach (protocol/nat.py sets it): None while every member is reachable
        # at its address, as in a swarm without NATs.
        self.reachable = None

    # ---------------------------------------------------------- views
    def get(self, node_id: bytes) -> Member | None:
        return self.members.get(node_id)

    def live_count(self) -> int:
        return self._live_count

    def live_members(self) -> list:
        if self._live is None:
            self._live = [m for m in self.members.values() if m.live and m.addr is not None]
        return self._live

    def reachable_live(self) -> list:
        """Live members we can send to: with a NAT on the way, those with a path."""
        pool = self.live_members()
        return pool if self.reachable is None else [m for m in pool if self.reachable(m)]

    def random_live(self, rng, k: int, exclude=()) -> list:
        pool = self.reachable_live()
        if len(pool) <= k + len(exclude):
            return [m for m in pool if m.node_id not in exclude][:k]
        out = []
        for m in rng.sample(pool, k + len(exclude)):
            if m.node_id not in exclude:
                out.append(m)
        return out[:k]

    def bucket_counts(self, own_id: bytes) -> bytes:
        """Live nodes we hold (ourselves included) per member bucket, each capped at 255: the
        PEERS_REQ payload."""
        counts = [0] * MEMBER_BUCKETS
        counts[member_bucket(own_id)] += 1
        for m in self.members.values():
            if m.live:
                counts[member_bucket(m.node_id)] += 1
        return bytes(min(c, 255) for c in counts)

    def lacking(self, theirs, own_id: bytes) -> set:
        """Buckets where a PEERS_REQ's counts (theirs; None from an asker that sends none) are
        below ours: the asker lacks some member we hold there."""
        if theirs is None:
            return set()
        if not isinstance(theirs, bytes) or len(theirs) != MEMBER_BUCKETS:
            raise WireError("malformed")
        ours = self.bucket_counts(own_id)
        return {b for b in range(MEMBER_BUCKETS) if ours[b] > theirs[b]}

    def to_exchange(self, asker: Member, theirs, own_id: bytes, rng, k: int) -> list:
        """Up to k live members for a PEERS answer to asker (theirs: its PEERS_REQ counts).
        Certificates it is not known to hold (Member.known) go first: each goes to it once.
        Then, where it counts fewer live nodes than we do, those we believe it holds: the
        datagram that carried one to it may have been lost."""
        lacking = self.lacking(theirs, own_id)
        fresh, doubt = [], []
        for p in self.live_members():
            if p is not asker:
                if asker.known.get(p.node_id) != alive_tag(p.cert, p.nat):
                    fresh.append(p)
                elif member_bucket(p.node_id) in lacking:
                    doubt.append(p)
        pool = rng.sample(fresh, min(k, len(fresh)))
        return pool + rng.sample(doubt, min(k - len(pool), len(doubt)))

    def dead_with_address(self) -> list:
        return [m for m in self.members.values() if m.state == MemberState.DEAD and m.addr is not None]

    def _set_state(self, m: Member, state: MemberState, now: float) -> None:
        was_live = m.live
        self._live = None
        m.state = state
        m.state_since = now
        m.asked = False
        if state == MemberState.ALIVE:
            self._not_alive.pop(m.node_id, None)
        else:
            self._not_alive[m.node_id] = None
        self._live_count += int(m.live) - int(was_live)

    # ---------------------------------------------------------- facts
    def heard_from(self, m: Member, addr) -> None:
        """An authenticated datagram from m: its source address is where m is now."""
        if m.addr != addr:
            m.addr = addr
            self._live = None

    def on_cert(self, cert: Cert, addr, now: float, direct: bool,
                nat: int | None = None, version: str | None = None) -> tuple[Member | None, Change | None]:
        """A verified certificate, seen directly from its subject (direct) or relayed; nat:
        the NatKind its ALIVE item carried (None: the datagram's own certificate, no word).

        Returns the member (None: the table is full of live members) and the change, if any.
        A new member, and an existing one of a new generation (a restart), start a new
        session: no pair key, a fresh replay window, unconfirmed."""
        m = self.members.get(cert.node_id)
        if m is None:
            if len(self.members) >= self.config.max_peers and not self._evict_one():
                return None, None
            m = self.members[cert.node_id] = Member(cert, addr, now)
            m.version = version
            if nat is not None:
                m.nat = NatKind(nat)
            self._live = None
            self._live_count += 1
            self._probe_order.append(m.node_id)
            return m, self._alive(m, PeerJoined(m.node_id, addr))
        if addr is not None and m.addr != addr:
            self._live = None
        if direct and addr is not None:
            m.addr = addr  # an authenticated datagram's source address is authoritative
        elif m.addr is None:
            m.addr = addr
        gen, inc = cert.generation, cert.incarnation
        if (gen, inc) <= (m.generation, m.incarnation):
            return m, None
        if gen == m.generation and cert.xpub != m.xpub:
            return m, None  # two session keys in one generation: the first one seen wins
        if gen != m.generation:
            # A restart: new session key, new counter space, and nothing known of what it
            # holds (a restarted node may have lost every certificate it had: send them again).
            m.xpub, m.channel = cert.xpub, PeerChannel()
            m.known.clear()
            if not direct and addr is not None:
                m.addr = addr
        m.generation, m.incarnation, m.cert = gen, inc, cert.raw
        if version is not None:
            m.version = version
        if nat is not None:
            m.nat = NatKind(nat)
        event, back = None, not m.live
        if back:
            self._set_state(m, MemberState.ALIVE, now)
            event = PeerJoined(m.node_id, m.addr)
        elif m.state == MemberState.SUSPECT:
            self._set_state(m, MemberState.ALIVE, now)
            event = PeerAlive(m.node_id)
        return m, self._alive(m, event, back)

    def on_suspect(self, node_id: bytes, inc: int, now: float) -> Change | None:
        m = self.members.get(node_id)
        if m is None or inc < m.incarnation or m.state != MemberState.ALIVE:
            return None
        m.incarnation = inc  # the accusation is about the current incarnation
        self._set_state(m, MemberState.SUSPECT, now)
        return Change(node_id, PeerSuspected(node_id), encode_suspect(node_id, m.incarnation))

    def newer_alive(self, node_id: bytes, inc: int) -> bytes | None:
        """A SUSPECT or DEAD about node_id at incarnation inc came in: if we hold it live at a
        newer incarnation, the accuser missed a refutation.  Returns the ALIVE item that
        corrects it (our certificate of the member), else None."""
        m = self.members.get(node_id)
        if m is None or not m.live or m.incarnation <= inc:
            return None
        return encode_alive(m.cert, m.addr, m.nat, m.version)

    def on_dead(self, node_id: bytes, inc: int, now: float) -> Change | None:
        m = self.members.get(node_id)
        if m is None or inc < m.incarnation or not m.live:
            return None
        return self._dead(m, now)

    def on_leave(self, m: Member, gen: int, inc: int, sig: bytes, now: float) -> Change | None:
        """A LEAVE signed by m (the signature is checked by the caller and re-gossiped as is)."""
        if (gen, inc) < (m.generation, m.incarnation) or m.state == MemberState.LEFT:
            return None
        m.incarnation = inc
        self._set_state(m, MemberState.LEFT, now)
        # Re-gossiped with the (generation, incarnation) it was signed over: a leaver that
        # restarted since we last saw it signs a newer generation than the one we hold.
        return Change(m.node_id, PeerLeft(m.node_id), encode_leave(m.node_id, gen, inc, sig))

    def remove(self, node_id: bytes, now: float) -> Change | None:
        """A member whose key was revoked (protocol/amendments.py): dead, then forgotten at
        once, so its next datagram needs a certificate, which is refused."""
        m = self.members.get(node_id)
        if m is None:
            return None
        change = self._dead(m, now) if m.live else None
        del self.members[node_id]
        self._not_alive.pop(node_id, None)
        self._live = None
        return change

    def note_version(self, m: Member, version: str | None, direct: bool) -> None:
        """m's software version as an ALIVE item says it: its own word (direct) replaces what
        we hold, a relayed one only fills a blank (a hint for operators, unsigned)."""
        if version is not None and (direct or m.version is None):
            m.version = version

    def redirect(self, m: Member, addr) -> None:
        """A punch introduced m at another address (its NAT's mapping for us): send there."""
        m.addr = addr

    def set_nat(self, m: Member, kind: int) -> bool:
        """m's own word on its reachability (its datagrams' flags); True if it changed."""
        if m.nat == kind:
            return False
        m.nat = NatKind(kind)
        return True

    def _alive(self, m: Member, event: Event | None, back: bool = False) -> Change:
        return Change(m.node_id, event, encode_alive(m.cert, m.addr, m.nat, m.version), back)

    def _dead(self, m: Member, now: float) -> Change:
        self._set_state(m, MemberState.DEAD, now)
        return Change(m.node_id, PeerDead(m.node_id), encode_dead(m.node_id, m.incarnation))

    # ---------------------------------------------------------- probing and time
    def next_probe_target(self, rng) -> Member | None:
        """Round-robin over a shuffled list (SWIM's bounded detection time)."""
        for _ in range(2):
            while self._probe_order:
                nid = self._probe_order.pop()
                m = self.members.get(nid)
                if m is not None and m.live and m.addr is not None \
                        and (self.reachable is None or self.reachable(m)):
                    return m
            order = [nid for nid, m in self.members.items() if m.live]
            rng.shuffle(order)
            self._probe_order = order
        return None

    def ripe_suspects(self, now: float) -> list:
        """Suspects past half their timeout that we have not yet asked about (each is returned
        once per suspicion): before it ripens into a death, the suspicion is put to the
        suspect and to a few peers, which answer with a refutation we missed (Probing.ask)."""
        half = self.config.suspicion_timeout(self._live_count + 1) / 2
        out = []
        for nid in self._not_alive:
            m = self.members.get(nid)
            if m is not None and m.state == MemberState.SUSPECT and not m.asked \
                    and now - m.state_since >= half:
                m.asked = True
                out.append(m)
        return out

    def delay(self, seconds: float) -> None:
        """Our own loop stalled this long: suspicions do not ripen meanwhile (a refutation may
        be waiting unread in our socket)."""
        for nid in self._not_alive:
            m = self.members.get(nid)
            if m is not None and m.state == MemberState.SUSPECT:
                m.state_since += seconds

    def expire(self, now: float) -> list[Change]:
        """Suspects past their timeout become dead; dead/left past dead_forget_s are forgotten."""
        timeout = self.config.suspicion_timeout(self._live_count + 1)
        changes, forget = [], []
        for nid in list(self._not_alive):
            m = self.members.get(nid)
            if m is None:
                self._not_alive.pop(nid, None)
                continue
            if m.state == MemberState.SUSPECT and now - m.state_since >= timeout:
                changes.append(self._dead(m, now))
            elif not m.live and now - m.state_since >= self.config.dead_forget_s:
                forget.append(m.node_id)
        for nid in forget:
            del self.members[nid]
            self._not_alive.pop(nid, None)
            self._live = None
        return changes

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
