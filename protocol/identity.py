"""Identity (Ed25519), signed node certificates, and per-pair MAC keys.

A node id is blake2b(raw Ed25519 public key, digest_size=16).  Each engine run
(a "generation") has an X25519 session key derived from the identity key and
the generation number, published in a certificate signed by the identity key:

    cert = pub(32) | xpub(32) | generation(u64) | incarnation(u32) | sig(64)   (140 bytes)
    sig  = Ed25519(b"onebyte-cert-v1" | swarm_id | pub | xpub | generation | incarnation)

Two nodes that hold each other's certificates share a MAC key (static-static
X25519, then blake2b with the swarm id and both certificates' session keys),
so control datagrams cost one keyed blake2b (~2 us) instead of an Ed25519
signature (~30 us to sign, ~100 us to verify on this machine).  Only the first
contact with a certificate costs a signature verification, cached.
"""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives import serialization

CERT_SIZE = 140
SIG_SIZE = 64
NODE_ID_SIZE = 16
_CERT_BODY = struct.Struct("<32s32sQI")


def node_id_of(public_key: bytes) -> bytes:
    return hashlib.blake2b(public_key, digest_size=NODE_ID_SIZE).digest()


class Identity:
    """An Ed25519 key pair; node_id derived from the raw public key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.node_id = node_id_of(self._public)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "Identity":
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise ValueError("an Ed25519 private key is 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_seed(cls, seed: int) -> "Identity":
        """Deterministic identity for tests and the simulator (never for real nodes)."""
        return cls.from_private_bytes(hashlib.blake2b(b"onebyte-test-key" + seed.to_bytes(8, "little"),
                                                      digest_size=32).digest())

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())

    def public_bytes(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def session_key(self, swarm_id: bytes, generation: int) -> X25519PrivateKey:
        """Per-generation X25519 key: secret (derived from the identity key), fresh per boot."""
        seed = hashlib.blake2b(b"onebyte-x25519-v1" + swarm_id + generation.to_bytes(8, "little"),
                               key=self.private_bytes(), digest_size=32).digest()
        return X25519PrivateKey.from_private_bytes(seed)


def cert_message(swarm_id: bytes, pub: bytes, xpub: bytes, generation: int, incarnation: int) -> bytes:
    return b"onebyte-cert-v1" + swarm_id + _CERT_BODY.pack(pub, xpub, generation, incarnation)


def make_cert(identity: Identity, swarm_id: bytes, xpub: bytes, generation: int, incarnation: int) -> bytes:
    body = _CERT_BODY.pack(identity.public_bytes(), xpub, generation, incarnation)
    return body + identity.sign(b"onebyte-cert-v1" + swarm_id + body)


def parse_cert(cert: bytes) -> tuple:
    """(pub, xpub, generation, incarnation, sig); raises ValueError on a bad size."""
    if len(cert) != CERT_SIZE:
        raise ValueError("cert size")
    pub, xpub, gen, inc = _CERT_BODY.unpack_from(cert)
    return pub, xpub, gen, inc, cert[_CERT_BODY.size:]


class CryptoCache:
    """Memoized Ed25519 verifications and X25519 secrets.

    Each engine owns one by default.  The simulator may share one among all its
    engines (labelled in the bench JSON): every verification is still real, but
    a record relayed to a thousand simulated nodes is verified once per process
    instead of once per node.
    """

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._verified: OrderedDict = OrderedDict()
        self._keys: dict = {}
        self._secrets: OrderedDict = OrderedDict()
        self.verifications = 0   # real Ed25519 verifications performed
        self.exchanges = 0       # real X25519 exchanges performed

    def verify(self, pub: bytes, sig: bytes, message: bytes) -> bool:
        key = (pub, sig, hashlib.blake2b(message, digest_size=16).digest())
        hit = self._verified.get(key)
        if hit is not None:
            return hit
        pk = self._keys.get(pub)
        if pk is None:
            try:
                pk = Ed25519PublicKey.from_public_bytes(pub)
            except ValueError:
                return False
            if len(self._keys) >= self.max_entries:
                self._keys.clear()
            self._keys[pub] = pk
        self.verifications += 1
        try:
            pk.verify(sig, message)
            ok = True
        except InvalidSignature:
            ok = False
        self._verified[key] = ok
        if len(self._verified) > self.max_entries:
            self._verified.popitem(last=False)
        return ok

    def is_cached(self, pub: bytes, sig: bytes, message: bytes) -> bool:
        return (pub, sig, hashlib.blake2b(message, digest_size=16).digest()) in self._verified

    def pair_secret(self, my_key: X25519PrivateKey, my_xpub: bytes, peer_xpub: bytes) -> bytes | None:
        key = (my_xpub, peer_xpub) if my_xpub < peer_xpub else (peer_xpub, my_xpub)
        hit = self._secrets.get(key)
        if hit is not None:
            return hit
        try:
            shared = my_key.exchange(X25519PublicKey.from_public_bytes(peer_xpub))
        except ValueError:  # low-order point: refuse
            return None
        self.exchanges += 1
        self._secrets[key] = shared
        if len(self._secrets) > self.max_entries:
            self._secrets.popitem(last=False)
        return shared


def pair_mac_key(swarm_id: bytes, shared: bytes, xpub_a: bytes, xpub_b: bytes) -> bytes:
    lo, hi = (xpub_a, xpub_b) if xpub_a < xpub_b else (xpub_b, xpub_a)
    return hashlib.blake2b(b"onebyte-pair-v1" + swarm_id + lo + hi, key=shared, digest_size=32).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=16).digest()
