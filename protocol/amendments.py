"""Membership amendments: a swarm's members change by signed amendment, not by a new genesis.

A genesis may name an authority: `authority` keys and a threshold k (one admin key, or k of
n). An amendment is numbered 1, 2, ... and signed by at least k distinct authority keys over

    packb(["onebyte-amendment-v1", swarm_id, number, kind, key, step, new_key])

Kinds (append-only; wire.Amend is how one travels):
    ADMIT   key                  key becomes a member (its certificates and records are taken)
    REVOKE  key, step            the key's steps >= step are never delivered (taken back where
                                 applied, as an equivocation proof does: Engine.exclude) and
                                 its certificates are refused from then on
    ROTATE  key, step, new_key   REVOKE key from step and ADMIT new_key, in one amendment that
                                 both keys also sign (the link): neither holder is moved
                                 without its own signature. The old key's steps < step stay in
                                 every replica; the new key publishes its own steps from 1.

The rule, the same on every node whatever the arrival order: amendments take effect in
number order and only as a contiguous prefix 1..n; the members a node admits are a function
of the prefix it holds. An amendment beyond the prefix waits (at most MAX_AHEAD of them).
Two valid amendments with one number (an authority that signed twice): the one whose signed
body is lower bytewise is kept everywhere and the admitted keys are recomputed from the
prefix; an exclusion the other caused stays (exclusions only move down: influence.py).

How they spread: as GossipKind.AMEND items, piggybacked like membership gossip, when news,
and again every ANNOUNCE_S (a few per round, in turn), so a node that missed one, or joined
later, learns it from any peer. The driver's store keeps them (log entry kind 5), so a
restart starts from the same prefix.
"""
from __future__ import annotations

from enum import IntEnum

from .config import ProtocolConfig
from .identity import CryptoCache, Identity
from .wire import Amend, WireError, packb

FORMAT = "onebyte-amendment-v1"
LINK = "onebyte-rotate-v1"
MAX_AHEAD = 64        # amendments held beyond the applied prefix; further ones are dropped
ANNOUNCE_S = 10.0     # every this often, ANNOUNCE_EACH held amendments are gossiped again
ANNOUNCE_EACH = 4


class Refused(WireError):
    """An amendment not taken: .reason is the counted drop (a peer's), .why the sentence an
    operator who submitted it reads."""

    def __init__(self, reason: str, why: str):
        super().__init__(reason)
        self.why = why


class AmendKind(IntEnum):
    """Append-only: these numbers are wire format."""
    ADMIT = 0
    REVOKE = 1
    ROTATE = 2


def body(swarm_id: bytes, a: Amend) -> bytes:
    """What the authority signs: everything but the signatures."""
    return packb([FORMAT, swarm_id, a.number, a.kind, a.key, a.step, a.new_key])


def link_message(swarm_id: bytes, key: bytes, new_key: bytes, step: int) -> bytes:
    """What both keys of a rotation sign."""
    return packb([LINK, swarm_id, key, new_key, step])


def signed(a: Amend, authority: Identity, swarm_id: bytes) -> Amend:
    """a with authority's signature added (or replaced), signatures in key order."""
    pub = authority.public_bytes()
    sigs = dict(a.sigs)
    sigs[pub] = authority.sign(body(swarm_id, a))
    return Amend(a.number, a.kind, a.key, a.step, a.new_key, a.links, tuple(sorted(sigs.items())))


def rotation(number: int, old: Identity, new: Identity, step: int, swarm_id: bytes) -> Amend:
    """A ROTATE amendment with both keys' link signatures, not yet signed by the authority."""
    key, new_key = old.public_bytes(), new.public_bytes()
    link = link_message(swarm_id, key, new_key, step)
    return Amend(number, AmendKind.ROTATE, key, step, new_key, (old.sign(link), new.sign(link)))


def describe(a: Amend) -> str:
    kind = AmendKind(a.kind).name.lower() if a.kind in AmendKind._value2member_map_ else f"kind {a.kind}"
    what = {AmendKind.ADMIT: f"admit {a.key.hex()}",
            AmendKind.REVOKE: f"revoke {a.key.hex()} from step {a.step}",
            AmendKind.ROTATE: f"rotate {a.key.hex()} -> {a.new_key.hex()} from step {a.step}"}
    return f"#{a.number} " + what.get(a.kind, kind)


