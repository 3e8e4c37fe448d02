"""Sync: records, ours and everyone's: signed, checked, delivered in step order, spread, repaired.

Push gives speed: a fresh record (ours once a batch is signed, anyone's once accepted)
sits in a TransmitLimitedQueue and goes out in the next push rounds, membership gossip
filling the room left.  Pull gives the guarantee: every anti-entropy round sends our
version-vector digest to one peer, which answers with a VECTOR of its entries where the
digests differ; we PULL what we lack and serve RECORDS for what it lacks.

Every record received, however it came, goes through on_records: duplicate and conflict
checks first (no crypto), then the origin's signature, its rate cap, and delivery in
step order (UpdatesReceived) or a bounded wait for the gap to fill.
"""
from __future__ import annotations

from collections import deque

from .config import ProtocolConfig
from . import messages as msg
from .digests import ASK_OWN, ROOT, root_of
from .dissemination import TransmitLimitedQueue, VersionDigest
from .equivocation import Equivocations
from .events import EventQueue, OriginExcluded, OwnHistoryLearned, UpdatesReceived, WeightsDiverged
from .identity import SIG_SIZE
from .influence import InfluenceBudget
from .membership import Member, Membership
from .outbox import Outbox
from .records import (CANDIDATES_PER_ORIGIN_MULT, REC_MEMBER, Classified, OriginState, Record, RecordBook,
                      TokenBucket, bytes_to_qs, decode_any, encode_any)
from .messages import IHAVE_MAX, IHAVE_PREFIX, IHAVE_SIZE, MAX_PULL_ENTRIES, VECTOR_ENTRIES
from .serving import Serving
from .session import Session
from .wire import WireError, packb

