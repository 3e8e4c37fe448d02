"""What an identity costs in an open swarm that asks for admission work (protocol/identity.py,
key_work; docs/security.md, "Sybils"): key generations per second on this CPU, measured
mining times at a few work levels, and the expected cost per identity and for 20 identities.

    .venv/bin/python bench/admission_work.py --json admission_work.json

Every node checks a key's work with one blake2b; the cost is the key holder's alone.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from onebyte.protocol.identity import Identity, key_work, mine_identity


def keys_per_second(swarm_id: bytes, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        key_work(swarm_id, Identity.generate().public_bytes())
        n += 1
    return n / (time.perf_counter() - t0)


def check_cost(swarm_id: bytes, n: int = 20000) -> float:
    keys = [Identity.from_seed(s).public_bytes() for s in range(n)]
    t0 = time.perf_counter()
    for k in keys:
        key_work(swarm_id, k)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, action="append", help="work levels mined (default 12 and 16)")
    ap.add_argument("--runs", type=int, default=5, help="keys mined per level")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    swarm_id = bytes(range(32))
    rate = keys_per_second(swarm_id, 3.0)
    mined = []
    for bits in a.bits or [12, 16]:
        times, tries = [], []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            ident, n = mine_identity(swarm_id, bits)
            times.append(time.perf_counter() - t0)
            tries.append(n)
            assert key_work(swarm_id, ident.public_bytes()) >= bits
        mined.append({"bits": bits, "runs": a.runs, "median_s": round(statistics.median(times), 3),
                      "mean_tries": round(statistics.mean(tries)), "expected_tries": 2 ** bits})
    expected = {str(b): {"s_per_identity": round(2 ** b / rate, 1), "s_for_20_identities": round(20 * 2 ** b / rate)}
                for b in (16, 20, 24, 28)}
    out = {"command": " ".join(shlex.quote(x) for x in [Path(sys.executable).name, *sys.argv]),
           "key_generations_per_s_one_core": round(rate), "check_s_per_key": check_cost(swarm_id),
           "mined": mined, "expected_at_this_rate": expected}
    if rate <= 0 or not mined:
        raise SystemExit("measured nothing")
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
