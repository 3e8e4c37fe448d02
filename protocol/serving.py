"""Serving: records out of our store for a peer that lacks them (its PULL, or the gaps its
VECTOR shows), each answer bounded at pull_serve_bytes; and pulling on from such answers.

An answer that stops short of what we hold says so on its last datagram (the [origin,
step] entries we hold beyond it), and the peer pulls on at once (Serving.answered): a node
far behind catches up at one request per round trip, while no single request makes us
send more than the bound.  Batches go whole: a member record travels with the closer
whose signature vouches for it.

No member can make us an amplifier: what we serve a member is paid for by what it sent us
(Credit), at most serve_amplification times its bytes, and only at the address they came
from: credit earned at one address is not spent at another, so a member that spoofs a
third party's address as its source reflects at most that factor onto it.  An honest puller
pads its PULL so that one request still earns a whole answer (as a QUIC client pads its
Initial), but only by what its credit at the server lacks: it keeps its own reckoning of
that credit (HELD_SHARE of what it sent there, less what was served to it), so a node that
has been talking to its server sends a bare PULL, and one just arrived pays in full.
"""
from __future__ import annotations

import math
from typing import Callable

from . import messages as msg
from .membership import Member
from .messages import MAX_PULL_ENTRIES
from .records import REC_MEMBER, decode_any, encode_any
from .identity import CERT_SIZE
from .wire import BODY_OVERHEAD, HEADER_SIZE, MAC_SIZE, MessageType, packb

# Of the bytes we sent a server, the share we count as credit held there: datagrams get
# lost, and a reckoning too high only costs an answer cut short (its rest is pulled, padded).
HELD_SHARE = 0.5
RECORD_OVERHEAD = 112    # a record's bytes besides its q: signature 64, origin key 32, steps, framing
RECORD_UPDATES = 16      # updates per record, as a PULL's padding reckons (a record sealed by its
                         # linger holds fewer than updates_per_record)


class Credit:
    """Per member: the address its credit was earned at, and the bytes we may still serve it."""

    def __init__(self, factor: float, cap: float):
        self.factor, self.cap = factor, cap
        self.by_member: dict[bytes, tuple] = {}   # node id -> (addr, bytes)

    def earn(self, node_id: bytes, addr, size: int) -> None:
        """An authenticated datagram of `size` bytes from node_id at addr."""
        at, have = self.by_member.get(node_id, (addr, 0.0))
        if at != addr:
            have = 0.0   # a new address starts from nothing (its first datagram still earns)
        self.by_member[node_id] = (addr, min(self.cap, have + self.factor * size))

    def left(self, node_id: bytes, addr) -> float:
        at, have = self.by_member.get(node_id, (None, 0.0))
        return have if at == addr else 0.0

    def spend(self, node_id: bytes, size: int) -> None:
        at, have = self.by_member.get(node_id, (None, 0.0))
        self.by_member[node_id] = (at, max(0.0, have - size))

    def forget(self, node_id: bytes) -> None:
        self.by_member.pop(node_id, None)


