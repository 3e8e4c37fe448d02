"""SWIM failure detection: probes, indirect probes through helpers, and knocking on the dead.

Every protocol period the next member of a shuffled round-robin gets a PING; without an
ACK after probe_timeout_s, a few helpers get a PING_REQ and ping it for us; a member that
answers nobody by the end of the period is handed back to the engine to be suspected.
Any authenticated datagram from a probed member counts as its answer.  Membership state
itself lives in Membership; this object owns only the probes in flight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from .config import ProtocolConfig
from .membership import Member, Membership, MemberState
from .outbox import Outbox
from . import messages as msg
from .wire import NIL, MessageType, encode_dead, encode_suspect


@dataclass
class Probe:
    """A PING of ours awaiting its ACK."""
    target: bytes            # node id
    sent_at: float
    indirect: bool = False   # PING_REQs already sent to helpers
    retried: bool = False    # the second chance went (see failed)


@dataclass(frozen=True)
class Relay:
    """A PING we sent for a helper's PING_REQ: its ACK goes back to the requester."""
    requester: bytes         # node id
    their_seq: int
    expires: float


class Probing:
    def __init__(self, config: ProtocolConfig, members: Membership, outbox: Outbox, rng, *,
                 observed_enough: Callable[[], bool] = lambda: False):
        self.config = config
        self.members = members
        self.outbox = outbox
        self.rng = rng
        self.probes: dict[int, Probe] = {}    # our seq -> probe
        self.relays: dict[int, Relay] = {}    # our seq -> relay
        # Suspicions of ours not yet gossiped: suspect id -> (incarnation, SUSPECT item, when
        # to gossip it unless refuted by then).  See hold().
        self.held: dict[bytes, tuple] = {}
        self._seq = 0                         # shared by probes and relays: one ACK, one meaning
        self.observed_enough = observed_enough   # Nat.observed_enough: peers told us our address

    # ================================================================ rounds
    def probe_next(self, now: float) -> None:
        """Start a protocol period: forget stale relays, PING the next member in turn."""
        for seq in [s for s, r in self.relays.items() if r.expires < now]:
            del self.relays[seq]
        target = self.members.next_probe_target(self.rng)
        if (target is not None and now - target.probe.heard_at < self.config.probe_quiet_s
                and (target.probe.rtt is not None or self.observed_enough())
                and self.members.reachable is None):
            # Its own traffic (records, digests, pings) proved it alive lately: skip its turn.
            # A member that dies falls silent, and probe_quiet_s later it is pinged again.
            # Members are still pinged until a few ACKs told us our observed address (and
            # with it our NatKind), and never skipped with NATs about (paths and keep-alives
            # ride on the probes).  Its round trip is then measured at its first probe.
            return
        if target is not None:
            self._seq += 1
            self.probes[self._seq] = Probe(target.node_id, now)
            self.outbox.send(msg.Ping(self._seq), target)

    def failed(self, now: float, end_of_period: bool = False) -> Iterator[Member]:
        """Yield each probed member that did not answer in time (for the engine to suspect),
        sending PING_REQs for those past the direct timeout on the way."""
        cfg = self.config
        for seq in list(self.probes):
            probe = self.probes[seq]
            target = self.members.get(probe.target)
            if target is None or not target.live:
                del self.probes[seq]
            elif probe.retried:
                if now >= probe.sent_at + cfg.probe_timeout_s:
                    del self.probes[seq]
                    yield target
            elif now >= probe.sent_at + (cfg.probe_timeout_s if end_of_period else cfg.probe_interval_s):
                # (at the end of the period: any probe past its direct timeout, which a probe
                # put back by a stall of ours (delay) is not).  A second chance before any
                # suspicion: one more PING and one more direct timeout.  A peer that was only
                # slow (a stalled loop on a busy CPU) answers it, and no suspicion, refutation
                # and new certificate for every member to learn follows; detection is
                # probe_timeout_s later.
                probe.retried, probe.sent_at = True, now
                self.outbox.send(msg.Ping(seq), target)
            elif not probe.indirect and now >= probe.sent_at + cfg.probe_timeout_s:
                probe.indirect = True
                for helper in self.members.random_live(self.rng, cfg.indirect_probes,
                                                       exclude=(probe.target,)):
                    self.outbox.send(msg.PingReq(seq, probe.target), helper)

    def delay(self, seconds: float) -> None:
        """Our own loop stalled this long (a busy CPU, a paused process): answers to our
        probes and refutations may sit unread in the socket, and we were deaf meanwhile.  Put
        every probe's deadlines, held suspicions' release and ripening suspicions back by it
        (Lifeguard's local health, measured as our own timer lag: Engine.handle_timer)."""
        self.members.delay(seconds)
        for probe in self.probes.values():
            probe.sent_at += seconds
        for nid, (inc, item, at) in self.held.items():
            self.held[nid] = (inc, item, at + seconds)

    def hold(self, m: Member, item: bytes, now: float) -> None:
        """We suspect m (its probe failed) and told it so: keep the SUSPECT item for one direct
        round trip (probe_timeout_s) before gossiping it.  A live m answers at once with its
        refutation, and the suspicion never leaves us; most false suspicions (a lost ping or
        ack) then cost one round trip instead of a rumour that every node must unlearn."""
        self.held[m.node_id] = (m.incarnation, item, now + self.config.probe_timeout_s)

    def released(self, now: float) -> list:
        """(suspect id, SUSPECT item) to gossip now: held suspicions still unrefuted."""
        out = []
        for nid, (inc, item, at) in list(self.held.items()):
            if now >= at:
                del self.held[nid]
                m = self.members.get(nid)
                if m is not None and m.state == MemberState.SUSPECT and m.incarnation == inc:
                    out.append((nid, item))
        return out

    def ask(self, m: Member, now: float) -> None:
        """Half-way to its death, put a suspicion to the suspect (if we reach it) and to a few
        peers: the suspect refutes it, and a peer that holds a newer incarnation answers with
        it (Engine, stale accusations).  A refutation's gossip can miss a node (loss, or a NAT
        that lets only a few peers reach it); only the nodes that still suspect ask."""
        item = [encode_suspect(m.node_id, m.incarnation)]
        reach = self.members.reachable
        if m.addr is not None and (reach is None or reach(m)):
            self.outbox.send(msg.Push(), m, item, [])
        for peer in self.members.random_live(self.rng, self.config.indirect_probes, exclude=(m.node_id,)):
            self.outbox.send(msg.Push(), peer, item, [])

    def answer(self, m: Member, items: list) -> None:
        """m accused us, or members at incarnations older than ours (it holds a suspicion that
        was refuted, and would let it ripen into a death): answer at once with the newer
        ALIVE items, as many as one datagram holds (one datagram per datagram of m's)."""
        budget, out = self.outbox.budget(m, len(NIL)), []
        for item in dict.fromkeys(items):   # once each (a SUSPECT and a DEAD of one member)
            if len(item) <= budget:
                budget -= len(item)
                out.append(item)
        self.outbox.send(msg.Push(), m, out, [])

    def ping_dead(self, now: float) -> None:
        """PING a few dead members with the verdict: one that is in fact alive (lossy links, a
        healed partition) refutes it and comes back, even when most of the table is really dead."""
        dead = self.members.dead_with_address()
        for m in self.rng.sample(dead, min(3, len(dead))):
            self._tell_dead(m, now)

    def tell_dead(self, m: Member, now: float) -> None:
        """A member we hold dead talks to us: tell it (at most once per reconnect interval)."""
        if m.state != MemberState.LEFT and now - m.probe.told_dead >= self.config.reconnect_interval_s:
            self._tell_dead(m, now)

    def _tell_dead(self, m: Member, now: float) -> None:
        m.probe.told_dead = now
        self.outbox.send(msg.Ping(0), m, [encode_dead(m.node_id, m.incarnation)])

    # ================================================================ messages
    def heard_from(self, m: Member, mtype: MessageType, now: float | None = None) -> None:
        """Any authenticated datagram from a probed member proves it alive (fewer false
        suspicions under load and loss than waiting for the one ACK).  An ACK settles its own
        probe in on_ack, where it also measures the round trip.  now: when (see probe_next)."""
        if now is not None:
            m.probe.heard_at = now
        if self.probes and mtype != MessageType.ACK:
            for seq in [s for s, p in self.probes.items() if p.target == m.node_id]:
                del self.probes[seq]

    def on_ping(self, m: Member, ping: msg.Ping, now: float, observed=None) -> None:
        """observed: the address the PING came from, told back in the ACK (protocol/nat.py)."""
        self.outbox.send(msg.Ack(ping.seq, observed), m)

    def on_ack(self, m: Member, ack: msg.Ack, now: float) -> None:
        probe = self.probes.pop(ack.seq, None)
        if probe is not None:
            if probe.target == m.node_id:
                rtt = now - probe.sent_at
                m.probe.rtt = rtt if m.probe.rtt is None else 0.8 * m.probe.rtt + 0.2 * rtt
            return
        relay = self.relays.pop(ack.seq, None)
        if relay is not None:
            requester = self.members.get(relay.requester)
            if requester is not None and requester.addr is not None:
                self.outbox.send(msg.Ack(relay.their_seq), requester)

    def on_ping_req(self, m: Member, req: msg.PingReq, now: float, via: Member | None = None) -> None:
        target = self.members.get(req.target)
        reach = self.members.reachable   # behind a NAT, only a helper with a path pings it
        if target is not None and target.live and target.addr is not None \
                and (reach is None or reach(target)):
            self._seq += 1
            self.relays[self._seq] = Relay(m.node_id, req.seq, now + self.config.probe_interval_s)
            self.outbox.send(msg.Ping(self._seq), target)
