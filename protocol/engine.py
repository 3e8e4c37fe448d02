"""Engine: the whole protocol as a sans-IO state machine (in the manner of aioquic).

The driver feeds it datagrams, timer expiries and local updates, and collects
datagrams to send and events.  Nothing here reads a clock, opens a socket or
uses global randomness: `now` and a random.Random instance come in as
arguments.  Peer input never raises out of receive_datagram; it is dropped and
counted by reason.  Our own misuse (a non-consecutive publish, publishing after
leave) raises ProtocolError / ValueError.
"""
from __future__ import annotations

import hmac
from collections import deque
from dataclasses import dataclass

from .config import ProtocolConfig
from .dissemination import TransmitLimitedQueue, VersionDigest
from .events import DatagramDropped, EquivocationDetected, UpdatesReceived
from .handlers import HandlersMixin
from .identity import CryptoCache, Identity, cert_message, make_cert, mac, node_id_of, pair_mac_key, parse_cert
from .membership import Membership
from .records import CONFLICT, DUP, Record, RecordBook, TokenBucket, bytes_to_qs, record_message
from .replay_window import ReplayWindow
from .store import MemoryRecordStore
from .wire import (BODY_OVERHEAD, HEADER_SIZE, JOIN_MIN_SIZE, MAC_SIZE, GossipKind, MessageType, WireError,
                   decode_record, encode_record, pack_body, pack_header, packb, parse_header, unpack_body)
from .identity import CERT_SIZE


class ProtocolError(Exception):
    """The driver misused the engine (not raised for peer input)."""


@dataclass(frozen=True)
class PeerInfo:
    node_id: bytes
    addr: object
    state: str
    incarnation: int
    generation: int
    rtt_s: float | None


