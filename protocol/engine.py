"""Engine: the whole protocol as a sans-IO state machine (in the manner of aioquic).

The driver feeds it datagrams, timer expiries and local updates, and collects
datagrams to send and events.  Nothing here reads a clock, opens a socket or
uses global randomness: `now` and a random.Random instance come in as
arguments.  Peer input never raises out of receive_datagram; it is dropped and
counted by reason.  Our own misuse (a non-consecutive publish, publishing after
leave) raises ProtocolError / ValueError.

The engine routes; each collaborator owns its state:

    Session      our certificate and keys: authenticates datagrams in, seals them out
    Membership   the SWIM member table; its transitions come back as Change values
    Probing      the probes and indirect probes in flight
    Sync         records: ours batched and signed, theirs checked and delivered in step
                 order, pushed eagerly and repaired by anti-entropy
    Outbox       datagrams to send, membership gossip piggybacked
    EventQueue   events for the driver; drops counted

A datagram, top to bottom: receive_datagram -> _receive (header, JOIN aside) ->
Session.authenticate -> unpack_body -> messages.decode (its payload as a typed message) ->
_accept (membership, session, probes) -> the handler of its message type (self._handlers)
-> its gossip items (_on_gossip) -> its records (Sync.on_records).  Every step that
rejects it raises WireError, which ends as one counted drop; nothing changes state before
the payload decoded.
"""
from __future__ import annotations

from dataclasses import dataclass

from .amendments import ANNOUNCE_S, AmendKind, Amendments, Refused
from .config import ProtocolConfig
from .dissemination import TransmitLimitedQueue, note_held
from .events import AmendmentApplied, EventQueue
from .identity import CryptoCache, Identity, parse_cert
from .membership import Change, Member, Membership, MemberState
from .nat import Nat
from .outbox import Outbox
from .probing import Probing
from .session import Authenticated, Session
from .store import MemoryRecordStore
from .peerex import CertExchange
from .sync import Sync
from . import messages as msg
from .wire import (Alive, AliveTag, Amend, decode_amend, encode_amend, alive_tag, Dead, Header, Leave, MessageType, ProofItem, Suspect, WireError, decode_gossip,
                   MAX_VERSION, encode_alive, encode_leave, nat_of_flags, parse_header, unpack_body)

MAX_GOSSIP_ITEMS = 64     # per datagram
WEIGHTS_BYTES = 8         # of the weights digest and vv hash in a DIGEST (set_weights_digest)
LAG_SLACK_S = 0.1         # a timer this late means our own loop stalled (see handle_timer)


class ProtocolError(Exception):
    """The driver misused the engine (not raised for peer input)."""


def _carries_only(m: Member, message, now: float, via: Member | None) -> None:
    """The handler of PUSH, PEERS and RECORDS: their gossip and records are the message, and
    every authenticated datagram's are handled after its handler."""


_KIND_NAMES = {int(t): t.name.lower() for t in MessageType}
_TYPE_OFFSET = 9   # version u8 | swarm_tag 8 | type u8 (wire.py)


def _count_kind(kinds: dict, data: bytes) -> None:
    name = _KIND_NAMES.get(data[_TYPE_OFFSET], "unknown") if len(data) > _TYPE_OFFSET else "unknown"
    kinds[name] = kinds.get(name, 0) + len(data)


@dataclass(frozen=True)
class PeerInfo:
    node_id: bytes
    addr: object
    state: str
    incarnation: int
    generation: int
    rtt_s: float | None
    version: str | None = None   # its software version, as announced in its ALIVE items


