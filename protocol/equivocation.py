"""Equivocation resolved: two validly signed records of one origin that give one step two
different q values are a proof any node can check, and every node applies the same rule.

    rule: the origin is excluded from the first step the two records disagree on (k):
          both versions of step k and every later step of it are never delivered, and a
          node that already delivered steps >= k takes them back (OriginExcluded with
          reason "equivocation": the driver undoes them, replaying with -q on the grid).

A node keeps, per origin, the proof with the lowest k it has verified; a proof with a
lower k replaces it.  So k only falls, and since every proof gossips, every node ends at
the lowest k any node found: the same exclusion everywhere (influence.py's budget and this
rule share one exclusion per origin: the lower step wins).

How proofs are found and spread (docs/protocol.md, "Equivocation proofs"):
- a record whose steps overlap steps held here with other q (same first step: the book's
  recent records; any other split: the store) is checked, and with a valid signature it is
  half of a proof whose other half we hold;
- the proof goes out as a PROOF gossip item (GossipKind.PROOF), piggybacked like membership
  gossip; anti-entropy is the guarantee: a peer whose VECTOR lists the origin at k or beyond
  lacks the proof and is sent it;
- with batch signatures a member is unsigned: its half of a proof is the *signed batch*
  part that vouches for it, the member plus its closer (HALF_BUNDLE), so every half
  still verifies on its own (docs/protocol.md, "Batch signatures");
- two nodes that hold the same version vector but report other weights (WeightsDiverged)
  may hold different versions of the same steps (an origin that sent A to one and B to the
  other, with nobody relaying): each sends the other the records it holds most recently,
  a few origins per divergence in turn, so the versions meet and the proof is found.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .events import EquivocationDetected
from .records import HALF_BUNDLE, Record, decode_any, member_hash
from .messages import Push
from .wire import WireError, encode_proof, packb

REASON = "equivocation"
DIVERGED_ORIGINS = 8     # origins whose recent records go to a diverged peer per DIGEST


@dataclass(frozen=True)
class Proof:
    origin: bytes
    step: int           # the first step whose q the two records disagree on
    record_a: bytes     # proof halves: canonical signed records (with the key), or a member
    record_b: bytes     # bundled with its closer (HALF_BUNDLE); a < b bytewise


def bundle(member: bytes, closer: bytes) -> bytes:
    """A member's proof half: HALF_BUNDLE | u16le len(member) | member | closer."""
    return bytes([HALF_BUNDLE]) + len(member).to_bytes(2, "little") + member + closer


def decode_half(half: bytes) -> tuple:
    """(pub, first_step, qs, signed) of a proof half, no crypto: signed = (closer fields, whether
    the member's hash must be among the closer's).  Raises WireError('malformed')."""
    if isinstance(half, bytes) and half[:1] == bytes([HALF_BUNDLE]):
        if len(half) < 3:
            raise WireError("malformed")
        n = int.from_bytes(half[1:3], "little")
        member, closer = decode_any(half[3:3 + n]), decode_any(half[3 + n:])
        if member[3] is not None or closer[3] is None or not closer[4] or member[0] != closer[0]:
            raise WireError("malformed")
        return member[0], member[1], member[2], (closer, True)
    rec = decode_any(half)
    if rec[3] is None:
        raise WireError("malformed")   # a member alone proves nothing
    return rec[0], rec[1], rec[2], (rec, False)


def first_conflict(first_a: int, qs_a: bytes, first_b: int, qs_b: bytes) -> int | None:
    """The first step both runs cover with other q (None: they agree where they overlap)."""
    lo = max(first_a, first_b)
    hi = min(first_a + len(qs_a), first_b + len(qs_b)) - 1
    for step in range(lo, hi + 1):
        if qs_a[step - first_a] != qs_b[step - first_b]:
            return step
    return None


