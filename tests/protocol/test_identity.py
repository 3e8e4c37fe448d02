"""The signature rule (docs/security.md, "Signature rule"), pinned by public test vectors.

Vectors are carried in tests/protocol/data (provenance and licences in its README):
Wycheproof's Ed25519 verification vectors and the 12 ed25519-speccheck cases, on which
libraries disagree. Every verdict here comes from CryptoCache.verify, the one place
where the protocol checks Ed25519 signatures.
"""

import json
from pathlib import Path

import pytest

from onebyte.protocol.identity import (SMALL_ORDER_ENCODINGS, CryptoCache, Identity, _decode, _double, _P,
                                       public_key_problem, signature_problem)

DATA = Path(__file__).parent / "data"
L = 2 ** 252 + 27742317777372353535851937790883648493
IDENTITY = bytes([1]) + bytes(31)     # the neutral point, canonically encoded


def _wycheproof():
    d = json.loads((DATA / "wycheproof_ed25519_test.json").read_text())
    for group in d["testGroups"]:
        pk = bytes.fromhex(group["publicKey"]["pk"])
        for t in group["tests"]:
            yield pytest.param(pk, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]), t["result"],
                               id=f"tc{t['tcId']}-{'-'.join(t['flags'])}")


def test_wycheproof_file_is_complete():
    d = json.loads((DATA / "wycheproof_ed25519_test.json").read_text())
    assert d["algorithm"] == "EDDSA"
    assert sum(len(g["tests"]) for g in d["testGroups"]) == d["numberOfTests"] == 151


@pytest.mark.parametrize("pk,msg,sig,result", list(_wycheproof()))
def test_wycheproof_vector(pk, msg, sig, result):
    assert result in ("valid", "invalid")   # the v1 Ed25519 file has no "acceptable" vectors
    assert CryptoCache().verify(pk, sig, msg) is (result == "valid")


# ed25519-speccheck (novifinancial/ed25519-speccheck, README "Condition table"): what each case
# is, and why the rule refuses it. None: the check passes, the reason is on the other side.
SPECCHECK = [
    # key problem     signature problem    what the case is
    ("small_order", "small_order_r"),     # 0  small A and R, S = 0
    ("small_order", None),                # 1  small A, mixed R
    ("mixed_order", "small_order_r"),     # 2  mixed A, small R
    ("mixed_order", None),                # 3  mixed A and R: valid cofactored and cofactorless
    ("mixed_order", None),                # 4  mixed A and R: valid cofactored only
    ("mixed_order", None),                # 5  mixed A, "pre-reduced" cofactored equation
    (None, "s_not_reduced"),              # 6  S > L
    (None, "s_not_reduced"),              # 7  S >> L
    ("mixed_order", "non_canonical_r"),   # 8  non-canonical R, reduced for the hash
    ("mixed_order", "non_canonical_r"),   # 9  non-canonical R, not reduced for the hash
    ("non_canonical", None),              # 10 non-canonical A, reduced for the hash
    ("non_canonical", None),              # 11 non-canonical A, not reduced for the hash
]


def _speccheck():
    cases = json.loads((DATA / "speccheck_cases.json").read_text())
    assert len(cases) == len(SPECCHECK) == 12
    return [(i, bytes.fromhex(c["pub_key"]), bytes.fromhex(c["message"]), bytes.fromhex(c["signature"]))
            for i, c in enumerate(cases)]


@pytest.mark.parametrize("case,pk,msg,sig", _speccheck(), ids=lambda v: None)
def test_speccheck_case_verdict_and_reason(case, pk, msg, sig):
    key_reason, sig_reason = SPECCHECK[case]
    assert public_key_problem(pk) == key_reason
    assert signature_problem(sig) == sig_reason
    # Every case breaks the rule somewhere, so every node refuses every case, whatever its
    # library does with it (OpenSSL accepts 0-3 and 11; libsodium refuses 0-2; zebra accepts 4).
    assert CryptoCache().verify(pk, sig, msg) is False


def test_small_order_set_is_the_torsion_subgroup():
    points = set()
    for enc in SMALL_ORDER_ENCODINGS:
        x, y = _decode(enc)
        p8 = (x, y, 1, x * y % _P)
        for _ in range(3):
            p8 = _double(p8)
        assert p8[0] % _P == 0 and (p8[1] - p8[2]) % _P == 0, enc.hex()   # [8]P = O
        points.add((x, y))
    assert len(points) == 8


def test_small_order_key_with_zero_s_signs_nothing():
    """With A = R = the neutral point and S = 0, [S]B = R + [k]A holds for every message:
    the library alone accepts it; the rule does not."""
    cache = CryptoCache()
    for msg in (b"", b"any update", bytes(range(200))):
        assert cache.verify(IDENTITY, IDENTITY + bytes(32), msg) is False
        for a in SMALL_ORDER_ENCODINGS:
            for r in SMALL_ORDER_ENCODINGS:
                assert cache.verify(a, r + bytes(32), msg) is False
    assert cache.verifications == 0   # refused before the library is asked


def test_honest_signatures_pass_and_their_malleable_twin_does_not():
    ident = Identity.from_seed(7)
    pub, msg = ident.public_bytes(), b"onebyte record"
    sig = ident.sign(msg)
    assert public_key_problem(pub) is None and signature_problem(sig) is None
    assert CryptoCache().verify(pub, sig, msg)
    s = int.from_bytes(sig[32:], "little")
    twin = sig[:32] + (s + L).to_bytes(32, "little")   # same point equation, S >= L
    assert signature_problem(twin) == "s_not_reduced"
    assert not CryptoCache().verify(pub, twin, msg)


def test_non_canonical_and_off_curve_keys():
    assert public_key_problem(b"\x01" * 31) == "size"
    y_is_p = (_P).to_bytes(32, "little")                     # y = p: the neutral point's alias
    assert public_key_problem(y_is_p) == "non_canonical"
    assert public_key_problem(IDENTITY[:31] + b"\x80") == "non_canonical"   # x = 0 with a sign bit
    assert public_key_problem(IDENTITY) == "small_order"
    off = next(y.to_bytes(32, "little") for y in range(2, 100) if _decode(y.to_bytes(32, "little")) is None)
    assert public_key_problem(off) == "not_on_curve"


def test_refused_key_is_checked_once():
    cache = CryptoCache()
    for i in range(3):
        assert not cache.verify(IDENTITY, bytes(64), b"m%d" % i)
    assert cache._keys[IDENTITY] is None and cache.verifications == 0