class Engine:
    def __init__(self, identity: Identity, config: ProtocolConfig, *, rng, now: float,
                 store=None, bootstrap=(), own_last_step: int | None = None,
                 generation: int = 0, crypto: CryptoCache | None = None,
                 own_history_wait_s: float | None = None, bound_addr=None, software: str = ""):
        """generation: strictly increasing per start of this identity (the node passes its
        wall-clock seconds at start, or a persisted boot counter); it selects a fresh
        session key and counter space, so datagrams of a previous run cannot be replayed.

        own_history_wait_s: learn our own earlier steps from peers before producing (a key
        restarted from an empty or old state dir must never reuse a step number): the
        driver publishes only after OwnHistoryLearned; with no answer within this many
        seconds the key counts as new.  None: no such wait (OwnHistoryLearned never comes).

        bound_addr: the (host, port) our socket is bound to (host may be a wildcard): compared
        with the address peers observe, it tells whether we are behind a NAT (protocol/nat.py).
        None: we cannot tell, and announce ourselves reachable."""
        self.identity = identity
        self.config = config
        self.rng = rng
        self.node_id = identity.node_id
        self.store = store if store is not None else MemoryRecordStore()
        self.bootstrap = [tuple(a) for a in bootstrap]
        # Our software version, announced in our ALIVE items (unsigned: for operators only).
        self.software = software[:MAX_VERSION]
        # The engine's own counters; each collaborator keeps (and alone writes) its own, and
        # `counters` shows them all (docs/status.md).
        self._counters: dict = {"bytes_in": 0, "bytes_out": 0, "datagrams_in": 0, "datagrams_out": 0,
                                "internal_errors": 0, "timer_lag_s": 0.0,
                                # docs/protocol.md, Membership: asking and answering
                                "suspicions_asked": 0, "accusations_answered": 0,
                                # bytes per message type, to see what the fixed cost is made of
                                "bytes_by_kind": {"in": {}, "out": {}}}
        self._version = config.protocol_version
        self._tag = config.swarm_tag
        self._left = False

        crypto = crypto if crypto is not None else CryptoCache()
        self.amendments = Amendments(config, crypto)   # who the signed amendments admit
        self.session = Session(identity, config, generation=int(generation), crypto=crypto, now=now,
                               amendments=self.amendments)
        self.events = EventQueue(config.max_events, config.max_drop_events)
        self.members = Membership(config)
        self.gossip_q = TransmitLimitedQueue(config.max_broadcasts)   # membership gossip
        self.outbox = Outbox(config, self.session, self.members, self.gossip_q)
        # The one cycle: the outbox wraps datagrams for members behind a relay through Nat,
        # which sends through the outbox. Nat draws from rng when built; Probing, Sync and
        # CertExchange do not, so their order here changes no draw.
        self.nat = self.outbox.nat = Nat(config, self.members, self.outbox, rng,
                                         self.node_id, bound_addr, now)
        self.probing = Probing(config, self.members, self.outbox, rng, observed_enough=self.nat.observed_enough)
        self.session.nat = self.nat.kind
        self.sync = Sync(config, self.session, self.members, self.outbox, self.events,
                         self.store, rng, self.gossip_q, now=now)
        self.outbox.on_sent = self.sync.serving.sent
        self.certs = CertExchange(self.members, self.outbox, rng, self.node_id,
                                  everyone_talks=self.sync.everyone_talks)
        # One handler per message type, each (member, message, now, via), called once the
        # datagram is authenticated and its payload decoded (protocol/messages.py); via is the
        # relay that carried it, if one did.  JOIN is absent: it is the one unauthenticated
        # message (_on_join).  PUSH, PEERS and RECORDS carry nothing but gossip and records,
        # which any message may (what more a RECORDS' sender holds is read with its records:
        # Sync.on_records).
        self._handlers = {
            MessageType.HELLO: self._on_hello,
            MessageType.PING: self._on_ping,
            MessageType.ACK: self._on_ack,
            MessageType.PING_REQ: self.probing.on_ping_req,
            MessageType.PUSH: self.sync.on_push,
            MessageType.DIGEST: self.sync.on_digest,
            MessageType.VECTOR: self.sync.on_vector,
            MessageType.PULL: self.sync.serving.on_pull,
            MessageType.RECORDS: _carries_only,
            MessageType.PEERS_REQ: self.certs.on_peers_req,
            MessageType.PEERS: _carries_only,
            MessageType.RELAY: self._on_relay,
            MessageType.PUNCH_REQ: self.nat.on_punch_req,
            MessageType.PUNCH: self.nat.on_punch,
        }

        # Steps the node applied but whose record never reached the store (a crash before the
        # record was flushed) must be published again, with their q, before new ones.
        stored_own = self.sync.next_own_step - 1
        if own_last_step is not None and own_last_step < stored_own:
            raise ProtocolError(f"own_last_step {own_last_step} is behind the store ({stored_own})")
        self.own_steps_to_republish = range(stored_own + 1, (own_last_step or stored_own) + 1)
        for raw in getattr(self.store, "amendments", lambda: [])():   # kept from before a restart
            try:
                self._take_amendment(decode_amend(raw), now)
            except WireError:
                pass   # another swarm's or a damaged entry: peers hold the valid ones
        self._next_amend_announce = now + ANNOUNCE_S
        if own_history_wait_s is not None:
            self.sync.learn_own_history(now, own_history_wait_s)

        jitter = rng.random
        self._next_gossip = now + config.gossip_interval_s * jitter()
        self._next_probe = now + config.probe_interval_s * jitter()
        self.sync.ae_due = now + config.anti_entropy_interval_s * jitter()
        self._next_pex = now + config.peer_exchange_interval_s * jitter()
        # Peer exchange backs off like anti-entropy: doubled after each round with no
        # membership change since the one before, back to the base on any change.
        self._pex_interval = config.peer_exchange_interval_s
        self._last_pex = now
        self._pex_news = True
        self._next_reconnect = now + config.reconnect_interval_s
        self._announce_self()
        for addr in self.bootstrap:
            self.outbox.send_join(addr)

    # ================================================================ driver API
    def receive_datagram(self, data: bytes, addr, now: float) -> None:
        self.nat.now = now
        c = self._counters
        c["bytes_in"] += len(data)
        c["datagrams_in"] += 1
        _count_kind(c["bytes_by_kind"]["in"], data)
        try:
            self._receive(bytes(data), addr, now)
        except WireError as e:
            self.events.drop(e.reason, addr)
        except Exception:  # never raise on peer input; a bug shows up in internal_errors
            c["internal_errors"] += 1
            self.events.drop("malformed", addr)

    def datagrams_to_send(self, now: float) -> list:
        out = self.outbox.drain()
        c = self._counters
        c["datagrams_out"] += len(out)
        c["bytes_out"] += sum(len(d) for d, _ in out)
        kinds = c["bytes_by_kind"]["out"]
        for d, _ in out:
            _count_kind(kinds, d)
        return out

    def get_timer(self) -> float | None:
        if self._left:
            return None
        t = min(self._next_gossip, self._next_probe, self.sync.ae_due, self._next_pex,
                self._next_reconnect, self.nat.due)
        flush_at = self.sync.flush_at
        return flush_at if flush_at is not None and flush_at < t else t

    def handle_timer(self, now: float) -> None:
        if self._left:
            return
        cfg = self.config
        lag = now - self.get_timer()
        if lag > LAG_SLACK_S:   # our loop stalled: it does not count against the probed
            self._counters["timer_lag_s"] += lag
            self.probing.delay(lag)
        self.nat.now = now
        for node_id, item in self.probing.released(now):
            self.gossip_q.push(node_id, item)
        if now >= self.nat.due:
            self.nat.tick(now)
        if self.sync.flush_at is not None and now >= self.sync.flush_at:
            self.sync.flush(now)
        if now >= self._next_probe:
            self._next_probe = max(self._next_probe + cfg.probe_interval_s, now)
            self._suspect_unanswered(now, end_of_period=True)
            for change in self.members.expire(now):
                self._apply(change)
            for m in self.members.ripe_suspects(now):
                self._counters["suspicions_asked"] += 1
                self.probing.ask(m, now)
            self.probing.probe_next(now)
            self.certs.retry(now)
        else:
            self._suspect_unanswered(now)
        if now >= self._next_gossip:
            self._next_gossip = max(self._next_gossip + cfg.gossip_interval_s, now)
            self.sync.push_round(now)
        if now >= self.sync.ae_due:
            self.sync.anti_entropy_round(now)   # it sets the next ae_due (back-off)
        if now >= self._next_amend_announce:
            self._announce_amendments(now)
        if now >= self._next_pex:
            quiet, self._pex_news = not self._pex_news, False
            self._pex_interval = (min(2 * self._pex_interval, cfg.peer_exchange_max_interval_s)
                                  if quiet else cfg.peer_exchange_interval_s)
            self._last_pex, self._next_pex = now, now + self._pex_interval
            peer = self.members.random_live(self.rng, 1)
            if peer:
                self.certs.ask_peers(peer[0])
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval_s
            self.probing.ping_dead(now)
            self._rejoin_bootstrap()

    def publish(self, step: int, q: int, now: float) -> None:
        """Queue one own update; steps must be consecutive (see own_steps_to_republish)."""
        if self._left:
            raise ProtocolError("publish after leave")
        if step != self.sync.next_own_step:
            raise ProtocolError(f"publish step {step}, expected {self.sync.next_own_step}")
        if not isinstance(q, int) or not -127 <= q <= 127:
            raise ValueError(f"q must be an int in [-127, 127], got {q!r}")
        self.sync.add_own(q, now)

    def flush(self, now: float) -> None:
        """Sign and send the partial own record now (e.g. before a snapshot)."""
        self.sync.flush(now)

    def leave(self, now: float) -> None:
        """Graceful leave: flush, announce a signed LEAVE to several peers, then go quiet."""
        if self._left:
            return
        self.sync.flush(now)
        self.sync.push_own()   # a small swarm's last own record goes to every peer directly
        s = self.session
        item = encode_leave(self.node_id, s.generation, s.incarnation, s.sign_leave())
        for peer in self.members.random_live(self.rng, 2 * self.config.fanout):
            records = self.sync.record_q.take(self.outbox.budget(peer, 1) - len(item), 1 << 30, 2)
            self.outbox.send(msg.Push(), peer, [item], records)
        self._left = True

    def next_event(self):
        return self.events.pop()

    def add_bootstrap(self, addr, now: float) -> None:
        """A bootstrap address learned after start (a peer name that resolved late): join it
        now, and keep re-joining it like the configured ones while it is not a live member."""
        addr = tuple(addr)
        if addr not in self.bootstrap:
            self.bootstrap.append(addr)
            self.outbox.send_join(addr)

    def remove_bootstrap(self, addr) -> None:
        """A bootstrap address the operator took out of the config: no longer re-joined."""
        addr = tuple(addr)
        if addr in self.bootstrap:
            self.bootstrap.remove(addr)

    @property
    def next_own_step(self) -> int:
        return self.sync.next_own_step

    @property
    def own_history_settled(self) -> bool:
        return self.sync.own_settled

    def own_history(self) -> dict:
        return self.sync.own_history()

    def set_weights_digest(self, digest: bytes, vv_hash: bytes) -> None:
        """The node's latest weights digest and a hash of the version vector it covers:
        sent with anti-entropy DIGESTs, so a peer with the same vv hash and other weights
        reports WeightsDiverged (and so do we, on theirs)."""
        if not (isinstance(digest, bytes) and isinstance(vv_hash, bytes)
                and 0 < len(digest) <= 32 and 0 < len(vv_hash) <= 32):
            raise ValueError("weights digest and vv hash must be 1..32 bytes each")
        # 8 bytes of each travel: a chance collision is 2^-64, and every DIGEST carries them.
        self.sync.weights = (digest[:WEIGHTS_BYTES], vv_hash[:WEIGHTS_BYTES])

    # ================================================================ views
    def peers(self) -> list:
        return [PeerInfo(m.node_id, m.addr, m.state.name.lower(), m.incarnation, m.generation, m.probe.rtt,
                         m.version)
                for m in self.members.members.values()]

    def nat_status(self) -> dict:
        """Our NatKind, observed address and paths (protocol/nat.py)."""
        return self.nat.status()

    def version_vector(self) -> dict:
        return self.sync.version_vector()

    def pending_updates(self) -> int:
        return self.sync.pending_updates()

    def excluded_origins(self) -> dict:
        """Origins cut off by the influence budget, an equivocation proof or a rule the shell
        evaluates (exclude): {origin: (first step never delivered, reason)} (same on every node)."""
        return self.sync.excluded_origins()

    def exclude(self, origin: bytes, step: int, reason: str) -> bool:
        """Exclude origin from step on by a rule over its own signed sequence that the shell
        evaluates (the steering rule needs the model): nothing from there is delivered or
        served again; the store keeps it (add_exclusion) so a restart holds it too.  True if
        the exclusion moved (OriginExcluded follows)."""
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"exclude: step must be an int >= 1, got {step!r}")
        add = getattr(self.sync.store, "add_exclusion", None)
        if add is not None:
            add(origin, step, reason)
        return self.sync.exclude(origin, step, reason)

    # ================================================================ amendments
    def amend(self, a: Amend, now: float) -> list[Amend]:
        """An amendment the operator submits through this node: checked as a peer's would be
        (ProtocolError says why not), then held, stored and gossiped. Returns the amendments
        that took effect (none while a lower number is missing)."""
        try:
            return self._take_amendment(a, now)
        except Refused as exc:
            raise ProtocolError(exc.why) from None

    def _take_amendment(self, a: Amend, now: float) -> list[Amend]:
        fresh = self.amendments.take(a)   # WireError: a counted drop
        if self.amendments.held.get(a.number) is a:   # news, and kept: stored, then spread
            packed = encode_amend(a)
            add = getattr(self.store, "add_amendment", None)
            if add is not None:
                add(a.number, packed)
            self.gossip_q.push(("amend", a.number), packed)
        for done in fresh:
            if done.kind in (AmendKind.REVOKE, AmendKind.ROTATE):
                origin = self.session.origin_id(done.key)
                self.exclude(origin, done.step, "revoked" if done.kind == AmendKind.REVOKE else "rotated")
                self._apply(self.members.remove(origin, now))
            self.events.emit(AmendmentApplied(done.number, done.kind, done.key, done.step, done.new_key))
        return fresh

    def _announce_amendments(self, now: float) -> None:
        """Held amendments, a few per round in turn: a node that missed one learns it."""
        self._next_amend_announce = now + ANNOUNCE_S
        for a in self.amendments.to_announce():
            self.gossip_q.push(("amend", a.number), encode_amend(a))

    @property
    def counters(self) -> dict:
        """Every counter of the engine and its collaborators, in one dict (a new one: read it,
        never write it).  Keys are disjoint (tests/protocol/test_units.py)."""
        return {**self._counters, **self.events.counters, **self.nat.counters, **self.sync.counters,
                **self.sync.serving.counters, **self.sync.equiv.counters, **self.amendments.counters}

    @property
    def book(self):
        """Per-origin delivery state (the simulator and bench/sim.py read contiguous steps)."""
        return self.sync.book

    # ================================================================ a datagram in
    def _receive(self, data: bytes, addr, now: float, via: Member | None = None) -> None:
        """via: the relay that carried this (inner) datagram; addr is then the sender's address
        as we hold it, and nothing about addresses is learned from it."""
        h = parse_header(data, self._version, self._tag, self.config.max_datagram)
        if self._left:
            return
        if h.sender == self.node_id:
            raise WireError("from_self")
        if h.type == MessageType.JOIN:
            return self._on_join(h, addr, now)
        auth = self.session.authenticate(h, self.members.get(h.sender), now)
        payload, gossip, records = unpack_body(h.body)
        message = msg.decode(h.type, payload)
        # --- authenticated and decoded: from here on the datagram may change state.
        m = self._accept(h, auth, addr, now, via)
        self.sync.serving.received(m, m.addr if via is not None else addr, len(data), h.type)
        self._handlers[h.type](m, message, now, via)
        if gossip:
            self._on_gossip(m, gossip, addr, now, listed=h.type == MessageType.PEERS)
        if records:
            self.sync.on_records(m, records, addr, now, answer=message if isinstance(message, msg.Records) else None)

    def _accept(self, h: Header, auth: Authenticated, addr, now: float, via: Member | None = None) -> Member:
        """The sender as a member (learned from its certificate if it sent one), with its
        session advanced past this datagram and its probes answered."""
        if auth.cert is None:
            m = self.members.get(h.sender)
        else:
            m, change = self.members.on_cert(auth.cert, addr if via is None else None, now, direct=True,
                                             nat=nat_of_flags(h.flags))
            if m is None:
                raise WireError("rate_limited")  # membership table full of live peers
            self._apply(change)
        self.session.accept(m, auth, h.counter)
        self.nat.set_kind(m, nat_of_flags(h.flags))   # its own word, in every datagram
        if via is None:
            self.members.heard_from(m, addr)
            self.nat.heard_direct(m, now)
        if not m.live:
            self.probing.tell_dead(m, now)   # so it can refute, and come back
        self.probing.heard_from(m, h.type, now)
        return m

    def _on_join(self, h: Header, addr, now: float) -> None:
        # JOIN has no MAC (the joiner lacks our session key): it may be a replay, so it only
        # teaches us a genuine signed certificate and earns a HELLO no larger than itself.
        cert = self.session.verify_join(h, now)
        m = self.members.get(cert.node_id)
        if m is not None and cert.generation < m.generation:
            raise WireError("stale_generation")
        key = self.session.pair_key(cert.xpub)
        kind = nat_of_flags(h.flags)
        m, change = self.members.on_cert(cert, addr if m is None else None, now, direct=False, nat=kind)
        if m is None:
            raise WireError("rate_limited")
        self._apply(change)
        self.nat.set_kind(m, kind)
        self.session.joined(m, key)
        # The HELLO tells the joiner where its JOIN came from (its observed address).
        self.outbox.send(msg.Hello(addr), m, addr=addr, cert=True, piggyback=False)

    # ================================================================ handlers
    def _on_hello(self, m: Member, message: msg.Hello, now: float, via: Member | None) -> None:
        # The answer to our JOIN: ask this first contact for more peers.
        self._observed(m, message.observed, now, via)
        self.certs.ask_peers(m)

    def _on_ping(self, m: Member, message: msg.Ping, now: float, via: Member | None) -> None:
        # The ACK tells m where its PING came from, unless a relay carried it (we did not see).
        self.probing.on_ping(m, message, now, m.addr if via is None else None)

    def _on_ack(self, m: Member, message: msg.Ack, now: float, via: Member | None) -> None:
        self._observed(m, message.observed, now, via)
        self.probing.on_ack(m, message, now)

    def _observed(self, m: Member, addr, now: float, via: Member | None) -> None:
        """m saw our datagram come from addr: what tells our NatKind (protocol/nat.py).  A
        relayed report is not about a direct path, and is ignored."""
        if addr is not None and via is None and self.nat.observed(m, addr, now):
            self.session.nat = self.nat.kind
            self._announce_self()   # our NatKind changed: tell peers how to reach us

    def _on_relay(self, m: Member, message: msg.Relay, now: float, via: Member | None) -> None:
        if via is not None:
            raise WireError("malformed")   # relays never nest
        carried = self.nat.on_relay(m, message, now)
        if carried is not None:
            src, inner = carried
            self._receive(inner, src.addr, now, via=m)

    # ================================================================ membership gossip
    def _on_gossip(self, sender: Member, items: list, addr, now: float, listed: bool = False) -> None:
        """Gossip items in an authenticated datagram; each bad one is a counted drop.
        listed: a PEERS answer (members listed for us, not news of them: CertExchange.on_tag)."""
        corrections = []
        for item in items[:MAX_GOSSIP_ITEMS]:
            try:
                fix = self._on_gossip_item(sender, decode_gossip(item), addr, now, listed)
            except WireError as e:
                self.events.drop(e.reason, addr)
            else:
                if fix is not None:
                    corrections.append(fix)
        if corrections:
            self._counters["accusations_answered"] += 1
            self.probing.answer(sender, corrections)
        self.certs.ask(sender, now)   # the certificates its TAG items told of that we lack

    def _on_gossip_item(self, sender: Member, item, addr, now: float, listed: bool = False) -> bytes | None:
        """Returns an ALIVE item for the sender when it accused us, or a member at an
        incarnation older than the one we hold (it missed the refutation): Probing.answer."""
        match item:
            case Alive():
                self._on_alive(sender, item, addr, now)
            case AliveTag():
                if item.nat:
                    self.nat.activate()
                self.certs.on_tag(sender, item, now, listed)
            case Suspect(node_id, inc) | Dead(node_id, inc) if node_id == self.node_id:
                if inc >= self.session.incarnation:
                    self._refute(inc)
                return self._own_alive()   # the accuser hears the refutation at once
            case Suspect(node_id, inc):   # an accusation by the (authenticated) sender
                self._apply(self.members.on_suspect(node_id, inc, now))
                return self.members.newer_alive(node_id, inc)
            case Dead(node_id, inc):
                self._apply(self.members.on_dead(node_id, inc, now))
                return self.members.newer_alive(node_id, inc)
            case Leave():
                self._on_leave(item, now)
            case ProofItem():   # an equivocation proof (protocol/equivocation.py)
                self.sync.equiv.on_proof(item.record_a, item.record_b)
            case Amend():       # a membership amendment (protocol/amendments.py)
                self._take_amendment(item, now)

    def _on_alive(self, sender: Member, item: Alive, addr, now: float) -> None:
        """A certificate, the sender's own or relayed: verified and taken only if it is news."""
        node_id = self.session.origin_id(item.cert[:32])   # a certificate starts with its key
        if node_id == self.node_id:
            return
        known = self.members.get(node_id)
        direct = node_id == sender.node_id
        note_held(sender, node_id, alive_tag(item.cert, item.nat))   # no need to send it back
        if item.nat:
            self.nat.activate()
        if known is not None and known.cert == item.cert:
            if direct:
                self.nat.set_kind(known, item.nat)   # its own word on its reachability
            self.members.note_version(known, item.version, direct)
            return   # the certificate we hold (the common case): nothing new, nothing to parse
        _, _, gen, inc, _ = parse_cert(item.cert)
        if known is not None and (gen, inc) <= (known.generation, known.incarnation):
            return   # older than the one we hold: no signature check
        peer_addr = addr if direct else item.addr
        if peer_addr is None and known is None:
            return   # a stranger we could not reach
        cert = self.session.check_cert(item.cert, node_id, now)
        _, change = self.members.on_cert(cert, peer_addr, now, direct=direct, nat=item.nat,
                                         version=item.version)
        self._apply(change)

    def _on_leave(self, item: Leave, now: float) -> None:
        subject = self.members.get(item.node_id)
        if subject is None or subject.state == MemberState.LEFT:
            return
        if not self.session.verify_leave(subject.pub, item.node_id, item.generation,
                                         item.incarnation, item.sig):
            raise WireError("bad_signature")
        self._apply(self.members.on_leave(subject, item.generation, item.incarnation, item.sig, now))

    def _refute(self, accused_incarnation: int) -> None:
        self.session.refute(accused_incarnation)
        # Whole, not as a TAG: a peer that holds us suspect must not wait a round trip.
        self._announce_self(whole=True)
        # Attach the new certificate to the next datagram to every peer: a peer that holds us
        # dead revives us on sight, and gossips it on (this is what heals partitions quickly).
        for m in self.members.members.values():
            self.session.unconfirm(m)

    def _announce_self(self, whole: bool = False) -> None:
        self.gossip_q.push(self.node_id, self._own_alive(), whole, own=True)

    def _own_alive(self) -> bytes:
        return encode_alive(self.session.cert, None, self.nat.kind, self.software or None)


    def _apply(self, change: Change | None) -> None:
        """A membership transition: its event to the driver, its gossip to peers."""
        if change is None:
            return
        if change.event is not None:
            self.events.emit(change.event)
            self._membership_news()
            if change.back:
                # A member back (a healed partition, a node that was away): it and we may
                # each hold what the other lacks, so compare version vectors soon.  A newcomer
                # is not news here: it compares at once on its own (its first round is at the
                # base interval), and a repair that follows is news to both sides; a swarm
                # that grows by many joins then does not keep every member's anti-entropy at
                # its base interval (docs/protocol.md, anti-entropy back-off).
                self.sync.news()
        self.gossip_q.push(change.node_id, change.gossip)

    def _membership_news(self) -> None:
        """Peer exchange back at its base interval (counted from its last round)."""
        self._pex_news = True
        base = self.config.peer_exchange_interval_s
        if self._pex_interval > base:
            self._pex_interval = base
            self._next_pex = min(self._next_pex, self._last_pex + base)

    # ================================================================ rounds
    def _suspect_unanswered(self, now: float, end_of_period: bool = False) -> None:
        for target in self.probing.failed(now, end_of_period):
            if self.nat.spare(target):
                continue   # reached through a relay: the relay may be what failed
            change = self.members.on_suspect(target.node_id, target.incarnation, now)
            if change is not None:
                # Tell the suspect itself at once (memberlist's "buddy system"): alive, it
                # refutes in one round trip, and only a suspicion not refuted by then is
                # gossiped (Probing.hold).
                self.events.emit(change.event)
                self._membership_news()
                self.probing.hold(target, change.gossip, now)
                self.outbox.send(msg.Ping(0), target, [change.gossip])

    def _rejoin_bootstrap(self) -> None:
        # Keep knocking on configured addresses that are not live members: a node whose
        # bootstrap peers were down when it started would otherwise stay on an island.
        if self.bootstrap:
            live_addrs = {m.addr for m in self.members.live_members()}
            for addr in self.bootstrap:
                if addr not in live_addrs:
                    self.outbox.send_join(addr)