class Engine(HandlersMixin):
    def __init__(self, identity: Identity, config: ProtocolConfig, *, rng, now: float,
                 store=None, bootstrap=(), own_last_step: int | None = None,
                 generation: int = 0, crypto: CryptoCache | None = None):
        """generation: strictly increasing per start of this identity (the node passes its
        wall-clock seconds at start, or a persisted boot counter); it selects a fresh
        session key and counter space, so datagrams of a previous run cannot be replayed."""
        self.identity = identity
        self.config = config
        self.rng = rng
        self.node_id = identity.node_id
        self.store = store if store is not None else MemoryRecordStore()
        self.crypto = crypto if crypto is not None else CryptoCache()
        self.generation = int(generation)
        self.incarnation = 0
        self.bootstrap = [tuple(a) for a in bootstrap]
        self._pub = identity.public_bytes()
        self._swarm = config.swarm_id
        self._tag = config.swarm_tag
        self._version = config.protocol_version
        self._xkey = identity.session_key(config.swarm_id, self.generation)
        from cryptography.hazmat.primitives import serialization
        self._xpub = self._xkey.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)
        self._cert = make_cert(identity, self._swarm, self._xpub, self.generation, self.incarnation)
        self._counter = 0
        self._seq = 0
        self._left = False
        self._ids: dict[bytes, bytes] = {self._pub: self.node_id}
        self._leave_sigs: dict[bytes, bytes] = {}
        self._seen_conflicts: set = set()
        # Signatures of records accepted recently: a relayed duplicate (the common case under
        # gossip) is recognised by one set lookup, before decoding anything.
        self._seen_sigs: set = set()
        self._seen_order: deque = deque()

        self._out: list = []
        self._events_high: deque = deque()
        self._events_low: deque = deque()
        self._event_seq = 0
        self.counters: dict = {"bytes_in": 0, "bytes_out": 0, "datagrams_in": 0, "datagrams_out": 0,
                               "drops": {}, "records_accepted": 0, "updates_delivered": 0,
                               "duplicate_records": 0, "records_published": 0,
                               "equivocations": 0, "events_dropped": 0, "internal_errors": 0}

        self.gossip_q = TransmitLimitedQueue(config.max_broadcasts)
        self.record_q = TransmitLimitedQueue(config.max_broadcasts, newest_first=False)
        self.members = Membership(config, self.node_id, self._emit, self._on_broadcast)
        self.book = RecordBook(config.max_pending_updates_per_origin, config.max_pending_records)
        self.digest = VersionDigest()
        self._cert_budget = TokenBucket(config.cert_verifies_per_s, 2 * config.cert_verifies_per_s, now)
        self._pulls: dict[bytes, float] = {}
        self._probes: dict[int, list] = {}   # seq -> [target id, sent_at, indirect_sent]
        self._relays: dict[int, tuple] = {}  # our seq -> (requester id, their seq, expiry)

        # Restore from the store: what we hold, and where our own steps continue.
        for origin, step in self.store.version_vector().items():
            if step > 0:
                self.book.state(origin).contiguous = step
                self.digest.update(origin, 0, step)
        stored_own = self.book.contiguous(self.node_id)
        if own_last_step is not None and own_last_step < stored_own:
            raise ProtocolError(f"own_last_step {own_last_step} is behind the store ({stored_own})")
        # Steps the node applied but whose record never reached the store (a crash before the
        # record was flushed) must be published again, with their q, before new ones.
        self.own_steps_to_republish = range(stored_own + 1, (own_last_step or stored_own) + 1)
        self._own_next = stored_own + 1
        self._own_qs = bytearray()
        self._own_first = 0
        self._flush_at: float | None = None

        jitter = rng.random
        self._next_gossip = now + config.gossip_interval_s * jitter()
        self._next_probe = now + config.probe_interval_s * jitter()
        self._next_ae = now + config.anti_entropy_interval_s * jitter()
        self._next_pex = now + config.peer_exchange_interval_s * jitter()
        self._next_reconnect = now + config.reconnect_interval_s
        self._on_broadcast("self", self.node_id, None)
        for addr in self.bootstrap:
            self._send_join(addr)

    # ================================================================ driver API
    def receive_datagram(self, data: bytes, addr, now: float) -> None:
        c = self.counters
        c["bytes_in"] += len(data)
        c["datagrams_in"] += 1
        try:
            self._receive(bytes(data), addr, now)
        except WireError as e:
            self._drop(e.reason, addr)
        except Exception:  # never raise on peer input; a bug shows up in internal_errors
            c["internal_errors"] += 1
            self._drop("malformed", addr)

    def datagrams_to_send(self, now: float) -> list:
        out, self._out = self._out, []
        c = self.counters
        c["datagrams_out"] += len(out)
        c["bytes_out"] += sum(len(d) for d, _ in out)
        return out

    def get_timer(self) -> float | None:
        if self._left:
            return None
        t = min(self._next_gossip, self._next_probe, self._next_ae, self._next_pex,
                self._next_reconnect)
        if self._flush_at is not None and self._flush_at < t:
            t = self._flush_at
        return t

    def handle_timer(self, now: float) -> None:
        if self._left:
            return
        cfg = self.config
        if self._flush_at is not None and now >= self._flush_at:
            self._flush(now)
        if now >= self._next_probe:
            self._next_probe = max(self._next_probe + cfg.probe_interval_s, now)
            self._probe_round(now)
        else:
            self._probe_deadlines(now)
        if now >= self._next_gossip:
            self._next_gossip = max(self._next_gossip + cfg.gossip_interval_s, now)
            self._push_round(now)
        if now >= self._next_ae:
            self._next_ae = max(self._next_ae + cfg.anti_entropy_interval_s, now)
            self._anti_entropy_round(now)
        if now >= self._next_pex:
            self._next_pex = max(self._next_pex + cfg.peer_exchange_interval_s, now)
            peer = self.members.random_live(self.rng, 1)
            if peer:
                self._send(MessageType.PEERS_REQ, peer[0], packb(None))
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval_s
            self._reconnect(now)

    def publish(self, step: int, q: int, now: float) -> None:
        """Queue one own update; steps must be consecutive (see own_steps_to_republish)."""
        if self._left:
            raise ProtocolError("publish after leave")
        if step != self._own_next:
            raise ProtocolError(f"publish step {step}, expected {self._own_next}")
        if not isinstance(q, int) or not -127 <= q <= 127:
            raise ValueError(f"q must be an int in [-127, 127], got {q!r}")
        if not self._own_qs:
            self._own_first = step
            self._flush_at = now + self.config.record_linger_s
        self._own_qs.append(q & 0xFF)
        self._own_next += 1
        if len(self._own_qs) >= self.config.updates_per_record:
            self._flush(now)

    def flush(self, now: float) -> None:
        """Sign and send the partial own record now (e.g. before a snapshot)."""
        if self._own_qs:
            self._flush(now)

    def leave(self, now: float) -> None:
        """Graceful leave: flush, announce a signed LEAVE to several peers, then go quiet."""
        if self._left:
            return
        self.flush(now)
        sig = self.identity.sign(self._leave_message(self.node_id, self.generation, self.incarnation))
        item = packb([3, self.node_id, self.generation, self.incarnation, sig])
        for peer in self.members.random_live(self.rng, 2 * self.config.fanout):
            recs = self.record_q.take(self._budget(peer, 1) - len(item), 1 << 30, 2)
            self._send(MessageType.PUSH, peer, packb(None), [item], recs)
        self._left = True

    def next_event(self):
        high, low = self._events_high, self._events_low
        if high and (not low or high[0][0] < low[0][0]):
            return high.popleft()[1]
        if low:
            return low.popleft()[1]
        return None

    @property
    def next_own_step(self) -> int:
        return self._own_next

    # ================================================================ views
    def peers(self) -> list:
        return [PeerInfo(m.node_id, m.addr, m.state.name.lower(), m.incarnation, m.generation, m.rtt)
                for m in self.members.members.values()]

    def version_vector(self) -> dict:
        return {o: st.contiguous for o, st in self.book.origins.items() if st.contiguous > 0}

    def pending_updates(self) -> int:
        return sum(st.pending_updates for st in self.book.origins.values())

    # ================================================================ internals: events
    def _emit(self, event) -> None:
        self._event_seq += 1
        if isinstance(event, DatagramDropped):
            if len(self._events_low) >= self.config.max_drop_events:
                self._events_low.popleft()
                self.counters["events_dropped"] += 1
            self._events_low.append((self._event_seq, event))
        else:
            self._events_high.append((self._event_seq, event))

    def _drop(self, reason: str, addr) -> None:
        drops = self.counters["drops"]
        drops[reason] = drops.get(reason, 0) + 1
        self._emit(DatagramDropped(reason, addr))

    # ================================================================ internals: receive
    def _receive(self, data: bytes, addr, now: float) -> None:
        h = parse_header(data, self._version, self._tag, self.config.max_datagram)
        if self._left:
            return
        if h.sender == self.node_id:
            raise WireError("from_self")
        if h.type == MessageType.JOIN:
            return self._on_join(h, len(data), addr, now)
        m = self.members.members.get(h.sender)
        cert_info = None
        if h.cert is not None:
            cert_info = self._check_cert(h.cert, h.sender, now)
            _, pub, xpub, gen, inc = cert_info
            if m is not None and (gen < m.generation or gen == m.generation and xpub != m.xpub):
                raise WireError("stale_generation")
            if m is not None and gen == m.generation and m.mac_key:
                key = m.mac_key
            else:
                key = self._derive_key(xpub)
        else:
            if m is None or m.mac_key is None and not self._ensure_key(m):
                raise WireError("unknown_sender")
            key = m.mac_key
        if not hmac.compare_digest(mac(key, h.signed), h.mac):
            raise WireError("bad_mac")
        fresh_window = m is None or (cert_info is not None and cert_info[3] != m.generation)
        window = ReplayWindow() if fresh_window else m.window
        if not window.check(h.counter):
            raise WireError("replayed")
        payload, gossip, records = unpack_body(h.body)
        # --- authenticated and parsed: from here on the datagram may change state.
        if cert_info is not None:
            nid, pub, xpub, gen, inc = cert_info
            m, _ = self.members.on_cert(nid, pub, xpub, gen, inc, h.cert, addr, now, direct=True)
            if m is None:
                raise WireError("rate_limited")  # membership table full of live peers
            if fresh_window:
                m.window = window
            m.mac_key = key
        window.accept(h.counter)
        m.confirmed = True       # a valid MAC proves it holds our certificate
        if m.addr != addr:
            m.addr = addr
            self.members.invalidate()
        m.last_heard = now
        if not m.live:
            self._tell_dead(m, now)
        if self._probes:
            # Any authenticated datagram from a probed member proves it alive (fewer false
            # suspicions under load and loss than waiting for the one ACK).
            for seq, probe in list(self._probes.items()):
                if probe[0] == m.node_id and h.type != MessageType.ACK:
                    del self._probes[seq]
        self._dispatch(h.type, m, payload, addr, now)
        if gossip:
            self._on_gossip(m, gossip, addr, now)
        if records:
            self._on_records(m, records, addr, now)

    def _check_cert(self, cert: bytes, expect_id: bytes | None, now: float) -> tuple:
        pub, xpub, gen, inc, sig = parse_cert(cert)
        nid = self._origin_id(pub)
        if expect_id is not None and nid != expect_id:
            raise WireError("bad_signature")
        if not self._admitted(pub):
            raise WireError("not_admitted")
        msg = cert_message(self._swarm, pub, xpub, gen, inc)
        if not self.crypto.is_cached(pub, sig, msg) and not self._cert_budget.take(1, now):
            raise WireError("rate_limited")
        if not self.crypto.verify(pub, sig, msg):
            raise WireError("bad_signature")
        return nid, pub, xpub, gen, inc

    def _derive_key(self, xpub: bytes) -> bytes:
        shared = self.crypto.pair_secret(self._xkey, self._xpub, xpub)
        if shared is None:
            raise WireError("bad_signature")
        return pair_mac_key(self._swarm, shared, self._xpub, xpub)

    def _ensure_key(self, m) -> bool:
        if m.mac_key is None:
            try:
                m.mac_key = self._derive_key(m.xpub)
            except WireError:
                return False
        return True

    def _admitted(self, pub: bytes) -> bool:
        return self.config.admission == "open" or pub in self.config.members

    def _origin_id(self, pub: bytes) -> bytes:
        nid = self._ids.get(pub)
        if nid is None:
            if len(self._ids) > 4 * self.config.max_peers + 1024:
                self._ids.clear()
                self._ids[self._pub] = self.node_id
            nid = self._ids[pub] = node_id_of(pub)
        return nid

    def _on_join(self, h, size: int, addr, now: float) -> None:
        # JOIN has no MAC (the joiner lacks our session key): it may be a replay, so it only
        # teaches us a genuine signed certificate and earns a HELLO no larger than itself.
        nid, pub, xpub, gen, inc = self._check_cert(h.cert, h.sender, now)
        if not self.crypto.is_cached(pub, h.mac, h.signed) and not self._cert_budget.take(1, now):
            raise WireError("rate_limited")
        if not self.crypto.verify(pub, h.mac, h.signed):
            raise WireError("bad_signature")
        m = self.members.members.get(nid)
        if m is not None and gen < m.generation:
            raise WireError("stale_generation")
        key = self._derive_key(xpub)
        m, fresh = self.members.on_cert(nid, pub, xpub, gen, inc, h.cert, addr if m is None else None,
                                        now, direct=False)
        if m is None:
            raise WireError("rate_limited")
        if fresh or m.mac_key is None:
            m.mac_key = key
        self._send(MessageType.HELLO, m, packb(None), addr=addr, cert=True, piggyback=False)

    # ================================================================ internals: send
    def _send_join(self, addr) -> None:
        self._counter += 1
        head = pack_header(self._version, self._tag, MessageType.JOIN, self.node_id, self._counter,
                           self._cert)
        data = head + bytes(JOIN_MIN_SIZE - len(head) - 64)
        self._out.append((data + self.identity.sign(data), addr))

    def _budget(self, m, payload_len: int) -> int:
        cert = 0 if m.confirmed else CERT_SIZE
        return self.config.max_datagram - HEADER_SIZE - cert - MAC_SIZE - BODY_OVERHEAD - payload_len

    def _send(self, mtype, m, payload: bytes, gossip=None, records=None, *, addr=None,
              cert: bool = False, piggyback: bool = True) -> None:
        if m.mac_key is None and not self._ensure_key(m):
            return
        if gossip is None:
            gossip = []
            if piggyback and len(self.gossip_q):
                budget = self._budget(m, len(payload)) - sum(len(r) + 3 for r in records or ())
                limit = self.config.transmit_limit(self.members.live_count() + 1)
                gossip = self.gossip_q.take(budget, limit, 0)
        self._counter += 1
        head = pack_header(self._version, self._tag, mtype, self.node_id, self._counter,
                           self._cert if (cert or not m.confirmed) else None)
        data = head + pack_body(payload, gossip, records or [])
        self._out.append((data + mac(m.mac_key, data), addr or m.addr))

    def _on_broadcast(self, kind: str, node_id: bytes, m) -> None:
        if kind == "self":
            packed = packb([GossipKind.ALIVE, self._cert, None])
        elif kind == "alive":
            packed = packb([GossipKind.ALIVE, m.cert, list(m.addr) if m.addr is not None else None])
        elif kind == "suspect":
            packed = packb([GossipKind.SUSPECT, node_id, m.incarnation])
        elif kind == "dead":
            packed = packb([GossipKind.DEAD, node_id, m.incarnation])
        else:  # leave
            sig = self._leave_sigs.pop(node_id, None)
            if sig is None:
                return
            packed = packb([GossipKind.LEAVE, node_id, m.generation, m.incarnation, sig])
        self.gossip_q.push(node_id, packed)

    def _leave_message(self, node_id: bytes, gen: int, inc: int) -> bytes:
        return (b"onebyte-leave-v1" + self._swarm + node_id + gen.to_bytes(8, "little")
                + inc.to_bytes(4, "little"))

    # ================================================================ own records
    def _flush(self, now: float) -> None:
        qs = bytes(self._own_qs)
        first = self._own_first
        self._own_qs = bytearray()
        self._flush_at = None
        sig = self.identity.sign(record_message(self._swarm, self.node_id, first, qs))
        rec = Record(self._pub, self.node_id, first, qs, sig)
        st = self.book.state(self.node_id)
        self.store.add(self.node_id, first, rec.last_step, rec.canonical())
        self.book.remember(st, rec)
        self.digest.update(self.node_id, st.contiguous, rec.last_step)
        st.contiguous = rec.last_step
        self.counters["records_published"] += 1
        self._remember_sig(sig)
        self.record_q.push((self.node_id, first), packb(encode_record(None, first, qs, sig)))

    # ================================================================ records in
    def _on_records(self, m, records: list, addr, now: float) -> None:
        cfg = self.config
        seen = self._seen_sigs
        for raw in records[:64]:
            if isinstance(raw, bytes) and raw[-64:] in seen:
                self.counters["duplicate_records"] += 1
                continue
            try:
                pub, first, qs, sig = decode_record(raw)
            except WireError as e:
                self._drop(e.reason, addr)
                continue
            if pub is None:
                pub = m.pub
            if len(qs) > cfg.max_record_updates or 0x80 in qs:
                self._drop("malformed", addr)
                continue
            origin = self._origin_id(pub)
            if origin == self.node_id:
                self.counters["duplicate_records"] += 1
                continue
            if not self._admitted(pub):
                self._drop("not_admitted", addr)
                continue
            rec = Record(pub, origin, first, qs, sig)
            kind, other = self.book.classify(rec)
            if kind == DUP:
                self.counters["duplicate_records"] += 1
                continue
            msg = record_message(self._swarm, origin, first, qs)
            if kind == CONFLICT:
                if not self.crypto.verify(pub, sig, msg):
                    self._drop("bad_signature", addr)
                    continue
                st = self.book.state(origin)
                if rec.fingerprint() not in self._seen_conflicts:
                    if len(self._seen_conflicts) > 10000:
                        self._seen_conflicts.clear()
                    self._seen_conflicts.add(rec.fingerprint())
                    st.equivocating = True
                    self.counters["equivocations"] += 1
                    self._emit(EquivocationDetected(origin, first, rec.last_step, other, rec.canonical()))
                continue
            if len(self._events_high) >= cfg.max_events:
                self._drop("backpressure", addr)
                continue
            if not self.crypto.verify(pub, sig, msg):
                self._drop("bad_signature", addr)
                continue
            st = self.book.state(origin)
            if self._pulls.get(origin, -1.0) < now:
                if st.bucket is None:
                    rate = cfg.max_updates_per_s_per_origin
                    st.bucket = TokenBucket(rate, rate * cfg.rate_burst_s, now)
                if not st.bucket.take(len(qs), now):
                    self._drop("rate_limited", addr)
                    continue
            if first > st.contiguous + 1:
                if not self.book.can_hold(st, rec):
                    self._drop("buffer_full", addr)
                    continue
                self.book.hold(st, rec)
                self.book.remember(st, rec)
            else:
                self.book.remember(st, rec)
                self._deliver(st, rec)
                nxt = self.book.pop_next(st)
                while nxt is not None:
                    self._deliver(st, nxt)
                    nxt = self.book.pop_next(st)
            self.counters["records_accepted"] += 1
            self._remember_sig(sig)
            self.record_q.push((origin, first), packb(rec.canonical()))

    def _remember_sig(self, sig: bytes) -> None:
        self._seen_sigs.add(sig)
        self._seen_order.append(sig)
        if len(self._seen_order) > 65536:
            self._seen_sigs.discard(self._seen_order.popleft())

    def _deliver(self, st, rec: Record) -> None:
        offset = st.contiguous + 1 - rec.first_step
        self.store.add(rec.origin, rec.first_step, rec.last_step, rec.canonical())
        self.digest.update(rec.origin, st.contiguous, rec.last_step)
        first = st.contiguous + 1
        st.contiguous = rec.last_step
        qs = bytes_to_qs(rec.qs[offset:])
        self.counters["updates_delivered"] += len(qs)
        self._emit(UpdatesReceived(rec.origin, first, qs))
