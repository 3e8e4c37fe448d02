"""NAT traversal: observed addresses, paths through NATs, hole punching and relays.

A NAT forwards a datagram from outside only to an inside node that sent to that outside
address lately (port-restricted cone), or only on the port it opened for that one peer
(symmetric).  So whether we can reach a member depends on the member and on us.  This
object keeps that knowledge (spec: docs/protocol.md, "NAT traversal"):

    observed address  every HELLO and ACK tells the receiver the address its datagram came
                      from (as STUN does).  A node that knows its bound address compares: the
                      same port (and host, if bound to one) -> OPEN; another -> NAT; different
                      answers from different peers -> SYMMETRIC.  Its ALIVE items say which.
    paths             a member that announces OPEN is reachable at its address; one behind a
                      NAT only while it has sent to us directly within PATH_TTL_S (its NAT
                      keeps the mapping open for us), or through a relay.  Membership filters
                      probe targets, push and anti-entropy peers and probe helpers with this,
                      so nobody suspects a member because a NAT drops unsolicited datagrams.
    keep-alive        a node behind NAT PINGs a few OPEN members (anchors) and the NAT'd peers
                      it holds a path to every KEEPALIVE_S, below common mapping timeouts; the
                      anchors keep a path to it and are the ones that detect its failure.
    punching          it asks an anchor (PUNCH_REQ) to introduce it to a NAT'd member; the
                      anchor, if it has a path to both, sends each a PUNCH with the other's
                      observed address; both PING that address at once, which opens both NATs.
    relay             no direct datagram within PUNCH_WAIT_S (or either side SYMMETRIC): our
                      datagrams to that member go wrapped in a RELAY to the introducer, which
                      forwards them.  The inner datagram is sealed under the two endpoints'
                      pair key, so the relay can drop it but neither forge nor alter it.

The engine routes RELAY here: on_relay forwards, or returns the inner datagram for the
engine to receive as from its origin (with `via` set: no address is learned from it).
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ProtocolConfig
from .identity import CERT_SIZE
from .membership import Member, Membership
from . import messages as msg
from .wire import BODY_OVERHEAD, HEADER_SIZE, MAC_SIZE, NatKind, WireError

KEEPALIVE_S = 15.0     # a NAT'd node's PING to its anchors: well below a 30 s mapping timeout
PATH_TTL_S = 25.0      # a NAT'd member that sent to us this recently is reachable at its address
ANCHORS = 3            # OPEN members a NAT'd node keeps its mappings (and its failure detection) with
NAT_PEERS = 8          # NAT'd members a NAT'd node keeps a punched or relayed path to
PUNCH_WAIT_S = 4.0     # an introduction that brought no direct datagram in this long: relay
PUNCH_RETRY_S = 30.0   # per member, between two introductions asked for
PUNCH_PING_S = 0.5     # PINGs to an introduced peer while punching
TICK_S = 0.5
OBSERVERS = 8          # reporters of our observed address kept (the latest answer of each)
QUORUM = 3             # reporters enough to tell our NatKind (a majority of them decides)
# A RELAY around an inner datagram: its own header, MAC, body framing and [flag, id, bin hdr].
RELAY_OVERHEAD = HEADER_SIZE + MAC_SIZE + BODY_OVERHEAD + 24
_WILDCARD = ("", "0.0.0.0", "::")
_SENDER = slice(11, 27)   # sender node id in the header (wire.HEADER)


@dataclass
class Punch:
    introducer: bytes
    until: float
    next_ping: float


class Nat:
    def __init__(self, config: ProtocolConfig, members: Membership, outbox, rng,
                 node_id: bytes, bound_addr, now: float):
        """bound_addr: the address our socket is bound to ((host, port); host may be a
        wildcard).  None: we cannot tell whether we are behind a NAT, and announce OPEN."""
        self.config = config
        self.members = members
        self.outbox = outbox
        self.counters = dict.fromkeys(("relay_sent_bytes", "relay_forwarded_bytes", "relay_received_bytes",
                                        "punches_ok", "punches_failed", "introductions"), 0)
        self.rng = rng
        self.node_id = node_id
        self.bound = tuple(bound_addr) if bound_addr is not None else None
        # Until a peer reports our address, a node that can tell assumes the cautious answer.
        self.kind = NatKind.OPEN if self.bound is None else NatKind.NAT
        self.observed_by: dict[bytes, tuple] = {}
        self.anchors: list[bytes] = []
        self.punching: dict[bytes, Punch] = {}
        self.tried: dict[bytes, float] = {}
        self.relayed: set[bytes] = set()   # members we reach through a relay
        self.now = now
        self.due = now + TICK_S
        self._next_keepalive = now + KEEPALIVE_S * rng.random()
        if self.kind != NatKind.OPEN:
            self.activate()

    # ================================================================ who we can reach
    def activate(self) -> None:
        """From now on membership asks us who is reachable (a NAT'd member or we are NAT'd)."""
        self.members.reachable = self.reachable

    def direct(self, m: Member) -> bool:
        return m.nat == NatKind.OPEN or m.path.until >= self.now

    def reachable(self, m: Member) -> bool:
        if m.nat == NatKind.OPEN or m.path.until >= self.now:
            return True
        r = self.members.get(m.path.relay) if m.path.relay is not None else None
        return r is not None and r.live and r.addr is not None and self.direct(r)

    def set_kind(self, m: Member, kind: int) -> None:
        """What m announces about itself."""
        if self.members.set_nat(m, kind) and kind != NatKind.OPEN:
            self.activate()

    def heard_direct(self, m: Member, now: float) -> None:
        """An authenticated datagram from m arrived straight from its address: a path."""
        m.path.until = now + PATH_TTL_S
        if m.path.relay is not None:
            m.path.relay = None
            self.relayed.discard(m.node_id)
        if self.punching.pop(m.node_id, None) is not None:
            self.counters["punches_ok"] += 1

    def spare(self, m: Member) -> bool:
        """A probe of m failed: True if it went through a relay (the relay may be what failed:
        m is not suspected, the relay is dropped and a new introduction may follow)."""
        if m.path.relay is None or self.direct(m):
            return False
        m.path.relay = None
        self.relayed.discard(m.node_id)
        return True

    # ================================================================ our observed address
    def observed(self, reporter: Member, addr: tuple, now: float) -> bool:
        """A peer reports where our datagram came from (directly).  True if our NatKind changed."""
        self.observed_by.pop(reporter.node_id, None)
        self.observed_by[reporter.node_id] = addr
        while len(self.observed_by) > OBSERVERS:
            del self.observed_by[next(iter(self.observed_by))]
        if self.bound is None:
            return False
        seen = list(self.observed_by.values())
        other = [a for a in seen if not self._is_bound(a)]
        if 2 * len(other) <= len(seen):
            kind = NatKind.OPEN
        else:
            kind = NatKind.SYMMETRIC if len(set(other)) > 1 else NatKind.NAT
        changed, self.kind = kind != self.kind, kind
        if kind != NatKind.OPEN:
            self.activate()
        return changed

    def observed_enough(self) -> bool:
        """Enough peers reported our address to tell our NatKind by their majority: probes
        need not be sent only to hear it once more (Probing.probe_next)."""
        return len(self.observed_by) >= QUORUM

    def _is_bound(self, addr: tuple) -> bool:
        host, port = self.bound[0], self.bound[1]
        return addr[1] == port and (host in _WILDCARD or addr[0] == host)

    def public_addr(self):
        """The address most peers report for us (None before any report)."""
        seen = list(self.observed_by.values())
        return max(set(seen), key=seen.count) if seen else None

    # ================================================================ timer
    def tick(self, now: float) -> None:
        self.now = now
        self.due = now + TICK_S
        if self.members.reachable is not None and self.kind == NatKind.OPEN and not any(
                m.nat != NatKind.OPEN for m in self.members.live_members()):
            # A node that can tell starts as NAT (activated) until peers report its address:
            # once it and every live member are OPEN, nothing is filtered (quiet probes and
            # the other no-NAT rules apply again).
            self.members.reachable = None
        self._punch_rounds(now)
        for nid in list(self.relayed):
            m = self.members.get(nid)
            if m is None or not m.live or m.path.relay is None or not self.reachable(m):
                if m is not None:
                    m.path.relay = None
                self.relayed.discard(nid)
        if self.kind == NatKind.OPEN:
            return
        if now >= self._next_keepalive:
            self._next_keepalive = now + KEEPALIVE_S
            self._keepalive()
        self._maybe_punch(now)

    def _keepalive(self) -> None:
        live = [self.members.get(a) for a in self.anchors]
        self.anchors = [m.node_id for m in live if m is not None and m.live and m.nat == NatKind.OPEN]
        if len(self.anchors) < ANCHORS:
            pool = [m for m in self.members.live_members()
                    if m.nat == NatKind.OPEN and m.node_id not in self.anchors]
            for m in self.rng.sample(pool, min(ANCHORS - len(self.anchors), len(pool))):
                self.anchors.append(m.node_id)
        targets = [self.members.get(a) for a in self.anchors] + self._nat_peers(direct_only=True)
        for m in targets:
            self.outbox.send(msg.Ping(0), m, addr=m.addr)

    def _nat_peers(self, direct_only: bool = False) -> list:
        return [m for m in self.members.live_members()
                if m.nat != NatKind.OPEN and (m.path.until >= self.now
                                              or not direct_only and m.path.relay is not None)]

    def _maybe_punch(self, now: float) -> None:
        """At most one new introduction per tick, while we hold fewer than NAT_PEERS paths."""
        if len(self._nat_peers()) + len(self.punching) >= NAT_PEERS:
            return
        cands = [m for m in self.members.live_members()
                 if m.nat != NatKind.OPEN and not self.reachable(m) and m.node_id not in self.punching
                 and now - self.tried.get(m.node_id, -PUNCH_RETRY_S) >= PUNCH_RETRY_S]
        anchors = [a for a in (self.members.get(x) for x in self.anchors)
                   if a is not None and a.live and self.direct(a)]
        if not cands or not anchors:
            return
        target = self.rng.choice(cands)
        self.tried[target.node_id] = now
        self.outbox.send(msg.PunchReq(target.node_id), self.rng.choice(anchors))

    def _punch_rounds(self, now: float) -> None:
        for nid, p in list(self.punching.items()):
            m = self.members.get(nid)
            if m is None or not m.live:
                del self.punching[nid]
            elif now >= p.until:
                del self.punching[nid]
                self.counters["punches_failed"] += 1
                self._use_relay(m, p.introducer)
            elif now >= p.next_ping:
                p.next_ping = now + PUNCH_PING_S
                self.outbox.send(msg.Ping(0), m, addr=m.addr)

    def _use_relay(self, m: Member, relay_id: bytes) -> None:
        r = self.members.get(relay_id)
        if r is not None and r.live and self.direct(r) and not self.direct(m):
            m.path.relay = relay_id
            self.relayed.add(m.node_id)

    # ================================================================ messages
    def on_punch_req(self, m: Member, req: msg.PunchReq, now: float, via: Member | None) -> None:
        """m asks us to introduce it to a member: only if we reach both directly."""
        peer = self.members.get(req.target)
        if (via is not None or peer is None or peer is m or not peer.live
                or peer.addr is None or m.addr is None or not self.direct(peer) or not self.direct(m)):
            return
        self.counters["introductions"] += 1
        self.outbox.send(msg.Punch(peer.node_id, peer.addr, peer.nat), m)
        self.outbox.send(msg.Punch(m.node_id, m.addr, m.nat), peer)

    def on_punch(self, m: Member, punch: msg.Punch, now: float, via: Member | None) -> None:
        """Introduced by m to a peer at its observed address: PING it until it answers."""
        peer = self.members.get(punch.peer)
        if via is not None or peer is None or peer is m or not peer.live or self.direct(peer):
            return
        self.tried[peer.node_id] = now
        if NatKind.SYMMETRIC in (punch.nat, self.kind):
            # A symmetric NAT maps us to another port for every peer: nothing to punch.
            self._use_relay(peer, m.node_id)
            return
        self.members.redirect(peer, punch.addr)
        self.punching[peer.node_id] = Punch(m.node_id, now + PUNCH_WAIT_S, now + PUNCH_PING_S)
        self.outbox.send(msg.Ping(0), peer, addr=punch.addr)

    def on_relay(self, m: Member, relay: msg.Relay, now: float):
        """RELAY from m (not itself relayed: the engine checks): one to_relay we forward; one
        from its relay is for us, returned as (src member, inner) for the engine to receive."""
        nid, inner = relay.node_id, relay.inner
        if not relay.to_relay:
            src = self.members.get(nid)
            if src is None or inner[_SENDER] != nid:
                raise WireError("unknown_sender")
            self.counters["relay_received_bytes"] += len(inner)
            return src, inner
        # We carry only the sender's own datagrams, and only to a member we reach directly.
        dest = self.members.get(nid)
        if inner[_SENDER] != m.node_id or dest is None or dest is m:
            raise WireError("malformed")
        if not dest.live or dest.addr is None or not self.direct(dest):
            raise WireError("no_path")
        cert = 0 if dest.channel.confirmed else CERT_SIZE
        if len(inner) + RELAY_OVERHEAD + cert > self.config.max_datagram:
            raise WireError("oversize")
        self.counters["relay_forwarded_bytes"] += len(inner)
        self.outbox.send(msg.Relay(False, m.node_id, inner), dest, [], [], addr=dest.addr)
        return None

    # ================================================================ outgoing
    def wrap_overhead(self, m: Member) -> int:
        """Bytes a datagram to m must leave for a RELAY around it (either hop may carry a cert)."""
        return RELAY_OVERHEAD + CERT_SIZE if m.path.relay is not None and not self.direct(m) else 0

    def wrap(self, m: Member, data: bytes) -> bool:
        """Send data (sealed for m) through m's relay.  False: no relay in use, send it direct."""
        if m.path.relay is None or self.direct(m):
            return False
        r = self.members.get(m.path.relay)
        if r is None or not r.live or r.addr is None or not self.direct(r):
            return False
        self.counters["relay_sent_bytes"] += len(data)
        self.outbox.send(msg.Relay(True, m.node_id, data), r, [], [], addr=r.addr)
        return True

    def status(self) -> dict:
        return {"kind": self.kind.name.lower(), "observed": self.public_addr(),
                "anchors": len(self.anchors), "direct_nat_peers": len(self._nat_peers(True)),
                "relayed": len(self.relayed), "punching": len(self.punching)}
