"""Peer exchange: PEERS answers, and certificates asked for after a TAG.

Relayed membership news travels as TAG items (protocol/wire.py, AliveTag): "I hold X's
certificate at (generation, incarnation)", some 40 bytes where the ALIVE item with its
140-byte certificate is ~180.  Most receivers hold that certificate already (in a small
swarm every member sends its own with its first datagram to each peer); one that lacks it
asks the sender for it in a PEERS_REQ naming X, and the PEERS answer carries the ALIVE item.
So a certificate crosses about one link per node that needs it, not `limit` per relay.

A PEERS_REQ with the asker's live-member counts per bucket (or nil) is the periodic peer
exchange: TAGs of up to PEERS_PER_ANSWER live members the asker is not known to hold, then of
members it may have missed (docs/protocol.md, "Membership").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .dissemination import note_held
from .membership import Member, Membership
from .outbox import Outbox
from .identity import CERT_SIZE
from . import messages as msg
from .messages import MAX_ASKED
from .wire import AliveTag, alive_tag, encode_alive, encode_alive_tag

PEERS_PER_ANSWER = 32    # TAG items in a periodic PEERS answer, as many as fit (~26): a
                         # newcomer to a small swarm learns every member from its first answer
ASK_AGAIN_S = 1.0        # a certificate asked for and not come is asked for again, of the next
ASK_TRIES = 4            # holder that told us of it (lossy links), up to this many times
MAX_WANTS = 1024
BRINGS_OWN_S = 5.0       # in a small swarm without NATs, a member told of by gossip (a newcomer)
                         # is asked for after this long: it sends its certificate with its first
                         # datagram to each member (its records go to every one), so most never are


@dataclass
class Want:
    """A certificate we lack: its version, who told us they hold it, when we ask next."""
    version: tuple               # (generation, incarnation)
    holders: list                # node ids of the members whose TAG told of it, oldest first
    next_ask: float
    tries: int = 0


class CertExchange:
    def __init__(self, members: Membership, outbox: Outbox, rng, node_id: bytes, *,
                 everyone_talks: Callable[[], bool] = lambda: False):
        self.members = members
        self.outbox = outbox
        self.rng = rng
        self.node_id = node_id
        self.wanted: dict[bytes, Want] = {}    # node id -> the certificate of it we lack
        self.wants: list[bytes] = []           # to ask the sender of the datagram being handled
        self.everyone_talks = everyone_talks   # Sync: a small swarm without NATs (direct push)

    # ================================================================ receiving TAG items
    def on_tag(self, sender: Member, item: AliveTag, now: float, listed: bool = False) -> None:
        """sender holds item.node_id's certificate at (generation, incarnation): note it, and
        want it if it is newer than ours (asked for once this datagram is handled, see ask).
        listed: the TAG came in a PEERS answer (a list we asked for, not news of a join)."""
        nid = item.node_id
        if nid == self.node_id:
            return
        m = self.members.get(nid)
        theirs = (item.generation, item.incarnation)
        if m is not None and theirs <= (m.generation, m.incarnation):
            if theirs == (m.generation, m.incarnation):
                note_held(sender, nid, alive_tag(m.cert, item.nat))
                self.members.note_version(m, item.version, direct=False)
            return
        want = self.wanted.get(nid)
        if want is None or theirs > want.version:
            if want is None and len(self.wanted) >= MAX_WANTS:
                return
            # A newcomer told of by gossip brings its certificate itself where everyone talks
            # to everyone; one listed in a PEERS answer (what a newcomer asks to learn the
            # swarm from), or a new incarnation of a member (a refutation), is asked for now.
            brings_own = m is None and not listed and self.everyone_talks()
            want = self.wanted[nid] = Want(theirs, [], now + BRINGS_OWN_S if brings_own else now)
        if theirs == want.version and sender.node_id not in want.holders:
            want.holders.append(sender.node_id)
        if now >= want.next_ask and len(self.wants) < MAX_ASKED:
            self._asking(want, now)
            self.wants.append(nid)

    def _asking(self, want: Want, now: float) -> None:
        want.tries += 1
        want.next_ask = now + ASK_AGAIN_S

    def ask(self, sender: Member, now: float) -> None:
        """Ask the sender of the datagram just handled for the certificates its TAGs told of."""
        if self.wants:
            wants, self.wants = self.wants, []
            self.outbox.send(msg.PeersReq(asked=tuple(wants)), sender)

    def retry(self, now: float) -> None:
        """Certificates asked for that did not come: ask the next holder, or give up (a
        later TAG, or peer exchange, brings them).  Called once per protocol period."""
        by_holder: dict[bytes, list] = {}
        for nid, want in list(self.wanted.items()):
            m = self.members.get(nid)
            if m is not None and (m.generation, m.incarnation) >= want.version:
                del self.wanted[nid]   # it came
            elif now >= want.next_ask:
                if want.tries >= ASK_TRIES:
                    del self.wanted[nid]
                    continue
                holder = want.holders[want.tries % len(want.holders)]
                if len(by_holder.setdefault(holder, [])) < MAX_ASKED:
                    self._asking(want, now)
                    by_holder[holder].append(nid)
        for holder, nids in by_holder.items():
            m = self.members.get(holder)
            if m is not None and m.live and nids:
                self.outbox.send(msg.PeersReq(asked=tuple(nids)), m)

    # ================================================================ asking
    def ask_peers(self, m: Member) -> None:
        """Peer exchange: a PEERS_REQ with our live-member counts per bucket."""
        self.outbox.send(msg.PeersReq(self.members.bucket_counts(self.node_id)), m)

    # ================================================================ answering PEERS_REQ
    def on_peers_req(self, m: Member, req: msg.PeersReq, now: float, via: Member | None = None) -> None:
        """Counts (32-byte bin, or nil): TAG items of a sample of live members (the asker asks
        for the certificates it lacks), none if its counts equal ours; [node ids]: the ALIVE
        items of those it names (live members we hold; the rest is skipped).  One datagram,
        as many as fit."""
        if req.asked is not None:
            self._answer_asked(m, req.asked)
            return
        if (req.counts is not None and self.members.reachable is None
                and req.counts == self.members.bucket_counts(self.node_id)):
            # As many live members as we hold in every bucket: our views agree.  (With NATs
            # about, views that count alike still differ in who reaches whom: answer.)
            return
        # Every live member, reachable by us or not: the asker may have (or make) a path.
        pool = self.members.to_exchange(m, req.counts, self.node_id, self.rng, PEERS_PER_ANSWER)
        self._answer(m, [encode_alive_tag(p.node_id, p.generation, p.incarnation, p.nat, p.version)
                         for p in pool])

    def _answer_asked(self, m: Member, asked: tuple) -> None:
        chosen = [p for p in map(self.members.get, dict.fromkeys(asked))
                  if p is not None and p is not m and p.live]
        items = []
        for peer in chosen:
            items.append(encode_alive(peer.cert, peer.addr, peer.nat, peer.version))
            note_held(m, peer.node_id, alive_tag(peer.cert, peer.nat))
        own = self.node_id in asked   # our own certificate rides in the header
        if items or own:
            self._answer(m, items, cert=own)

    def _answer(self, m: Member, items: list, cert: bool = False) -> None:
        """One PEERS datagram with as many of the items as fit."""
        out, budget = [], self.outbox.budget(m, 1) - (CERT_SIZE if cert and m.channel.confirmed else 0)
        for packed in items:
            if len(packed) > budget:
                break
            budget -= len(packed)
            out.append(packed)
        self.outbox.send(msg.Peers(), m, out, cert=cert)
