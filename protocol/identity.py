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

The signature rule (docs/security.md, "Signature rule") is decided here, not by the
installed library: a public key must be the canonical encoding of a point of the
prime-order subgroup (no small-order or mixed-order keys); a signature's R must be
canonical and not of small order, and S < L. Only then does the library check the
cofactorless equation [S]B = R + [k]A. Libraries disagree exactly on the cases these
checks remove (ed25519-speccheck), so every node accepts the same signatures.
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
_UNSEEN = object()


# --- the signature rule: edwards25519 point checks in integer arithmetic ---------------
# Run once per public key (then cached) and, for R, once per signature as a set lookup;
# nothing here is secret, so plain Python integers (not constant time) are fine.

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493   # order of the base point
_D = -121665 * pow(121666, _P - 2, _P) % _P
_D2 = 2 * _D % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Y_MASK = (1 << 255) - 1

# The 8 points of order dividing 8 (the torsion subgroup), canonically encoded. A signature
# whose R is one of them, or a key that is one, makes [S]B = R + [k]A true for messages the
# key holder never chose (with S = 0 and a small-order key, for every message).
SMALL_ORDER_ENCODINGS = frozenset(bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",   # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",   # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",   # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",   # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",   # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",   # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",   # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",   # order 8
))


def _is_canonical(enc: bytes) -> bool:
    """y < p, and no sign bit on x = 0 (RFC 8032 5.1.3 decoding rejects both)."""
    y = int.from_bytes(enc, "little") & _Y_MASK
    return y < _P and not (enc[31] & 0x80 and y in (1, _P - 1))


def _decode(enc: bytes) -> tuple[int, int] | None:
    """Affine (x, y) of a canonical 32-byte encoding, or None if it is not on the curve."""
    y = int.from_bytes(enc, "little") & _Y_MASK
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vxx != u:
        return None
    if (x & 1) != enc[31] >> 7:
        x = _P - x
    return x, y


def _add(p1, p2):
    """Extended twisted-Edwards coordinates (X, Y, Z, T), a = -1 (add-2008-hwcd-3)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _double(p1):
    """dbl-2008-hwcd with a = -1."""
    x1, y1, z1, _ = p1
    a, b, c = x1 * x1 % _P, y1 * y1 % _P, 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _in_prime_subgroup(x: int, y: int) -> bool:
    """[L](x, y) is the identity: no torsion component (about 1 ms in Python)."""
    base = (x, y, 1, x * y % _P)
    acc = base
    for bit in bin(_L)[3:]:
        acc = _double(acc)
        if bit == "1":
            acc = _add(acc, base)
    return acc[0] % _P == 0 and (acc[1] - acc[2]) % _P == 0


def public_key_problem(pub: bytes) -> str | None:
    """Why this Ed25519 public key is refused, or None if it is acceptable.

    Reasons: "size", "non_canonical" (y >= p, or a sign bit on x = 0), "not_on_curve",
    "small_order" (one of the 8 torsion points), "mixed_order" (a torsion component: no
    key generated per RFC 8032 has one, and libraries disagree on what such a key signs)."""
    if not isinstance(pub, bytes) or len(pub) != 32:
        return "size"
    if not _is_canonical(pub):
        return "non_canonical"
    point = _decode(pub)
    if point is None:
        return "not_on_curve"
    if pub in SMALL_ORDER_ENCODINGS:
        return "small_order"
    if not _in_prime_subgroup(*point):
        return "mixed_order"
    return None


def signature_problem(sig: bytes) -> str | None:
    """Why this signature is refused before any curve arithmetic, or None.

    "size", "s_not_reduced" (S >= L: the malleable second form of a signature),
    "non_canonical_r", "small_order_r". A mixed-order R cannot satisfy the cofactorless
    equation for a prime-order key, so it fails in the library; no check is needed here."""
    if not isinstance(sig, bytes) or len(sig) != SIG_SIZE:
        return "size"
    if int.from_bytes(sig[32:], "little") >= _L:
        return "s_not_reduced"
    r = sig[:32]
    if not _is_canonical(r):
        return "non_canonical_r"
    if r in SMALL_ORDER_ENCODINGS:
        return "small_order_r"
    return None


def node_id_of(public_key: bytes) -> bytes:
    return hashlib.blake2b(public_key, digest_size=NODE_ID_SIZE).digest()


def key_work(swarm_id: bytes, public_key: bytes) -> int:
    """The work a key carries for one swarm: leading zero bits of
    blake2b-256("onebyte-key-work-v1" | swarm id | key). An open swarm with admission_work_bits
    = d admits only keys with work >= d: each costs about 2^d key generations to find (keygen
    --genesis), bound to this swarm (no key made in advance), and every node checks it alike
    with one hash (S/Kademlia's static puzzle; docs/security.md, "Sybils")."""
    h = int.from_bytes(hashlib.blake2b(b"onebyte-key-work-v1" + swarm_id + public_key, digest_size=32).digest(), "big")
    return 256 - h.bit_length()


def mine_identity(swarm_id: bytes, bits: int, progress=None) -> tuple["Identity", int]:
    """A new identity with key_work >= bits (about 2^bits tries), and the tries it took."""
    tries = 0
    while True:
        tries += 1
        ident = Identity.generate()
        if key_work(swarm_id, ident.public_bytes()) >= bits:
            return ident, tries
        if progress is not None and tries % 65536 == 0:
            progress(tries)


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
        pk = self._keys.get(pub, _UNSEEN)
        if pk is _UNSEEN:
            pk = self._admit_key(pub)
        if pk is None or signature_problem(sig) is not None:
            ok = False   # refused by the rule, whatever the library would say
        else:
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

    def _admit_key(self, pub: bytes) -> Ed25519PublicKey | None:
        """The library key for `pub`, or None if the rule refuses it; the verdict is cached
        (a refused key costs its curve check once, not once per signature)."""
        pk = None
        if public_key_problem(pub) is None:
            try:
                pk = Ed25519PublicKey.from_public_bytes(pub)
            except ValueError:
                pk = None
        if len(self._keys) >= self.max_entries:
            self._keys.clear()
        self._keys[pub] = pk
        return pk

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