class Serving:
    def __init__(self, config, node_id: bytes, outbox, store, book, influence, *,
                 news: Callable[[], None], pull: Callable[[Member, dict, float], None]):
        """What it reads: the store, book and influence budget it serves from (Sync owns them),
        the outbox it answers through; what it asks of Sync: news() after a repair delivered,
        pull() for the rest of a cut-short answer."""
        self.config = config
        self._node_id, self._outbox, self._store = node_id, outbox, store
        self._book, self._influence = book, influence
        self._news, self._pull = news, pull
        self.fresh_from: set = set()    # servers whose answers brought news since our last PULL
        # answers cut short by a member's credit; bytes of records served (datagrams whole)
        self.counters: dict = {"serve_credit_cuts": 0, "records_served_bytes": 0}
        self.credit = Credit(self.config.serve_amplification, 2 * self.config.pull_serve_bytes)
        # our credit at each server, as we reckon it (the server's own ledger is `credit`
        # there): it decides how much our PULL to it is padded
        self.held = Credit(HELD_SHARE * self.config.serve_amplification, 2 * self.config.pull_serve_bytes)

    # ================================================================ credit, both ways
    def received(self, m: Member, addr, size: int, kind: MessageType) -> None:
        """An authenticated datagram of `size` bytes from m at addr: it earns m credit here;
        a RECORDS datagram spent as much of ours there."""
        self.credit.earn(m.node_id, addr, size)
        if kind == MessageType.RECORDS:
            self.held.spend(m.node_id, size)

    def sent(self, m: Member, addr, size: int) -> None:
        """Our datagram of `size` bytes to m at addr: it earns us credit there."""
        self.held.earn(m.node_id, addr, size)

    def pull_for(self, m: Member, spans) -> msg.Pull:
        """A PULL to m for spans [(origin, from step, step m holds)], padded for the answer we
        expect: the updates, and RECORD_OVERHEAD per record of about RECORD_UPDATES (too
        little: the answer is cut short by credit and its rest pulled at once, padded)."""
        answer = sum(n + RECORD_OVERHEAD * -(-n // RECORD_UPDATES)
                     for n in (to - first + 1 for _, first, to in spans))
        return msg.Pull.padded([(o, first) for o, first, _ in spans], self.pull_size(m, answer))

    def pull_size(self, m: Member, answer: float | None = None) -> int:
        """The datagram size our PULL to m is padded to: enough that the credit we hold at m
        plus the PULL's own pays for the answer (answer: the bytes of records we expect, at
        most pull_serve_bytes; its framing counted); 0: no padding."""
        room = self._outbox.budget(m, 1)
        frame = HEADER_SIZE + MAC_SIZE + BODY_OVERHEAD + (0 if m.channel.confirmed else CERT_SIZE)
        want = self.config.pull_serve_bytes if answer is None else min(answer, self.config.pull_serve_bytes)
        whole = want * (room + frame) / room + frame
        short = whole - self.held.left(m.node_id, m.addr)
        cert = 0 if m.channel.confirmed else CERT_SIZE   # goes along, outside the padding
        size = math.ceil(short / self.config.serve_amplification) + 8   # Pull.padded is +-3 bytes
        return max(0, min(self.config.max_datagram - cert - 8, size))

    # ================================================================ pulling on
    def answered(self, m: Member, more: tuple | None, delivered: bool, took_new: bool, now: float) -> None:
        """A RECORDS datagram's records are in.  more: what its server holds beyond them (on
        the last datagram of an answer that stopped at pull_serve_bytes); delivered: updates
        we lacked were delivered; took_new: records new to us came (delivered, or held beyond
        a gap).

        A repair that delivered is news: we were behind and may still be, so anti-entropy
        compares again soon instead of backing off.  The rest of a cut-short answer is pulled
        at once, one request per round trip, instead of one per anti-entropy round: a node
        far behind (a healed partition) catches up at the link's pace.  Only if m's RECORDS
        since our last PULL to it brought records new to us, so records we refuse (rate cap,
        buffer) or hold already never keep a loop going; anti-entropy covers those.  Counted
        per answer, not per datagram: its datagrams arrive in any order, and one that fills a
        gap may leave the last one nothing new."""
        if delivered:
            self._news()
        if took_new and len(self.fresh_from) < 4 * MAX_PULL_ENTRIES:
            self.fresh_from.add(m.node_id)
        if more is not None and m.node_id in self.fresh_from:
            self._pull(m, dict(more), now)

    # ================================================================ serving

    def on_pull(self, m: Member, pull: msg.Pull, now: float, via: Member | None = None) -> None:
        # (its padding paid for the answer: Credit)
        self.serve(m, [(origin, max(1, step)) for origin, step in pull.wants])

    def serve(self, m: Member, wants: list) -> None:
        """Send records from the store covering each (origin, from_step), bounded in bytes by
        pull_serve_bytes and by m's credit (whole datagrams counted); the last datagram says
        what more we hold where the bound cut the answer short."""
        credit = self.credit.left(m.node_id, m.addr)
        frame = HEADER_SIZE + MAC_SIZE + BODY_OVERHEAD + (0 if m.channel.confirmed else CERT_SIZE)
        room = self._outbox.budget(m, 1)
        # records that fit the credit once every datagram's framing is paid for
        limit = min(self.config.pull_serve_bytes, (credit - frame) * room / (room + frame))
        packed, more = self.served(m, wants, limit)
        c, out = self.counters, self._outbox.datagrams
        if limit < self.config.pull_serve_bytes and more:
            c["serve_credit_cuts"] += 1
        before = len(out)
        self._outbox.send_records(m, packed, last=msg.Records(tuple((o, s) for o, s in more) or None))
        size = sum(len(d) for d, _ in out[before:])
        self.credit.spend(m.node_id, size)
        c["records_served_bytes"] += size

    def served(self, m: Member, wants: list, limit: float | None = None) -> tuple:
        """(the packed records answering wants, in order, up to `limit` bytes (default
        pull_serve_bytes) counted per origin (a batch goes whole, so an origin's records are
        never cut short); [origin, step] for each wanted origin we hold further than they reach)."""
        left = self.config.pull_serve_bytes if limit is None else limit
        budget = self._outbox.budget(m, 1)
        out, more = [], []
        for origin, from_step in wants:
            cut = self._influence.excluded_from(origin) or 1 << 62
            held = min(self._book.contiguous(origin), cut - 1)
            upto = from_step - 1
            if left > 0:
                batch, size = [], 0   # a batch (members and their closer) goes whole, or not at all
                for canon in self._whole_batches(origin, from_step, left):
                    _, first, qs, sig, hashes = decode_any(canon)
                    if first >= cut:
                        break   # wholly excluded: never served
                    member = canon[0] & REC_MEMBER
                    if origin == self._node_id:
                        canon = encode_any(None, first, qs, sig, hashes)   # the sender is the origin
                    packed = packb(canon)
                    batch.append((packed, first + len(qs) - 1))
                    size += len(packed) if len(packed) <= budget else 0
                    if member:
                        continue
                    if size > left:
                        break   # what is left of the credit or the bound: more in a later answer
                    for p, last in batch:
                        out.append(p)
                        if len(p) <= budget:   # (a record larger than a datagram is never sent)
                            upto = max(upto, last)
                    left -= size
                    batch, size = [], 0
            if held > upto and len(more) < MAX_PULL_ENTRIES:
                more.append([origin, held])
        return out, more

    def _whole_batches(self, origin: bytes, from_step: int, limit: int) -> list:
        """Stored records from from_step on, up to limit bytes, then on to the next signed
        record: a member is served with the closer that vouches for it (a batch goes whole)."""
        store = self._store
        recs = store.get(origin, from_step, limit)
        while recs and recs[-1][0] & REC_MEMBER:
            _, first, qs, _, _ = decode_any(recs[-1])
            more = store.get(origin, first + len(qs), 1)
            if not more or decode_any(more[0])[1] != first + len(qs):
                break
            recs.append(more[0])
        return recs