class Amendments:
    """The amendments this node holds and the membership they make. It alone writes them;
    the engine carries out what a newly effective one means (exclusion, gossip, storage)."""

    def __init__(self, config: ProtocolConfig, crypto: CryptoCache):
        self._config = config
        self._crypto = crypto
        self.held: dict[int, Amend] = {}       # number -> the amendment kept for that number
        self.applied = 0                       # amendments 1..applied are in effect
        self.admitted: set[bytes] = set()      # keys admitted by amendments 1..applied
        self.revoked: dict[bytes, int] = {}    # key -> its first step never delivered
        self._next_announce = 0                # cursor of the round-robin re-announcement
        self.counters = dict.fromkeys(("amendments_applied", "amendments_conflicting"), 0)

    # ------------------------------------------------------------ checks
    def problem(self, a: Amend) -> "Refused | None":
        """Why a is not a valid amendment of this swarm (None: it is), no state change."""
        cfg = self._config
        if not cfg.authority:
            return Refused("malformed", "this swarm's genesis names no authority")
        if a.kind not in AmendKind._value2member_map_:
            return Refused("malformed", f"unknown amendment kind {a.kind}")
        if a.kind == AmendKind.ADMIT and (a.step or a.new_key or a.links):
            return Refused("malformed", "an admit amendment carries a key only")
        if a.kind == AmendKind.REVOKE and (a.step < 1 or a.new_key or a.links):
            return Refused("malformed", "a revoke amendment carries a key and a step >= 1")
        if a.kind == AmendKind.ROTATE:
            if a.step < 1 or not a.new_key or a.new_key == a.key or len(a.links) != 2:
                return Refused("malformed", "a rotate amendment carries two keys, a step >= 1 and both keys' "
                               "link signatures")
            link = link_message(cfg.swarm_id, a.key, a.new_key, a.step)
            if not (self._crypto.verify(a.key, a.links[0], link) and self._crypto.verify(a.new_key, a.links[1], link)):
                return Refused("bad_signature", "a link signature of the rotation does not verify")
        msg = body(cfg.swarm_id, a)
        keys = [k for k, _ in a.sigs]
        if len(set(keys)) != len(keys):
            return Refused("malformed", "an authority key signs twice")
        valid = sum(1 for k, s in a.sigs if k in cfg.authority and self._crypto.verify(k, s, msg))
        if valid < cfg.authority_threshold:
            return Refused("bad_signature", f"{valid} valid authority signature(s), the genesis needs "
                           f"{cfg.authority_threshold}")
        return None

    # ------------------------------------------------------------ the rule
    def take(self, a: Amend) -> list[Amend]:
        """A verified-or-not amendment from a peer, the store or an operator: checked, held,
        and the ones that took effect because of it returned (in number order; empty when it
        was known or waits for a lower number). Raises Refused (a WireError) for an invalid one."""
        have = self.held.get(a.number)
        if have == a:
            return []
        if a.number > self.applied + MAX_AHEAD:
            raise Refused("buffer_full", f"amendment {a.number} is too far ahead of the {self.applied} in effect here")
        refused = self.problem(a)
        if refused is not None:
            raise refused
        if have is not None:
            mine, theirs = body(self._config.swarm_id, have), body(self._config.swarm_id, a)
            if mine == theirs:
                return []   # the same amendment under other signatures
            self.counters["amendments_conflicting"] += 1
            if mine < theirs:
                return []
        self.held[a.number] = a
        if have is not None and a.number <= self.applied:   # another winner inside the prefix
            self._recompute()
            return [a]
        fresh = []
        while self.applied + 1 in self.held:
            self.applied += 1
            self._effect(self.held[self.applied])
            fresh.append(self.held[self.applied])
        self.counters["amendments_applied"] += len(fresh)
        return fresh

    def _effect(self, a: Amend) -> None:
        if a.kind in (AmendKind.REVOKE, AmendKind.ROTATE):
            self.revoked[a.key] = min(a.step, self.revoked.get(a.key, a.step))
        if a.kind == AmendKind.ADMIT:
            self.admitted.add(a.key)
        if a.kind == AmendKind.ROTATE:
            self.admitted.add(a.new_key)

    def _recompute(self) -> None:
        self.admitted, self.revoked = set(), {}
        for n in range(1, self.applied + 1):
            self._effect(self.held[n])

    # ------------------------------------------------------------ what it means
    def admits(self, pub: bytes) -> bool:
        """A key an amendment admitted (its records are taken, below any revocation)."""
        return pub in self.admitted

    def refuses(self, pub: bytes) -> bool:
        """A revoked key: no certificate of it is accepted any more."""
        return pub in self.revoked

    def to_announce(self) -> list[Amend]:
        """The next few held amendments to gossip again, in turn."""
        numbers = sorted(self.held)
        if not numbers:
            return []
        out = [self.held[numbers[(self._next_announce + i) % len(numbers)]]
               for i in range(min(ANNOUNCE_EACH, len(numbers)))]
        self._next_announce = (self._next_announce + len(out)) % len(numbers)
        return out