MAX_RECORDS_PER_DATAGRAM = 64
FAR_BEHIND_S = 0.25      # next anti-entropy round after a VECTOR that showed more to pull than one PULL asks
SEEN_SIGS = 65536        # signatures of recently accepted records, for the cheapest duplicate check
OWN_GIVE_UP_WAITS = 5    # see learn_own_history
LAZY_RETRY_S = 0.4       # an IHAVE-driven PULL not answered by then is sent again (a loss on either leg)
LAZY_TRIES = 4           # ... this many times; then anti-entropy repairs it
class Sync:
    def __init__(self, config: ProtocolConfig, session: Session, members: Membership,
                 outbox: Outbox, events: EventQueue, store, rng,
                 gossip_q: TransmitLimitedQueue, now: float = 0.0):
        self.config = config
        self.session = session
        self.node_id = session.node_id
        self.members = members
        self.outbox = outbox
        self.events = events
        self.counters: dict = dict.fromkeys((
            "records_accepted", "updates_delivered", "duplicate_records", "records_published",
            "batch_members_waiting",   # batch members held until the closer that vouches for them
            "own_updates_learned",     # our own earlier steps, learned back from peers
            "own_history_incomplete",  # 1: we produced before every peer told our earlier steps
            "origins_excluded", "weights_agreed", "weights_diverged",
            "lazy_pulls"), 0)        # origins pulled after an IHAVE (lazy push)
        self.store = store
        self.rng = rng
        self.gossip_q = gossip_q    # membership gossip, sent in the room records leave
        self.record_q = TransmitLimitedQueue(config.max_broadcasts, newest_first=False)
        self.own_q: list = []   # our signed records for the next push round, in a small swarm
        # Lazy push (IHAVE): (origin -> packed entry) of records we delivered, announced to
        # push peers a few times; announcements we got for records we lack, pulled from the
        # announcer if the record has not come by the due time: origin -> (peer id, step, due).
        self.ihave_q = TransmitLimitedQueue(config.max_broadcasts, newest_first=True)
        self._wants: dict = {}
        self._prefix: dict = {}   # origin id prefix -> origin
        self.book = RecordBook(config.max_pending_updates_per_origin, config.max_pending_records)
        self.digest = VersionDigest()
        self.pulls: dict[bytes, float] = {}   # origin -> until when its records answer our PULL
        # A relayed duplicate (the common case under gossip) is recognised by one set lookup
        # of its signature, before decoding anything.
        self._relay = True       # the records being handled are pushed on (on_records)
        self._seen_sigs: set = set()
        self._seen_order: deque = deque()
        # Our own updates not yet in a signed record: the open record, and the full records
        # of the open batch (records_per_signature > 1) waiting for its closer.
        self._own_qs = bytearray()
        self._own_first = 0
        self._batch: list = []                 # [(first_step, qs)], unsigned members to be
        self.flush_at: float | None = None     # when the open batch is signed anyway
        self.influence = InfluenceBudget.from_config(config)
        # proofs of equivocation: one more exclusion reason
        self.equiv = Equivocations(config, session, store, self.book, self.influence, outbox, gossip_q, events,
                                   exclude=self.exclude, news=self.news)
        # records out of the store for peers that lack them
        self.serving = Serving(config, self.node_id, outbox, store, self.book, self.influence,
                               news=self.news, pull=self.pull)
        self.equiv.load()
        rules = getattr(store, "rule_exclusions", None)
        for origin, (step, reason) in (rules() if rules else {}).items():
            self.influence.exclude(origin, step, reason)   # kept from before a restart
        for origin, step in store.version_vector().items():
            if step > 0 and origin != session.node_id:
                step = self._prime_influence(origin, step)
            if step > 0:
                self.book.state(origin).contiguous = step
                self.digest.update(origin, 0, step)
        self.next_own_step = self.book.contiguous(self.node_id) + 1
        # Our own history (a key restarted from an empty or old state dir): until peers have
        # told us where our origin stands, and we hold those records, the node must not
        # produce (learn_own_history).  Settled from the start unless the driver asks.
        self.own_settled = True
        self.own_deadline: float | None = None
        self._own_give_up: float | None = None
        self._own_answers: set = set()
        self._own_target = 0
        # (weights digest, vv hash) the node last computed: sent with our DIGEST, compared
        # with a peer's where the vv hashes agree (divergence is visible, never silent).
        self.weights: tuple | None = None
        # Anti-entropy backs off while nothing changes: its interval doubles after each round
        # that followed a quiet one, up to anti_entropy_max_interval_s, and news (see news())
        # brings it back to the base at once.  The engine fires the round at ae_due.
        self.ae_interval = config.anti_entropy_interval_s
        self.ae_last = now
        self.ae_due = now + config.anti_entropy_interval_s   # the engine sets a random phase
        self._news = True
        self._stuck_since, self._delivered_at_round = None, 0   # see _stuck_gap

    # ================================================================ views
    def version_vector(self) -> dict:
        return {o: st.contiguous for o, st in self.book.origins.items() if st.contiguous > 0}

    def excluded_origins(self) -> dict:
        """Origins the influence budget cut off: {origin: (first step never delivered, reason)}."""
        return {o: (b.step, b.reason) for o, b in self.influence.excluded.items()}

    def pending_updates(self) -> int:
        return sum(st.pending_updates for st in self.book.origins.values())

    # ================================================================ our own history
    def learn_own_history(self, now: float, wait_s: float) -> None:
        """Hold production (OwnHistoryLearned says when) until our own earlier steps are
        known.  Every anti-entropy DIGEST meanwhile asks its peer for our origin's step
        (ASK_OWN); we pull what they hold beyond ours.  Settled once at least
        min(2, live peers) answered and we hold every step they reported, or once wait_s
        passed with no answer (a new key has no history).  A reported step never served
        (a peer that lied, or died) holds us at most OWN_GIVE_UP_WAITS * wait_s longer."""
        self.own_settled = False
        self.own_deadline = now + wait_s
        self._own_give_up = now + (1 + OWN_GIVE_UP_WAITS) * wait_s

    def own_history(self) -> dict:
        """For status: where learning our own history stands."""
        return {"settled": self.own_settled, "answers": len(self._own_answers),
                "reported_step": self._own_target, "held_step": self.book.contiguous(self.node_id)}

    def _check_own(self, now: float) -> None:
        if self.own_settled:
            return
        answers = len(self._own_answers)
        if answers:
            needed = min(2, max(1, self.members.live_count()))
            behind = self.book.contiguous(self.node_id) < self._own_target
            if (behind or answers < needed) and now < self.own_deadline:
                return
            if behind and now < self._own_give_up:
                return   # a peer holds steps of ours we still lack: pull them first
            if behind:
                self.counters["own_history_incomplete"] = 1
        elif now < self.own_deadline:
            return
        self.own_settled = True
        self.events.emit(OwnHistoryLearned(self.next_own_step, answers))

    # ================================================================ our records
    def add_own(self, q: int, now: float) -> None:
        """Our update of step next_own_step (the engine checked it): batch it into a record,
        a full record into the open batch; the batch is signed once it holds
        records_per_signature records, or record_linger_s after its first update."""
        if not self._own_qs:
            self._own_first = self.next_own_step
            if not self._batch:
                self.flush_at = now + self.config.record_linger_s
        self._own_qs.append(q & 0xFF)
        self.next_own_step += 1
        if len(self._own_qs) >= self.config.updates_per_record:
            if len(self._batch) + 1 >= self.config.records_per_signature:
                self.flush(now)
            else:
                self._batch.append((self._own_first, bytes(self._own_qs)))
                self._own_qs = bytearray()

    def flush(self, now: float) -> None:
        """Sign the open batch now (its last record is the closer): store and queue its
        records, members first."""
        batch, self._batch = self._batch, []
        if self._own_qs:
            batch.append((self._own_first, bytes(self._own_qs)))
            self._own_qs = bytearray()
        self.flush_at = None
        if not batch:
            return
        members = [Record(self.session.pub, self.node_id, f, qs, None) for f, qs in batch[:-1]]
        first, qs = batch[-1]
        hashes = tuple(self.session.member_hash(r) for r in members)
        for rec in members:
            self._publish_own(rec)
        self._publish_own(Record(self.session.pub, self.node_id, first, qs,
                                 self.session.sign_record(first, qs, hashes), hashes))

    def _publish_own(self, rec: Record) -> None:
        first, qs, sig = rec.first_step, rec.qs, rec.sig
        st = self.book.state(self.node_id)
        self.store.add(self.node_id, first, rec.last_step, rec.canonical())
        self.book.remember(st, rec)
        self.digest.update(self.node_id, st.contiguous, rec.last_step)
        st.contiguous = rec.last_step
        self.counters["records_published"] += 1
        # Not news for anti-entropy: our records go out by push; a peer that misses one pulls it.
        if sig is not None:
            self._remember_sig(sig)
        # Without the key: we are the sender, and receivers know our key from the session.
        packed = packb(encode_any(None, first, qs, sig, rec.hashes))
        if self._direct():
            self.own_q.append(packed)
        else:
            self.record_q.push((self.node_id, first), packed)
            if sig is not None:
                self._announce(self.node_id, st.contiguous)

    # ================================================================ records in
    def on_records(self, m: Member, records: list, addr, now: float, answer: msg.Records | None = None) -> None:
        """Records carried by an authenticated datagram from m; each bad one is a counted drop.
        answer: the message of a RECORDS datagram (served for our PULL or VECTOR), which may
        say what more its server holds: see Serving.answered."""
        if answer:
            c = self.counters
            delivered, taken = c["updates_delivered"], self._records_taken()
        seen = self._seen_sigs
        refused = False
        # Records that answer a PULL or a VECTOR are repairs: most of the swarm holds them
        # already, so they are delivered but not pushed on (lazy push tells peers we hold them)
        self._relay = answer is None or not self.config.lazy_push_mult
        for raw in records[:MAX_RECORDS_PER_DATAGRAM]:
            if isinstance(raw, bytes) and raw and not raw[0] & REC_MEMBER and raw[-SIG_SIZE:] in seen:
                self.counters["duplicate_records"] += 1   # the common case: one set lookup
                continue
            try:
                self._on_record(m, raw, now)
            except WireError as e:
                self.events.drop(e.reason, addr)
                if e.reason in ("rate_limited", "buffer_full"):
                    refused = True
                    self.news()   # a record we refused for now: anti-entropy pulls it soon
        if answer:
            # records we refused for now are no reason to pull on at once (they would be
            # refused again): anti-entropy asks for them later
            self.serving.answered(m, answer.more, c["updates_delivered"] > delivered,
                                  self._records_taken() > taken and not refused, now)

    def _records_taken(self) -> int:
        """Records new to us so far: accepted, or batch members held for their closer."""
        return self.counters["records_accepted"] + self.counters["batch_members_waiting"]

    def _on_record(self, m: Member, raw, now: float) -> None:
        pub, first, qs, sig, hashes = decode_any(raw)
        if pub is None:
            pub = m.pub     # the sender is the origin
        if (len(qs) > self.config.max_record_updates or 0x80 in qs
                or len(hashes) >= self.config.records_per_signature
                or sig is None and self.config.records_per_signature == 1):
            raise WireError("malformed")
        origin = self.session.origin_id(pub)
        if origin == self.node_id and not self._learns_own(first + len(qs) - 1):
            self.counters["duplicate_records"] += 1   # our own record, relayed back
            return
        if not self.session.admitted(pub):
            raise WireError("not_admitted")
        rec = Record(pub, origin, first, qs, sig, hashes)
        if sig is None:
            st = self.book.state(origin)
            h = self.session.member_hash(rec)
            if h not in st.commits:
                if rec.last_step <= st.contiguous and self.equiv.held_conflict(rec) is None:
                    self.counters["duplicate_records"] += 1   # steps we hold, the same q
                    return
                if h in st.candidates:
                    self.counters["duplicate_records"] += 1   # waiting already: nothing new
                    return
                # Its closer is not known yet: it waits (batch members in any order).
                limit = CANDIDATES_PER_ORIGIN_MULT * self.config.records_per_signature
                if not self.book.hold_candidate(st, h, rec, limit):
                    raise WireError("buffer_full")
                self.counters["batch_members_waiting"] += 1
                return
        self._consider(rec, now)

    def _consider(self, rec: Record, now: float) -> None:
        """A decoded, admitted record (a member: one its verified closer committed to)."""
        origin, first, qs = rec.origin, rec.first_step, rec.qs
        kind, held = self.book.classify(rec)
        if kind != Classified.CONFLICT and first <= self.book.contiguous(origin) \
                and first not in self.book.state(origin).recent:
            # Another split of steps we hold (or older than the recent records): compare q.
            held = self.equiv.held_conflict(rec)
            kind = Classified.CONFLICT if held is not None else kind
        if kind == Classified.CONFLICT and self.equiv.on_conflict(rec, held):
            return   # half of an equivocation proof (protocol/equivocation.py)
        if kind == Classified.CONFLICT and rec.hashes:
            # Another closer for steps we hold, agreeing on its own q: it may vouch for other
            # members (an equivocation in a member), so they must be checkable when they come.
            if not self.session.verify_record(rec):
                raise WireError("bad_signature")
            self._commit(self.book.state(origin), rec, now)
        if kind == Classified.DUP or rec.last_step <= self.book.contiguous(origin):
            self.counters["duplicate_records"] += 1
        else:
            if self.events.full:
                raise WireError("backpressure")   # not stored: anti-entropy brings it back later
            excluded = self.influence.excluded_from(origin)
            if excluded is not None and max(first, self.book.contiguous(origin) + 1) >= excluded:
                raise WireError("excluded")   # nothing of it is ever delivered (no crypto)
            if rec.sig is not None and not self.session.verify_record(rec):
                raise WireError("bad_signature")
            st = self.book.state(origin)
            if not self._within_rate(st, len(qs), now, self.pulls.get(origin, -1.0) >= now):
                raise WireError("rate_limited")
            self._accept(st, rec)
            if rec.hashes:
                self._commit(st, rec, now)

    def _commit(self, st: OriginState, closer: Record, now: float) -> None:
        """A verified closer vouches for its members: take those already waiting."""
        for h in closer.hashes:
            st.commits[h] = closer
        for h in closer.hashes:
            member = st.candidates.pop(h, None)
            if member is None:
                continue
            try:
                self._consider(member, now)
            except WireError as e:
                self.events.drop(e.reason, None)
        self.book.prune_batches(st)

    def _learns_own(self, last_step: int) -> bool:
        """An own record beyond what we hold: steps of ours we lost (an empty or old state
        dir).  Taken only while we have published nothing past our stored steps, so a step
        number is never ours twice; a relayed copy of a record we sent is a duplicate."""
        contiguous = self.book.contiguous(self.node_id)
        return (last_step > contiguous and not self._own_qs
                and self.next_own_step == contiguous + 1)

    def _within_rate(self, st: OriginState, n: int, now: float, pulled: bool) -> bool:
        """The origin's token buckets: pushed updates at the cap, updates we pulled at
        pull_rate_mult times the cap (a node catching up must outrun the origin), so however
        a record comes, acceptance per origin stays bounded (docs/security.md, rate cap)."""
        cfg = self.config
        if pulled:
            if st.pull_bucket is None:
                rate = cfg.max_updates_per_s_per_origin * cfg.pull_rate_mult
                st.pull_bucket = TokenBucket(rate, rate * cfg.rate_burst_s, now)
            return st.pull_bucket.take(n, now)
        if st.bucket is None:
            rate = cfg.max_updates_per_s_per_origin
            st.bucket = TokenBucket(rate, rate * cfg.rate_burst_s, now)
        return st.bucket.take(n, now)

    def _accept(self, st: OriginState, rec: Record) -> None:
        """A verified new record: deliver it (and whatever it unblocks) or hold it for the gap."""
        # An IHAVE names its origin by prefix: known from the first record we take of it,
        # even one held beyond a gap (the gap is what an IHAVE lets us pull)
        self._prefix[rec.origin[:IHAVE_PREFIX]] = rec.origin
        if rec.first_step > st.contiguous + 1:
            if not self.book.can_hold(st, rec):
                raise WireError("buffer_full")
            self.book.hold(st, rec)
            self.book.remember(st, rec)
        else:
            self.book.remember(st, rec)
            self._deliver(st, rec)
            while (nxt := self.book.pop_next(st)) is not None:
                self._deliver(st, nxt)
            if st.contiguous + 1 >= (self.influence.excluded_from(rec.origin) or 1 << 62):
                self.book.drop_pending(st)   # beyond the excluded step: never delivered
            if st.commits or st.candidates:
                self.book.prune_batches(st)
        self.counters["records_accepted"] += 1
        if st.contiguous < rec.last_step:
            self.news()   # held for a gap: something was lost on the way, compare soon
        # A record delivered in order is the flow working, not news: anti-entropy backs off
        # while records flow and returns to its base only when a round has to repair.
        if rec.sig is not None:
            self._remember_sig(rec.sig)
        if not self._direct() and self._relay:   # in a small swarm its origin sent it to every peer itself
            self.record_q.push((rec.origin, rec.first_step), packb(rec.canonical()))

    def _deliver(self, st: OriginState, rec: Record) -> None:
        """Store, then report, the steps of rec beyond the contiguous mark (up to the step
        before an influence-budget breach: the record is stored whole, it is signed evidence,
        and every node that pulls it cuts it at the same step)."""
        offset = st.contiguous + 1 - rec.first_step
        first = st.contiguous + 1
        qs = bytes_to_qs(rec.qs[offset:])
        if rec.origin != self.node_id:
            qs = self._admit(rec.origin, first, qs)
            if not qs:
                return
        self.store.add(rec.origin, rec.first_step, rec.last_step, rec.canonical(), delivered=(first, qs))
        self.digest.update(rec.origin, st.contiguous, first + len(qs) - 1)
        st.contiguous = first + len(qs) - 1
        self.counters["updates_delivered"] += len(qs)
        self._announce(rec.origin, st.contiguous)
        self.events.emit(UpdatesReceived(rec.origin, first, qs))
        if rec.origin == self.node_id:   # our own lost steps, learned back: never reused
            self.next_own_step = st.contiguous + 1
            self.counters["own_updates_learned"] += len(qs)
            self._check_own(float("-inf"))

    def exclude(self, origin: bytes, step: int, reason: str) -> bool:
        """Exclude origin from step on (the lower step wins): nothing from there is delivered
        or served again, and what was delivered is rolled back to step - 1 (the shell takes it
        back out of the weights).  OriginExcluded is emitted when the exclusion moved."""
        moved = self.influence.exclude(origin, step, reason)
        st = self.book.state(origin)
        if st.contiguous >= step:
            self.digest.update(origin, st.contiguous, step - 1)
            st.contiguous = step - 1
        self.book.drop_pending(st)
        if moved:
            self.counters["origins_excluded"] += 1
            self.events.emit(OriginExcluded(origin, step, reason))
        return moved

    def _admit(self, origin: bytes, first: int, qs: tuple) -> tuple:
        """The prefix of qs (steps first..) within origin's influence budget; a breach
        excludes the origin from its step on, reported once (OriginExcluded)."""
        before = self.influence.excluded.get(origin)
        n = self.influence.admit(origin, first, qs)
        if self.influence.excluded.get(origin) is not before:
            breach = self.influence.excluded[origin]
            self.counters["origins_excluded"] += 1
            self.events.emit(OriginExcluded(origin, breach.step, breach.reason))
        return qs[:n]

    def _prime_influence(self, origin: bytes, top: int) -> int:
        """At start: run the budget over the stored history of origin (its windows must hold
        its last steps; a store may hold a record cut at a breach).  Returns how far it is
        delivered: top, or the step before its breach."""
        first = 1
        for canon in self.store.get(origin, 1, 1 << 62):
            _, rfirst, raw, _, _ = decode_any(canon)
            if rfirst + len(raw) - 1 < first:
                continue
            if rfirst > first:
                break   # a history that does not start at step 1 (a snapshot join): budget from here
            qs = bytes_to_qs(raw[first - rfirst:min(len(raw), top - rfirst + 1)])
            n = self.influence.admit(origin, first, qs)
            first += n
            if n < len(qs) or first > top:
                break
        return min(top, first - 1) if origin in self.influence.excluded else top

    def _remember_sig(self, sig: bytes) -> None:
        self._seen_sigs.add(sig)
        self._seen_order.append(sig)
        if len(self._seen_order) > SEEN_SIGS:
            self._seen_sigs.discard(self._seen_order.popleft())

    # ================================================================ push
    def _direct(self) -> bool:
        """A small swarm: each record goes from its origin straight to every peer, once (the
        fewest bytes: n - 1 copies, where gossip sends each of them several times per node);
        anti-entropy repairs what a lost datagram missed."""
        return self.members.live_count() <= self.config.direct_push_max

    def everyone_talks(self) -> bool:
        """A small swarm with no NAT about: every member reaches every other directly (and
        does: its records go to each), its certificate in its first datagram to each."""
        return self._direct() and self.members.reachable is None

    def push_own(self) -> None:
        """Our records signed since the last round, to every live peer, with membership
        gossip in the room they leave."""
        own, self.own_q = self.own_q, []
        if not own:
            return
        for peer in self.members.random_live(self.rng, self.config.direct_push_max):
            budget = self.outbox.budget(peer, 1)
            batch, room = [], budget
            for packed in own:
                if len(packed) > room and batch:
                    self.outbox.send(msg.Push(), peer, None, batch)
                    batch, room = [], budget
                batch.append(packed)
                room -= len(packed)
            self.outbox.send(msg.Push(), peer, None, batch)

    def _announce(self, origin: bytes, step: int) -> None:
        """IHAVE (origin, step) to push peers from the next rounds on (a newer step of the
        origin replaces an older one); origins resolved back from their prefix."""
        self._prefix[origin[:IHAVE_PREFIX]] = origin
        if self.config.lazy_push_mult and not self._direct():
            self.ihave_q.push(origin, origin[:IHAVE_PREFIX] + step.to_bytes(IHAVE_SIZE - IHAVE_PREFIX, "little"))

    def on_push(self, m: Member, push: msg.Push, now: float, via: Member | None = None) -> None:
        """IHAVE entries: records m holds; those we lack (and are not pulling) are pulled from m
        if they have not come lazy_push_wait_s from now (push_round: _pull_wanted)."""
        if not push.ihave:
            return
        due = now + self.config.lazy_push_wait_s
        for prefix, step in push.entries():
            origin = self._prefix.get(prefix)
            if origin is None or step <= self.book.contiguous(origin) or origin == self.node_id:
                continue
            w = self._wants.get(origin)
            if w is None or w[1] < step:
                self._wants[origin] = (m.node_id, step, due if w is None else w[2], 0 if w is None else w[3])

    def _pull_wanted(self, now: float) -> None:
        """PULL, from their announcers, the announced records still lacking at their due time."""
        if not self._wants:
            return
        by_peer: dict = {}
        retry = now + LAZY_RETRY_S
        for origin, (peer, step, due, tries) in list(self._wants.items()):
            if due > now:
                continue
            have = self.book.contiguous(origin)
            if step <= have or tries >= LAZY_TRIES:
                del self._wants[origin]   # come, or left to anti-entropy
                continue
            # asked again (of the latest announcer) if the answer has not come by then
            self._wants[origin] = (peer, step, retry, tries + 1)
            by_peer.setdefault(peer, []).append((origin, have + 1, step))
        expiry = now + 2 * self.config.anti_entropy_interval_s
        for peer, wants in by_peer.items():
            m = self.members.get(peer)
            if m is None:
                continue
            # entries of at most 44 bytes (id 32, step up to 9, framing): a PULL that carries
            # our certificate (a channel not yet confirmed) must still fit one datagram
            per = max(1, min(MAX_PULL_ENTRIES, (self.outbox.budget(m, 0) - 8) // 44))
            for start in range(0, len(wants), per):
                chunk = wants[start:start + per]
                for o, _, _ in chunk:
                    self.pulls[o] = expiry   # exempt from the push rate cap, not asked twice
                self.counters["lazy_pulls"] += len(chunk)
                self.serving.fresh_from.discard(m.node_id)
                self.outbox.send(self.serving.pull_for(m, chunk), m, piggyback=False)

    def push_round(self, now: float | None = None) -> None:
        cfg = self.config
        self.push_own()
        # In a small swarm, news of a member (a TAG) only rides on datagrams that go anyway
        # (records, probes, digests): the member itself reaches every peer with its first
        # datagram, so the relays are a backup and need no datagram of their own.
        talks = self.everyone_talks()
        self.gossip_q.tag_limit = cfg.transmit_limit(self.members.live_count() + 1, 2) if talks else None
        with_gossip = bool(len(self.gossip_q)) and (not talks or self.gossip_q.urgent())
        now = self.ae_last if now is None else now
        self._pull_wanted(now)
        lazy = bool(len(self.ihave_q)) and cfg.lazy_push_mult > 0 and not self._direct()
        if not with_gossip and not len(self.record_q) and not lazy:
            return
        n = self.members.live_count() + 1
        limit = cfg.transmit_limit(n)
        rlimit = cfg.transmit_limit(n, cfg.record_retransmit_mult)
        ilimit = cfg.transmit_limit(n, cfg.lazy_push_mult) if lazy else 0
        for peer in self.members.random_live(self.rng, cfg.fanout):
            # Up to max_push_datagrams per peer, filled in one pass over each queue: records
            # first, membership gossip in the space left (it also rides on every ping, ack
            # and digest), so a membership backlog (a thousand joins) never delays updates.
            # IHAVE entries (lazy push) first, in the first datagram's payload.
            room = self.outbox.budget(peer, 1)   # (less our certificate, while it goes along)
            ihave = b"".join(self.ihave_q.take(min(IHAVE_MAX * IHAVE_SIZE, room - 3), ilimit)) if lazy else b""
            rooms = [room] * cfg.max_push_datagrams
            if ihave:
                rooms[0] -= len(ihave) + 3
            records = self.record_q.take_into(rooms, rlimit)
            gossip = self.gossip_q.take_into(rooms, limit, peer) if with_gossip else [[]] * len(rooms)
            for i, (g, r) in enumerate(zip(gossip, records)):
                if g or r or (i == 0 and ihave):
                    self.outbox.send(msg.Push(ihave if i == 0 else b""), peer, g, r)

    # ================================================================ anti-entropy
    def news(self) -> None:
        """Something changed here (a record in or out, a peer's differing digest or vector, a
        member joined): anti-entropy returns to its base interval, counted from its last
        round, so a node that had backed off compares again at once."""
        self._news = True
        base = self.config.anti_entropy_interval_s
        if self.ae_interval > base:
            self.ae_interval = base
            self.ae_due = min(self.ae_due, self.ae_last + base)

    def anti_entropy_round(self, now: float) -> None:
        """Send our digest to one random peer, then schedule the next round: at the base
        interval after news, else at twice the last interval (up to the max), and while
        quiet as one short hash of the digest (ROOT) that a peer in agreement ignores."""
        cfg = self.config
        for o in [o for o, t in self.pulls.items() if t < now]:
            del self.pulls[o]
        self._stuck_gap(now)
        self._check_own(now)
        quiet = not self._news and self.own_settled
        self._news = False
        self.ae_interval = (min(2 * self.ae_interval, cfg.anti_entropy_max_interval_s) if quiet
                            else cfg.anti_entropy_interval_s)
        self.ae_last, self.ae_due = now, now + self.ae_interval
        peer = self.members.random_live(self.rng, 1)
        if peer:
            self.outbox.send(self._digest(root=quiet), peer[0])

    def _stuck_gap(self, now: float) -> None:
        """Records held beyond a gap, and nothing delivered since the last round: we lack
        something and are not getting it (a repair exchange lost on its way, several legs
        over lossy or relayed paths).  That is news (compare at the base interval, not after
        a back-off of up to 16 s per failed exchange) for at most 4 x the longest interval:
        a gap nobody can fill (its records lost everywhere) then backs off as before."""
        delivered = self.counters["updates_delivered"]
        if self.book.pending_total and delivered == self._delivered_at_round:
            self._stuck_since = now if self._stuck_since is None else self._stuck_since
            if now - self._stuck_since < 4 * self.config.anti_entropy_max_interval_s:
                self.news()
        else:
            self._stuck_since = None
        self._delivered_at_round = delivered

    def _digest(self, root: bool = False) -> msg.Digest:
        return msg.Digest.of(self.digest.packed(), not self.own_settled, self.weights, root)

    def _compare_weights(self, m: Member, theirs: tuple) -> None:
        """Same vv hash, other weights digest: the replicas diverged (invariant 7)."""
        if self.weights is None or theirs[1] != self.weights[1]:
            return   # no digest yet, or other states: nothing to compare
        if theirs[0] == self.weights[0]:
            self.counters["weights_agreed"] += 1
            return
        self.counters["weights_diverged"] += 1
        self.events.emit(WeightsDiverged(m.node_id, self.weights[0], theirs[0]))
        self.equiv.on_diverged(m)   # maybe two versions of the same steps: let them meet

    def on_digest(self, m: Member, digest: msg.Digest, now: float, via: Member | None = None) -> None:
        """Answer with our entries for origins in differing buckets.

        Under steady publishing nearly every bucket differs (records in flight), so the answer
        leads with the origins that advanced most recently here (what a lossy push most likely
        failed to deliver), then fills up with whole random differing buckets (what a node that
        was away lacks).  Only whole buckets are listed as complete.
        """
        if digest.weights is not None:
            self._compare_weights(m, digest.weights)
        flags = digest.flags
        if flags & ROOT:
            if digest.hashes != root_of(self.digest.packed()):
                # We differ: answer with our digest in full, which it answers with a VECTOR.
                # Not news by itself (records in flight differ too): the VECTOR's pulls are.
                self.outbox.send(self._digest(), m)
            return
        differing = self.digest.differing(digest.hashes)
        if not differing and not flags & ASK_OWN:
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
        if flags & ASK_OWN and all(e[0] != m.node_id for e in entries):
            entries.append([m.node_id, self.book.contiguous(m.node_id)])   # one over the cap
        self.outbox.send(msg.Vector(tuple(buckets), tuple((o, s) for o, s in entries)), m, piggyback=False)

    def on_vector(self, m: Member, vector: msg.Vector, now: float, via: Member | None = None) -> None:
        """Pull what they have and we lack; serve what we have and they lack where they listed
        whole buckets."""
        theirs = dict(vector.entries)
        buckets = vector.buckets
        if self.node_id in theirs and not self.own_settled:
            self._own_answers.add(m.node_id)
            self._own_target = max(self._own_target, theirs[self.node_id])
        self.equiv.nudge(m, theirs)   # listed at or past a proof's step: it lacks the proof
        wanted = self.pull(m, theirs, now)
        if wanted > MAX_PULL_ENTRIES or (wanted and len(theirs) >= VECTOR_ENTRIES):
            # Behind in more origins than one exchange covers (a node back from a partition
            # in a large swarm): the next round goes after a round trip or so, not a base
            # interval, while each keeps finding more to pull.
            self.ae_due = min(self.ae_due, now + FAR_BEHIND_S)
        wants = []
        for b in buckets:
            for o in self.digest.members[b]:
                if self.book.contiguous(o) > theirs.get(o, 0):
                    wants.append((o, theirs.get(o, 0) + 1))
        if wants:
            self.news()   # a repair: they lacked something
            self.rng.shuffle(wants)
            self.serving.serve(m, wants[:MAX_PULL_ENTRIES])
        self._check_own(now)

    def pull(self, m: Member, theirs: dict, now: float) -> int:
        """PULL from m what it holds (theirs: origin -> step) beyond our contiguous steps;
        returns how many origins it holds further (at most MAX_PULL_ENTRIES are asked)."""
        cut = self.influence.excluded_from
        pulls = [[o, self.book.contiguous(o) + 1] for o, s in theirs.items()
                 if s > self.book.contiguous(o) and self.book.contiguous(o) + 1 < (cut(o) or s + 2)]
        self.rng.shuffle(pulls)
        wanted, pulls = len(pulls), pulls[:MAX_PULL_ENTRIES]
        self.serving.fresh_from.discard(m.node_id)   # a new request: see Serving.answered
        if pulls:
            self.news()   # a repair: we lacked something, compare again soon
            # What we asked for is exempt from the push rate cap for a while.
            expiry = now + 2 * self.config.anti_entropy_interval_s
            for o, _ in pulls:
                self.pulls[o] = expiry
            self.outbox.send(self.serving.pull_for(m, [(o, f, theirs[o]) for o, f in pulls]), m, piggyback=False)
        return wanted
