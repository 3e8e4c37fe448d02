"""Session: this node's side of authentication: certificates, pair keys, MACs, replay windows.

Every datagram except JOIN carries a MAC under a key the two nodes derive from each
other's certificates (static-static X25519; docs/protocol.md, "Identity and keys"), and a
counter that a per-sender replay window accepts once.  Incoming, `authenticate` checks the
certificate (if one is attached), the MAC and the counter *without changing anything*,
and `accept` records the datagram as seen once its body has parsed: so a forged, replayed
or garbled datagram leaves no trace.  Outgoing, `seal` frames and MACs a body under the
next counter.  The per-peer halves (pair key, replay window, whether the peer holds our
certificate) live on the peer's Member; this object holds ours and the rules.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from .amendments import Amendments
from .config import ProtocolConfig
from .identity import (SIG_SIZE, CryptoCache, Identity, cert_message, key_work, mac, make_cert, node_id_of,
                       pair_mac_key, parse_cert)
from .records import Record, TokenBucket, batch_message, member_hash
from .replay_window import ReplayWindow
from .wire import JOIN_MIN_SIZE, Header, MessageType, WireError, pack_header


@dataclass(frozen=True)
class Cert:
    """A node certificate whose admission and signature have been checked."""
    node_id: bytes
    pub: bytes          # Ed25519 identity key
    xpub: bytes         # X25519 session key of this generation
    generation: int
    incarnation: int
    raw: bytes          # the 140 signed bytes, as gossiped


@dataclass(frozen=True)
class Authenticated:
    """What authenticate() established about a datagram, for accept() to commit."""
    cert: Cert | None       # the certificate it carried, if any
    key: bytes              # the pair key its MAC verified under
    window: ReplayWindow    # the window its counter passed (a fresh one for a new session)
    new_session: bool       # the sender is new to us, or this is its first datagram of a new generation


class Session:
    def __init__(self, identity: Identity, config: ProtocolConfig, *, generation: int,
                 crypto: CryptoCache, now: float, amendments: Amendments | None = None):
        self.identity = identity
        self.node_id = identity.node_id
        self.pub = identity.public_bytes()
        self.generation = generation
        self.incarnation = 0
        self.counter = 0               # of the last datagram sealed; the receiver's replay window
        self.nat = 0                   # our NatKind, in every header (protocol/nat.py sets it)
        self.crypto = crypto
        self._config = config
        self._amendments = amendments if amendments is not None else Amendments(config, crypto)
        self._worked: set[bytes] = set()   # keys whose work was checked (open swarms with work bits)
        self._swarm = config.swarm_id
        self._tag = config.swarm_tag
        self._version = config.protocol_version
        # A fresh X25519 key per generation: datagrams of an earlier run cannot be replayed.
        self._xkey = identity.session_key(config.swarm_id, generation)
        self.xpub = self._xkey.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
        self.cert = make_cert(identity, self._swarm, self.xpub, generation, self.incarnation)
        # Unknown certificates cost an Ed25519 verification each: a JOIN flood is capped here.
        self._cert_budget = TokenBucket(config.cert_verifies_per_s, 2 * config.cert_verifies_per_s, now)
        self._ids: dict[bytes, bytes] = {self.pub: self.node_id}

    # ================================================================ peers' keys
    def origin_id(self, pub: bytes) -> bytes:
        """node_id_of(pub), memoised: every record and certificate names its key."""
        nid = self._ids.get(pub)
        if nid is None:
            if len(self._ids) > 4 * self._config.max_peers + 1024:
                self._ids.clear()
                self._ids[self.pub] = self.node_id
            nid = self._ids[pub] = node_id_of(pub)
        return nid

    def admitted(self, pub: bytes) -> bool:
        """A key whose records are taken: open admission (with the key's work, if the genesis
        asks for some), a genesis member, or admitted by an amendment (a revoked key's records
        stay taken below its step: Sync's exclusion cuts)."""
        cfg = self._config
        if cfg.admission == "open" and (cfg.admission_work_bits == 0 or pub in self._worked
                                        or self._has_work(pub)):
            return True
        return pub in cfg.members or self._amendments.admits(pub)

    def _has_work(self, pub: bytes) -> bool:
        if key_work(self._swarm, pub) < self._config.admission_work_bits:
            return False
        if len(self._worked) > 4 * self._config.max_peers + 1024:
            self._worked.clear()
        self._worked.add(pub)
        return True

    def check_cert(self, raw: bytes, expect_id: bytes, now: float) -> Cert:
        """Admission, then the signature (cached, within the verification budget)."""
        pub, xpub, gen, inc, sig = parse_cert(raw)
        nid = self.origin_id(pub)
        if nid != expect_id:
            raise WireError("bad_signature")
        if not self.admitted(pub) or self._amendments.refuses(pub):
            raise WireError("not_admitted")
        self._verify_within_budget(pub, sig, cert_message(self._swarm, pub, xpub, gen, inc), now)
        return Cert(nid, pub, xpub, gen, inc, raw)

    def _verify_within_budget(self, pub: bytes, sig: bytes, msg: bytes, now: float) -> None:
        if not self.crypto.is_cached(pub, sig, msg) and not self._cert_budget.take(1, now):
            raise WireError("rate_limited")
        if not self.crypto.verify(pub, sig, msg):
            raise WireError("bad_signature")

    def pair_key(self, xpub: bytes) -> bytes:
        """The MAC key we share with the holder of session key xpub."""
        shared = self.crypto.pair_secret(self._xkey, self.xpub, xpub)
        if shared is None:
            raise WireError("bad_signature")
        return pair_mac_key(self._swarm, shared, self.xpub, xpub)

    def ensure_key(self, m) -> bool:
        """Give member m its pair key if it has none yet; False if its session key is unusable."""
        if m.channel.mac_key is None:
            try:
                m.channel.mac_key = self.pair_key(m.xpub)
            except WireError:
                return False
        return True

    # ================================================================ incoming
    def authenticate(self, h: Header, m, now: float) -> Authenticated:
        """Certificate (if attached), MAC and replay window of a datagram from member m
        (None: unknown sender).  Raises WireError; changes no member."""
        cert = None
        if h.cert is not None:
            cert = self.check_cert(h.cert, h.sender, now)
            if m is not None and (cert.generation < m.generation
                                  or cert.generation == m.generation and cert.xpub != m.xpub):
                raise WireError("stale_generation")
            if m is not None and cert.generation == m.generation and m.channel.mac_key:
                key = m.channel.mac_key
            else:
                key = self.pair_key(cert.xpub)
        else:
            if m is None or m.channel.mac_key is None and not self.ensure_key(m):
                raise WireError("unknown_sender")
            key = m.channel.mac_key
        if not hmac.compare_digest(mac(key, h.signed), h.mac):
            raise WireError("bad_mac")
        new_session = m is None or (cert is not None and cert.generation != m.generation)
        window = ReplayWindow() if new_session else m.channel.window
        if not window.check(h.counter):
            raise WireError("replayed")
        return Authenticated(cert, key, window, new_session)

    def accept(self, m, auth: Authenticated, counter: int) -> None:
        """The datagram parsed: its counter is used up, and member m's session is the one it proved."""
        if auth.new_session:
            m.channel.window = auth.window
        m.channel.mac_key = auth.key
        m.channel.window.accept(counter)
        m.channel.confirmed = True       # a valid MAC proves it holds our certificate

    def joined(self, m, key: bytes) -> None:
        """m's JOIN verified under key: its channel's key, if it has none (a new member, or a
        new session of a known one)."""
        if m.channel.mac_key is None:
            m.channel.mac_key = key

    def unconfirm(self, m) -> None:
        """Our certificate changed (a refutation): m must be sent it again."""
        m.channel.confirmed = False

    def verify_join(self, h: Header, now: float) -> Cert:
        """A JOIN has no MAC (the joiner lacks our key): its certificate's key signs it whole."""
        cert = self.check_cert(h.cert, h.sender, now)
        self._verify_within_budget(cert.pub, h.mac, h.signed, now)
        return cert

    # ================================================================ outgoing
    def seal(self, mtype: MessageType, key: bytes, body: bytes, with_cert: bool) -> bytes:
        """Header (with our certificate if asked), body and MAC under the next counter."""
        self.counter += 1
        data = pack_header(self._version, self._tag, mtype, self.node_id, self.counter,
                           self.cert if with_cert else None, self.nat) + body
        return data + mac(key, data)

    def join_datagram(self) -> bytes:
        """JOIN: our certificate, zero padding (its HELLO answer must not be larger), our signature."""
        self.counter += 1
        head = pack_header(self._version, self._tag, MessageType.JOIN, self.node_id, self.counter,
                           self.cert, self.nat)
        data = head + bytes(JOIN_MIN_SIZE - len(head) - SIG_SIZE)
        return data + self.identity.sign(data)

    def refute(self, accused_incarnation: int) -> None:
        """Someone holds us suspect or dead at accused_incarnation: outbid it with a new certificate."""
        self.incarnation = accused_incarnation + 1
        self.cert = make_cert(self.identity, self._swarm, self.xpub, self.generation, self.incarnation)

    # ================================================================ signed statements
    def sign_record(self, first_step: int, qs: bytes, hashes: tuple = ()) -> bytes:
        """A record's signature; with member hashes, a batch closer's (protocol/records.py)."""
        return self.identity.sign(batch_message(self._swarm, self.node_id, first_step, qs, hashes))

    def verify_record(self, rec: Record) -> bool:
        """A signed record or closer; a member (no signature) verifies by member_hash instead."""
        if rec.sig is None:
            return False
        return self.crypto.verify(rec.pub, rec.sig,
                                  batch_message(self._swarm, rec.origin, rec.first_step, rec.qs,
                                                rec.hashes))

    def member_hash(self, rec: Record) -> bytes:
        return member_hash(self._swarm, rec.origin, rec.first_step, rec.qs)

    def leave_message(self, node_id: bytes, generation: int, incarnation: int) -> bytes:
        return (b"onebyte-leave-v1" + self._swarm + node_id + generation.to_bytes(8, "little")
                + incarnation.to_bytes(4, "little"))

    def sign_leave(self) -> bytes:
        return self.identity.sign(self.leave_message(self.node_id, self.generation, self.incarnation))

    def verify_leave(self, pub: bytes, node_id: bytes, generation: int, incarnation: int,
                     sig: bytes) -> bool:
        return self.crypto.verify(pub, sig, self.leave_message(node_id, generation, incarnation))
