"""Message handlers and periodic rounds of the Engine (split out to keep files small).

Everything here runs only after a datagram has been authenticated (MAC and
replay window) and its body parsed; malformed payloads raise WireError and end
as counted drops in Engine.receive_datagram.
"""
from __future__ import annotations

from .identity import CERT_SIZE, SIG_SIZE, make_cert, parse_cert
from .membership import MemberState
from .wire import GossipKind, MessageType, WireError, decode_addr, decode_record, encode_record, packb

MAX_GOSSIP_ITEMS = 64
MAX_PULL_ENTRIES = 24
VECTOR_ENTRIES = 40


def _is_id(x) -> bool:
    return isinstance(x, bytes) and len(x) == 16


def _is_uint(x, limit: int = 2 ** 63) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < limit


class HandlersMixin:
    # ============================================================ dispatch
    def _dispatch(self, mtype: int, m, payload, addr, now: float) -> None:
        """One handler per message type, through a table (h11/aioquic style). PUSH, RECORDS and
        PEERS have none: everything they carry is in their gossip and records lists."""
        handler = _HANDLERS.get(mtype)
        if handler is not None:
            handler(self, m, payload, now)

    def _on_ping(self, m, payload, now: float) -> None:
        if not _is_uint(payload):
            raise WireError("malformed")
        self._send(MessageType.ACK, m, packb(payload))

    def _on_ack_msg(self, m, payload, now: float) -> None:
        if not _is_uint(payload):
            raise WireError("malformed")
        self._on_ack(m, payload, now)

    def _on_ping_req(self, m, payload, now: float) -> None:
        if not (isinstance(payload, list) and len(payload) == 2 and _is_uint(payload[0])
                and _is_id(payload[1])):
            raise WireError("malformed")
        target = self.members.members.get(payload[1])
        if target is not None and target.live and target.addr is not None:
            self._seq += 1
            self._relays[self._seq] = (m.node_id, payload[0], now + self.config.probe_interval_s)
            self._send(MessageType.PING, target, packb(self._seq))

    def _on_hello(self, m, payload, now: float) -> None:
        # Answer to our JOIN: ask this first contact for more peers.
        self._send(MessageType.PEERS_REQ, m, packb(None))

    def _on_peers_req(self, m, payload, now: float) -> None:
        self._send_peers(m)

    def _on_digest_msg(self, m, payload, now: float) -> None:
        if not (isinstance(payload, bytes) and len(payload) == len(self.digest.packed())):
            raise WireError("malformed")
        self._on_digest(m, payload)

    def _on_vector_msg(self, m, payload, now: float) -> None:
        self._on_vector(m, payload, now)

    def _on_pull_msg(self, m, payload, now: float) -> None:
        self._on_pull(m, payload)

    # ============================================================ membership gossip
    def _on_gossip(self, m, items: list, addr, now: float) -> None:
        for item in items[:MAX_GOSSIP_ITEMS]:
            try:
                self._gossip_item(m, item, addr, now)
            except WireError as e:
                self._drop(e.reason, addr)

    def _gossip_item(self, m, item, addr, now: float) -> None:
        if not isinstance(item, list) or not item or not _is_uint(item[0]):
            raise WireError("malformed")
        kind = item[0]
        members = self.members.members
        if kind == GossipKind.ALIVE:
            if len(item) != 3 or not isinstance(item[1], bytes) or len(item[1]) != CERT_SIZE:
                raise WireError("malformed")
            cert = item[1]
            nid = self._origin_id(cert[:32])
            if nid == self.node_id:
                return
            known = members.get(nid)
            if known is not None and known.cert == cert:
                return  # the certificate we hold: nothing new, no parsing, no signature check
            pub, xpub, gen, inc, _sig = parse_cert(cert)
            if known is not None and (gen, inc) <= (known.generation, known.incarnation):
                return
            peer_addr = addr if nid == m.node_id else (decode_addr(item[2]) if item[2] is not None
                                                       else None)
            if peer_addr is None and known is None:
                return
            nid, pub, xpub, gen, inc = self._check_cert(item[1], nid, now)
            self.members.on_cert(nid, pub, xpub, gen, inc, item[1], peer_addr, now,
                                 direct=nid == m.node_id)
        elif kind in (GossipKind.SUSPECT, GossipKind.DEAD):  # an accusation by the (authenticated) sender
            if len(item) != 3 or not _is_id(item[1]) or not _is_uint(item[2], 2 ** 32):
                raise WireError("malformed")
            nid, inc = item[1], item[2]
            if nid == self.node_id:
                if inc >= self.incarnation:
                    self._refute(inc)
            elif kind == GossipKind.SUSPECT:
                self.members.on_suspect(nid, inc, now)
            else:
                self.members.on_dead(nid, inc, now)
        elif kind == GossipKind.LEAVE:  # signed by the leaver
            if (len(item) != 5 or not _is_id(item[1]) or not _is_uint(item[2]) or
                    not _is_uint(item[3], 2 ** 32) or not isinstance(item[4], bytes)
                    or len(item[4]) != SIG_SIZE):
                raise WireError("malformed")
            subject = members.get(item[1])
            if subject is None or subject.state == MemberState.LEFT:
                return
            msg = self._leave_message(item[1], item[2], item[3])
            if not self.crypto.verify(subject.pub, item[4], msg):
                raise WireError("bad_signature")
            self._leave_sigs[item[1]] = item[4]
            self.members.on_leave(subject, item[2], item[3], now)
            self._leave_sigs.pop(item[1], None)
        else:
            raise WireError("unknown_type")

    def _refute(self, inc: int) -> None:
        self.incarnation = inc + 1
        self._cert = make_cert(self.identity, self._swarm, self._xpub, self.generation, self.incarnation)
        self._on_broadcast("self", self.node_id, None)
        # Attach the new certificate to the next datagram to every peer: a peer that holds us
        # dead revives us on sight, and gossips it on (this is what heals partitions quickly).
        for m in self.members.members.values():
            m.confirmed = False

    def _tell_dead(self, m, now: float) -> None:
        """A peer we hold dead talks to us: tell it, so it can refute with a higher incarnation."""
        if m.state == MemberState.LEFT or now - m.told_dead < self.config.reconnect_interval_s:
            return
        m.told_dead = now
        self._send(MessageType.PING, m, packb(0), [packb([2, m.node_id, m.incarnation])])

    def _send_peers(self, m) -> None:
        items, budget = [], self._budget(m, 1)
        for peer in self.members.random_live(self.rng, 12, exclude=(m.node_id,)):
            packed = packb([0, peer.cert, list(peer.addr)])
            if len(packed) > budget:
                break
            budget -= len(packed)
            items.append(packed)
        self._send(MessageType.PEERS, m, packb(None), items)

    # ============================================================ probing (SWIM)
    def _probe_round(self, now: float) -> None:
        self._probe_deadlines(now, end_of_period=True)
        self.members.expire(now)
        for seq in [s for s, r in self._relays.items() if r[2] < now]:
            del self._relays[seq]
        target = self.members.next_probe_target(self.rng)
        if target is not None:
            self._seq += 1
            self._probes[self._seq] = [target.node_id, now, False]
            self._send(MessageType.PING, target, packb(self._seq))

    def _probe_deadlines(self, now: float, end_of_period: bool = False) -> None:
        if not self._probes:
            return
        cfg = self.config
        for seq in list(self._probes):
            target_id, sent, indirect = self._probes[seq]
            target = self.members.members.get(target_id)
            if target is None or not target.live:
                del self._probes[seq]
            elif end_of_period or now >= sent + cfg.probe_interval_s:
                del self._probes[seq]
                self.members.on_suspect(target_id, target.incarnation, now)
            elif not indirect and now >= sent + cfg.probe_timeout_s:
                self._probes[seq][2] = True
                for helper in self.members.random_live(self.rng, cfg.indirect_probes,
                                                       exclude=(target_id,)):
                    self._send(MessageType.PING_REQ, helper, packb([seq, target_id]))

    def _on_ack(self, m, seq: int, now: float) -> None:
        probe = self._probes.pop(seq, None)
        if probe is not None:
            if probe[0] == m.node_id:
                rtt = now - probe[1]
                m.rtt = rtt if m.rtt is None else 0.8 * m.rtt + 0.2 * rtt
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            requester = self.members.members.get(relay[0])
            if requester is not None and requester.addr is not None:
                self._send(MessageType.ACK, requester, packb(relay[1]))

    def _reconnect(self, now: float) -> None:
        dead = [m for m in self.members.members.values() if m.state == MemberState.DEAD
                and m.addr is not None]
        # A few dead members per interval: false positives (lossy links, partitions) come back
        # within a few intervals even when most of the table is really dead.
        for m in self.rng.sample(dead, min(3, len(dead))):
            m.told_dead = now
            self._send(MessageType.PING, m, packb(0), [packb([2, m.node_id, m.incarnation])])
        # Keep knocking on configured addresses that are not live members: a node whose
        # bootstrap peers were down when it started would otherwise stay on an island.
        if self.bootstrap:
            live_addrs = {m.addr for m in self.members.live_members()}
            for addr in self.bootstrap:
                if addr not in live_addrs:
                    self._send_join(addr)

    # ============================================================ dissemination
    def _push_round(self, now: float) -> None:
        if not len(self.gossip_q) and not len(self.record_q):
            return
        cfg = self.config
        n = self.members.live_count() + 1
        limit = cfg.transmit_limit(n)
        rlimit = cfg.transmit_limit(n, cfg.record_retransmit_mult)
        for peer in self.members.random_live(self.rng, cfg.fanout):
            # Up to max_push_datagrams per peer, filled in one pass over each queue: records
            # first, membership gossip in the space left (it also rides on every ping, ack
            # and digest), so a membership backlog (a thousand joins) never delays updates.
            rooms = [self._budget(peer, 1)] * cfg.max_push_datagrams
            records = self.record_q.take_into(rooms, rlimit)
            gossip = self.gossip_q.take_into(rooms, limit)
            for g, r in zip(gossip, records):
                if g or r:
                    self._send(MessageType.PUSH, peer, packb(None), g, r)

    def _anti_entropy_round(self, now: float) -> None:
        for o in [o for o, t in self._pulls.items() if t < now]:
            del self._pulls[o]
        peer = self.members.random_live(self.rng, 1)
        if peer:
            self._send(MessageType.DIGEST, peer[0], packb(self.digest.packed()))

    def _on_digest(self, m, theirs: bytes) -> None:
        """Answer with our entries for origins in differing buckets.

        Under steady publishing nearly every bucket differs (records in flight), so the answer
        leads with the origins that advanced most recently here (what a lossy push most likely
        failed to deliver), then fills up with whole random differing buckets (what a node that
        was away lacks).  Only whole buckets are listed as complete.
        """
        differing = self.digest.differing(theirs)
        if not differing:
            return
        listed = self.digest.recently_changed(set(differing), VECTOR_ENTRIES // 2)
        entries = [[o, self.book.contiguous(o)] for o in listed]
        listed = set(listed)
        self.rng.shuffle(differing)
        buckets = []
        for b in differing:
            origins = [o for o in self.digest.members[b] if o not in listed]
            if len(entries) + len(origins) > VECTOR_ENTRIES:
                break
            buckets.append(b)
            entries.extend([o, self.book.contiguous(o)] for o in origins)
        self._send(MessageType.VECTOR, m, packb([buckets, entries]), piggyback=False)

    def _on_vector(self, m, payload, now: float) -> None:
        if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], list)
                and isinstance(payload[1], list) and len(payload[0]) <= 64
                and len(payload[1]) <= 2 * VECTOR_ENTRIES):
            raise WireError("malformed")
        theirs = {}
        for e in payload[1]:
            if not (isinstance(e, list) and len(e) == 2 and _is_id(e[0]) and _is_uint(e[1])):
                raise WireError("malformed")
            theirs[e[0]] = e[1]
        buckets = [b for b in payload[0] if _is_uint(b, 64)]
        # Pull what they have and we lack (solicited: exempt from the push rate cap).
        pulls = [[o, self.book.contiguous(o) + 1] for o, s in theirs.items()
                 if s > self.book.contiguous(o)]
        self.rng.shuffle(pulls)
        pulls = pulls[:MAX_PULL_ENTRIES]
        if pulls:
            expiry = now + 2 * self.config.anti_entropy_interval_s
            for o, _ in pulls:
                self._pulls[o] = expiry
            self._send(MessageType.PULL, m, packb(pulls), piggyback=False)
        # Push what we have and they lack in the buckets they listed completely.
        wants = []
        for b in buckets:
            for o in self.digest.members[b]:
                mine = self.book.contiguous(o)
                if mine > theirs.get(o, 0):
                    wants.append((o, theirs.get(o, 0) + 1))
        if wants:
            self.rng.shuffle(wants)
            self._serve(m, wants[:MAX_PULL_ENTRIES])

    def _on_pull(self, m, payload) -> None:
        if not isinstance(payload, list) or len(payload) > MAX_PULL_ENTRIES:
            raise WireError("malformed")
        wants = []
        for e in payload:
            if not (isinstance(e, list) and len(e) == 2 and _is_id(e[0]) and _is_uint(e[1])):
                raise WireError("malformed")
            wants.append((e[0], max(1, e[1])))
        self._serve(m, wants)

    def _serve(self, m, wants: list) -> None:
        """Send records from the store covering each (origin, from_step), bounded in bytes."""
        left = self.config.pull_serve_bytes
        batch, budget = [], self._budget(m, 1)
        room = budget
        for origin, from_step in wants:
            if left <= 0:
                break
            for canon in self.store.get(origin, from_step, min(left, budget - 3)):
                if origin == self.node_id:
                    _, first, qs, sig = decode_record(canon)
                    canon = encode_record(None, first, qs, sig)
                packed = packb(canon)
                if len(packed) > budget:
                    continue
                if len(packed) > room:
                    self._send(MessageType.RECORDS, m, packb(None), [], batch)
                    batch, room = [], budget
                batch.append(packed)
                room -= len(packed)
                left -= len(packed)
        if batch:
            self._send(MessageType.RECORDS, m, packb(None), [], batch)


_HANDLERS = {
    MessageType.PING: HandlersMixin._on_ping,
    MessageType.ACK: HandlersMixin._on_ack_msg,
    MessageType.PING_REQ: HandlersMixin._on_ping_req,
    MessageType.HELLO: HandlersMixin._on_hello,
    MessageType.PEERS_REQ: HandlersMixin._on_peers_req,
    MessageType.DIGEST: HandlersMixin._on_digest_msg,
    MessageType.VECTOR: HandlersMixin._on_vector_msg,
    MessageType.PULL: HandlersMixin._on_pull_msg,
}
