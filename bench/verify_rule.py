"""Cost of the signature rule (docs/security.md, "Signature rule"), measured side by side.

    .venv/bin/python bench/verify_rule.py --json verify-rule.json

`before`: CryptoCache.verify with the per-signature checks switched off (what a node ran
before the rule); `after`: the same with them, as shipped. Both use a warm key cache, as a
node verifying records of known origins, and one distinct message per signature, so the
result memo never answers. The two alternate within each round, so machine load hits
them alike; the best round of each is reported. `signature_checks_us`: signature_problem()
alone, per call (the whole per-signature cost of the rule; the side-by-side difference is
within the noise of a shared machine).
`key_admission_ms`: the one-time curve check of a public key (first sight of a key).
"""
from __future__ import annotations

import argparse
import json
import time

from onebyte.protocol import identity
from onebyte.protocol.identity import CryptoCache, Identity, public_key_problem, signature_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="signatures per round")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    ident = Identity.from_seed(1)
    pub = ident.public_bytes()
    msgs = [b"onebyte bench %d" % i for i in range(args.n)]
    sigs = [ident.sign(m) for m in msgs]
    best = {"before": float("inf"), "after": float("inf")}

    def cached(rule: bool) -> float:
        identity.signature_problem = signature_problem if rule else (lambda sig: None)
        try:
            cache = CryptoCache()
            cache.verify(pub, sigs[0], b"warm the key cache")
            t0 = time.perf_counter()
            for m, s in zip(msgs, sigs):
                assert cache.verify(pub, s, m)
            return time.perf_counter() - t0
        finally:
            identity.signature_problem = signature_problem

    for _ in range(args.rounds):
        best["before"] = min(best["before"], cached(rule=False))
        best["after"] = min(best["after"], cached(rule=True))
    t0 = time.perf_counter()
    for s in sigs:
        signature_problem(s)
    checks = (time.perf_counter() - t0) / len(sigs)
    keys = [Identity.from_seed(i).public_bytes() for i in range(2, 52)]
    t0 = time.perf_counter()
    for k in keys:
        assert public_key_problem(k) is None
    admission = (time.perf_counter() - t0) / len(keys)
    out = {
        "signatures_per_round": args.n, "rounds": args.rounds,
        "before_verify_per_s": round(args.n / best["before"]),
        "after_verify_per_s": round(args.n / best["after"]),
        "overhead_percent": round((best["after"] / best["before"] - 1) * 100, 2),
        "signature_checks_us": round(checks * 1e6, 3),
        "key_admission_ms": round(admission * 1e3, 3),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
