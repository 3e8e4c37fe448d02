"""Outbox: datagrams framed, sealed and queued for the driver, with gossip piggybacked.

Every authenticated datagram we send may carry membership gossip in the room its own
payload and records leave (as memberlist does): that is how most membership news
travels, at no extra datagram.
"""
from __future__ import annotations

from collections.abc import Iterable

from .config import ProtocolConfig
from .dissemination import TransmitLimitedQueue
from .identity import CERT_SIZE
from .membership import Member, Membership
from .session import Session
from .messages import Message, Records
from .wire import BODY_OVERHEAD, HEADER_SIZE, MAC_SIZE, pack_body


class Outbox:
    def __init__(self, config: ProtocolConfig, session: Session, members: Membership,
                 gossip_q: TransmitLimitedQueue):
        self.config = config
        self.session = session
        self.members = members
        self.gossip_q = gossip_q
        self.datagrams: list = []   # (bytes, addr), until the driver takes them
        self.nat = None             # protocol/nat.py: relays datagrams to members behind NATs
        # Serving.sent: what we send a member earns us credit there (it decides how much a
        # PULL of ours must be padded); assigned by the engine, as nat is
        self.on_sent = None

    def budget(self, m: Member, payload_len: int) -> int:
        """Bytes left for gossip and records in a datagram to m with this payload."""
        cert = 0 if m.channel.confirmed else CERT_SIZE
        relay = self.nat.wrap_overhead(m) if self.nat is not None else 0
        return (self.config.max_datagram - HEADER_SIZE - cert - MAC_SIZE - BODY_OVERHEAD - relay
                - payload_len)

    def send(self, message: Message, m: Member, gossip: list | None = None,
             records: list | None = None, *, addr=None, cert: bool = False,
             piggyback: bool = True) -> None:
        """Queue one datagram carrying message to member m (at addr if given).  gossip and
        records are packed already; gossip=None fills the room left with queued gossip if
        piggyback.  Our certificate goes along when asked (cert) and until m has shown it
        holds it."""
        if not self.session.ensure_key(m):
            return
        payload = message.encode()
        if gossip is None:
            gossip = []
            if piggyback and len(self.gossip_q):
                budget = self.budget(m, len(payload)) - sum(len(r) + 3 for r in records or ())
                limit = self.config.transmit_limit(self.members.live_count() + 1)
                gossip = self.gossip_q.take(budget, limit, 0, to=m)
        body = pack_body(payload, gossip, records or [])
        data = self.session.seal(message.TYPE, m.channel.mac_key, body, with_cert=cert or not m.channel.confirmed)
        if self.on_sent is not None:
            self.on_sent(m, addr or m.addr, len(data))
        if addr is None and m.path.relay is not None and self.nat is not None and self.nat.wrap(m, data):
            return   # sealed for m end to end, carried by its relay
        self.datagrams.append((data, addr or m.addr))

    def send_records(self, m: Member, packed: Iterable[bytes], limit: float = float("inf"),
                     last: Records = Records()) -> None:
        """RECORDS datagrams to m, each as full as its budget allows, until `limit` bytes of
        records went out; a record larger than a whole datagram's room is skipped.  The last
        datagram is `last` (Serving.serve: it says what more the server holds)."""
        batch, budget = [], self.budget(m, len(last.encode()))
        room = budget
        for rec in packed:
            if limit <= 0:
                break
            if len(rec) > budget:
                continue
            if len(rec) > room:
                self.send(Records(), m, [], batch)
                batch, room = [], budget
            batch.append(rec)
            room -= len(rec)
            limit -= len(rec)
        if batch:
            self.send(last, m, [], batch)

    def send_join(self, addr) -> None:
        self.datagrams.append((self.session.join_datagram(), addr))

    def drain(self) -> list:
        out, self.datagrams = self.datagrams, []
        return out