def parse_proof(record_a: bytes, record_b: bytes, max_updates: int) -> tuple:
    """(pub, step, Record a, Record b) of a claimed proof, no crypto; WireError if it cannot be one."""
    a, b = decode_half(record_a), decode_half(record_b)
    if a[0] is None or a[0] != b[0]:
        raise WireError("malformed")   # a proof names its key, the same in both
    for _, _, qs, _ in (a, b):
        if len(qs) > max_updates or 0x80 in qs:
            raise WireError("malformed")
    step = first_conflict(a[1], a[2], b[1], b[2])
    if step is None:
        raise WireError("malformed")   # they agree where they overlap: no equivocation
    return a[0], step, a, b


class Equivocations:
    """The proofs a node holds and what they do to its Sync (protocol/sync.py)."""

    def __init__(self, config, session, store, book, influence, outbox, gossip_q, events, *,
                 exclude: Callable[[bytes, int, str], bool], news: Callable[[], None]):
        """What it reads: the store and Sync's book (whose `equivocating` flag it sets) and
        influence budget, the session that checks signatures; what it does through Sync:
        exclude() an origin (taking back its steps), news() for anti-entropy."""
        self._config, self._session, self._store = config, session, store
        self._book, self._influence = book, influence
        self._outbox, self._gossip_q, self._events = outbox, gossip_q, events
        self._exclude, self._news = exclude, news
        self.proofs: dict[bytes, Proof] = {}
        # conflicting records seen; proofs taken in (new, and already held)
        self.counters: dict = {"equivocations": 0, "equivocation_proofs": 0, "duplicate_proofs": 0}
        self._cursor = 0   # next origin whose recent records go to a diverged peer

    def load(self) -> None:
        """At start: the proofs the store kept (their signatures were checked when they came)."""
        stored = getattr(self._store, "proofs", None)
        for origin, (a, b) in (stored() if stored else {}).items():
            _, step, _, _ = parse_proof(a, b, 1 << 30)
            self.proofs[origin] = Proof(origin, step, *sorted((a, b)))
            self._influence.exclude(origin, step, REASON)

    def step_of(self, origin: bytes) -> int | None:
        p = self.proofs.get(origin)
        return p.step if p is not None else None

    # ------------------------------------------------------------ finding proofs
    def held_conflict(self, rec: Record) -> bytes | None:
        """A stored record of rec's origin that gives a step rec covers another q (no crypto)."""
        for canon in self._store.get(rec.origin, rec.first_step, 1 << 20):
            _, first, qs, _, _ = decode_any(canon)
            if first > rec.last_step:
                break
            if first_conflict(first, qs, rec.first_step, rec.qs) is not None:
                return canon
        return None

    def on_conflict(self, rec: Record, held: bytes) -> bool:
        """rec overlaps a record we hold (held, canonical); True if it is half of a proof
        (then handled), False if the two agree where they overlap (not a conflict)."""
        _, hfirst, hqs, _, _ = decode_any(held)
        step = first_conflict(hfirst, hqs, rec.first_step, rec.qs)
        if step is None:
            return False
        have = self.step_of(rec.origin)
        if have is not None and have <= step:
            return True   # proven already (no crypto): a diverged peer's records come again
        # A member reaches here only vouched for by a verified closer (sync._commit).
        if rec.sig is not None and not self._session.verify_record(rec):
            raise WireError("bad_signature")
        halves = self.signed_half(rec.origin, held), self.signed_half(rec.origin, rec.canonical())
        if None in halves:
            return True   # a member whose closer is no longer held: not provable here, not taken
        self._book.state(rec.origin).equivocating = True
        if self.apply(Proof(rec.origin, step, *sorted(halves))):
            self.counters["equivocations"] += 1
            self._events.emit(EquivocationDetected(rec.origin, rec.first_step, rec.last_step,
                                                       *halves))
        return True

    def signed_half(self, origin: bytes, canon: bytes) -> bytes | None:
        """canon itself if signed; a member bundled with the closer that vouches for it (found
        among the held and stored records after it), or None if that closer is not here."""
        pub, first, qs, sig, _ = decode_any(canon)
        if sig is not None:
            return canon
        h = member_hash(self._config.swarm_id, origin, first, qs)
        st = self._book.state(origin)
        if h in st.commits:
            return bundle(canon, st.commits[h].canonical())
        after = first + len(qs)
        found = [r.canonical() for r in st.pending.values() if r.hashes]
        found += [held[2] for f, held in st.recent.items() if f >= after]
        found += self._store.get(origin, after, 1 << 16)
        for c in found:
            closer = decode_any(c)
            if closer[3] is not None and h in closer[4]:
                return bundle(canon, c)
        return None

    def on_proof(self, record_a: bytes, record_b: bytes) -> None:
        """A PROOF gossip item: checked (both signatures, same admitted key) unless we
        already hold one for that origin at or below its step."""
        pub, step, a, b = parse_proof(record_a, record_b, self._config.max_record_updates)
        origin = self._session.origin_id(pub)
        have = self.step_of(origin)
        if have is not None and have <= step:
            self.counters["duplicate_proofs"] += 1
            return
        if not self._session.admitted(pub):
            raise WireError("not_admitted")
        for _, first, qs, ((_, cfirst, cqs, csig, chashes), is_member) in (a, b):
            if not self._session.verify_record(Record(pub, origin, cfirst, cqs, csig, chashes)):
                raise WireError("bad_signature")
            if is_member and member_hash(self._config.swarm_id, origin, first, qs) not in chashes:
                raise WireError("bad_signature")
        self.apply(Proof(origin, step, *sorted((record_a, record_b))))

    # ------------------------------------------------------------ the rule
    def apply(self, proof: Proof) -> bool:
        """Hold proof if it is the origin's lowest; exclude the origin from its step on
        (taking back delivered steps), store and spread it.  True if it was news."""
        origin, step = proof.origin, proof.step
        have = self.step_of(origin)
        if have is not None and have <= step:
            return False
        self.proofs[origin] = proof
        self.counters["equivocation_proofs"] += 1
        add = getattr(self._store, "add_proof", None)
        if add is not None:   # durable before OriginExcluded reaches the shell
            add(origin, step, proof.record_a, proof.record_b)
        self._exclude(origin, step, REASON)
        self._gossip_q.push(("proof", origin), encode_proof(proof.record_a, proof.record_b))
        self._news()
        return True

    # ------------------------------------------------------------ spreading
    def nudge(self, m, theirs: dict) -> None:
        """m's VECTOR lists origins at or beyond a step we hold a proof for: m lacks it."""
        items = [encode_proof(p.record_a, p.record_b) for o, p in self.proofs.items()
                 if theirs.get(o, 0) >= p.step]
        if items:
            self._outbox.send(Push(), m, items[:4])

    def on_diverged(self, m) -> None:
        """Same vv, other weights: send m our most recent records of a few origins, newest
        first, as many origins as pull_serve_bytes holds, the next ones next time.  The cursor
        moves past the origins that went (not a fixed stride: with fewer origins than the
        stride, or an answer full before the last one, a fixed stride came back to the same
        origins every time and the conflicting one was never sent)."""
        origins = sorted(o for o, st in self._book.origins.items() if st.recent)
        if not origins:
            return
        out, left, went = [], self._config.pull_serve_bytes, 0
        for i in range(min(DIVERGED_ORIGINS, len(origins))):
            st = self._book.origins[origins[(self._cursor + i) % len(origins)]]
            recs = [packb(st.recent[first][2]) for first in reversed(st.recent_order)]
            size = sum(map(len, recs))
            if out and size > left:
                break
            out.extend(recs)
            left -= size
            went += 1
        self._cursor = (self._cursor + went) % len(origins)
        self._outbox.send_records(m, out, self._config.pull_serve_bytes)

