"""One Byzantine member per attack against real daemons on loopback (closed swarm of 4 keys,
tiny model, 3 honest daemons): are the honest nodes alive, do their digests agree, is the
attacker excluded?

    .venv/bin/python bench/byzantine.py --json byzantine.json
    .venv/bin/python bench/byzantine.py --attack max_q --json max_q.json

Attacks (ATTACKS, a table: add a row per attack):
  max_q       q = 127 from step 11 on, 20 steps/s: the influence budget excludes it.
  rate_flood  honest-looking q at 100 steps/s against a cap of 5/s: not excluded (its q are
              within budget); accepted_max_at_end_of_attack shows the cap holding for pulled records too,
              against the bound (1 + pull_rate_mult) * cap * (20 s + rate_burst_s).
  equivocation  8 steps to everyone, then steps 9..16 signed twice (they differ first at step
              12): one version sent to b only, the other to c only; the proof excludes it from
              step 12 on everywhere and b and c take back what they had applied.
  steering    |q| = 30 with the sign of the noise at one weight (coordinate steering: inside the
              influence budget, whose |sum q| bound a random sign never reaches), 40 steps/s, 2,048
              steps, under the default steering_window (1,024): the steering rule excludes it from
              step 1 (its first run) everywhere and every node takes its applied steps back.
  steering_2  two colluding members (keys x and y) steering the same weight: each excluded alike.
  sybils_20   an open swarm that asks for 12 bits of admission work: one attacker mines 20 keys
              (the time is recorded) and steers one weight with all of them, 1,100 steps each at
              20 steps/s: each identity excluded at its first run, the honest nodes unharmed.
The Byzantine member is tests/node/byzantine_peer.py: a real protocol Engine on UDP.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))

from byzantine_peer import ByzantinePeer, EquivocatingPeer  # noqa: E402
from node_harness import Node, run_cli, wait_for  # noqa: E402

COMMON = dict(step_interval_s=0.05, snapshot_every=25, threads=1)
HONEST_STEPS = 30
ATTACKS = {
    "max_q": dict(q_of=lambda s: 5 if s <= 10 else 127, rate=20.0, steps=120, max_rate=200.0),
    "rate_flood": dict(q_of=lambda s: (-1) ** s * (3 + s % 5), rate=100.0, steps=2000, max_rate=5.0),
    "equivocation": dict(versions=([3] * 8, [3, 3, 3, -3, 3, 3, 3, 3]), rate=20.0, steps=8, max_rate=200.0),
    "steering": dict(steer=1000, colluders=1, rate=40.0, steps=2048, max_rate=200.0, attack_s=52.0),
    "steering_2": dict(steer=1000, colluders=2, rate=40.0, steps=2048, max_rate=200.0, attack_s=52.0),
    "sybils_20": dict(steer=1000, colluders=20, rate=20.0, steps=1100, max_rate=200.0, attack_s=57.0, work_bits=12),
}
ATTACKER_KEYS = ("x", "y")


def steering_q(genesis: Path, node_id: bytes, target: int):
    """q_of(step): |q| = 30, the sign of this origin's noise at weight `target` of the trainable
    vector (what the origin knows before it publishes: its seeds)."""
    from onebyte.model import noise_signs
    from onebyte.node.genesis import load_genesis
    seeder = load_genesis(genesis).seeder()
    return lambda step: 30 * noise_signs(seeder.seeds(node_id, step)[0], [target])[0]


def make_genesis(root: Path, max_rate: float, work_bits: int = 0, sybils: int = 0):
    """(genesis, {name: key file}, attacker's mining seconds or None): a closed swarm of a, b, c
    and the attacker keys; with work_bits, an open swarm asking for that much admission work,
    every key mined for it, the attacker's keys named s00, s01, ..."""
    from onebyte.node.keys import read_key, write_key
    from onebyte.protocol import Identity
    from onebyte.protocol.identity import mine_identity
    args = ["init", "--model", "tiny", "--data", "builtin:sentiment", "--name", "byz", "--out",
            root / "genesis.toml", "--hyper", "lr=0.0001", "--record-linger", "0.1",
            "--updates-per-record", "8", "--max-rate", str(max_rate)]
    names = ("a", "b", "c") + (tuple(f"s{i:02d}" for i in range(sybils)) if work_bits else ATTACKER_KEYS)
    keys = {name: root / name / "node.key" for name in names}
    for p in keys.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    if work_bits:
        r = run_cli(*args, "--admission", "open", "--admission-work-bits", str(work_bits))
        if r.returncode:
            raise SystemExit(r.stderr)
        from onebyte.node.genesis import load_genesis
        swarm_id = load_genesis(root / "genesis.toml").swarm_id
        honest, attacker = list(keys.values())[:3], list(keys.values())[3:]
        for p in honest:
            write_key(p, private=mine_identity(swarm_id, work_bits)[0].private_bytes())
        t0 = time.monotonic()   # the attacker's clock: its identities only
        for p in attacker:
            write_key(p, private=mine_identity(swarm_id, work_bits)[0].private_bytes())
        return root / "genesis.toml", keys, round(time.monotonic() - t0, 2)
    for p in keys.values():
        write_key(p)
    for p in keys.values():
        args += ["--member", Identity.from_private_bytes(read_key(p)).public_bytes().hex()]
    r = run_cli(*args, "--admission", "closed")
    if r.returncode:
        raise SystemExit(r.stderr)
    return root / "genesis.toml", keys, None


def settled(nodes) -> str | None:
    sts = [n.status() for n in nodes]
    if any(s["replay_backlog"] or s["own_steps"] < HONEST_STEPS for s in sts):
        return None
    if len({json.dumps(s["version_vector"]["by_origin"], sort_keys=True) for s in sts}) != 1:
        return None
    digests = {n.digest()["digest"] for n in nodes}
    return digests.pop() if len(digests) == 1 else None


def run_attack(name: str, spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"byz-{name}-") as tmp:
        root = Path(tmp)
        genesis, keys, mining_s = make_genesis(root, spec["max_rate"], spec.get("work_bits", 0),
                                               spec.get("colluders", 0))
        nodes, peers = [], []
        try:
            a = Node(root, "a", genesis, [], max_steps=HONEST_STEPS, **COMMON).start()
            nodes.append(a)
            a.wait_ready()
            for n in ("b", "c"):
                nodes.append(Node(root, n, genesis, [a.addr], max_steps=HONEST_STEPS, **COMMON).start())
            for n in nodes:
                n.wait_ready()
            if "versions" in spec:   # one version to b, the other to c
                targets = [(n.addr, qs) for n, qs in zip(nodes[1:], spec["versions"])]
                peers = [EquivocatingPeer(genesis, keys["x"], [n.addr for n in nodes], targets, spec["steps"])]
            elif "steer" in spec:
                from onebyte.node.keys import read_key
                from onebyte.protocol import Identity
                attackers = [k for k in keys if k.startswith("s")] if spec.get("work_bits") \
                    else ATTACKER_KEYS[:spec["colluders"]]
                for k in attackers:
                    nid = Identity.from_private_bytes(read_key(keys[k])).node_id
                    peers.append(ByzantinePeer(genesis, keys[k], [a.addr], steering_q(genesis, nid, spec["steer"]),
                                               spec["steps"], spec["rate"]))
            else:
                peers = [ByzantinePeer(genesis, keys["x"], [a.addr], spec["q_of"], spec["steps"], spec["rate"])]
            t0 = time.monotonic()
            for peer in peers:
                peer.start()
            attack_s = spec.get("attack_s", 20.0)
            time.sleep(max(0.0, t0 + 1.0 + attack_s - time.monotonic()))   # 1 s to join, then the attack
            ids = [p.node_id.hex() for p in peers]
            accepted = max(n.status()["version_vector"]["by_origin"].get(xid, 0) for n in nodes for xid in ids)
            try:
                digest = wait_for(lambda: settled(nodes), timeout, "honest digests to agree", 0.5)
            except AssertionError:
                digest = None
            sts = [n.status() for n in nodes]
            cfg = peers[0].config
            return {
                "attack": name,
                "honest_nodes_alive": all(n.proc.poll() is None and s["worker_state"] != "failed"
                                          for n, s in zip(nodes, sts)),
                "honest_digests_identical": digest is not None,
                "byzantine_excluded": all(xid in s["excluded_origins"] for s in sts for xid in ids),
                "excluded_at": [s["excluded_origins"].get(xid) for xid in ids for s in sts],
                "byzantine_published": sum(p.published for p in peers),
                "byzantine_applied_now": max(s["version_vector"]["by_origin"].get(xid, 0) for s in sts for xid in ids),
                "attack_s": attack_s,
                "identities": len(peers),
                "admission_work_bits": spec.get("work_bits", 0),
                "mining_s_attacker_identities": mining_s,
                "accepted_max_at_end_of_attack": accepted,
                "accept_bound_at_end_of_attack": round((1 + cfg.pull_rate_mult) * cfg.max_updates_per_s_per_origin
                                                       * (attack_s + cfg.rate_burst_s)),
                "worker_states": [s["worker_state"] for s in sts],
                "rate_limited_drops": [s["drops"].get("rate_limited", 0) for s in sts],
            }
        finally:
            for peer in peers:
                peer.stop()
            for n in nodes:
                n.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--attack", action="append", choices=sorted(ATTACKS), help="default: every attack")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for agreement")
    args = ap.parse_args()
    results = [run_attack(a, ATTACKS[a], args.timeout) for a in (args.attack or list(ATTACKS))]
    out = {"command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
           "attacks": results}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
