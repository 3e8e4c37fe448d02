"""The NAT scenario in the protocol simulator: N nodes, half behind NATs (two thirds
port-restricted cone, one third symmetric), 10% loss, 50 +- 20 ms one way.  Prints JSON.

    .venv/bin/python bench/nat_sim.py --nodes 300 --publish-s 60

Every node publishes 2 updates/s for --publish-s, then the swarm drains for --drain-s.
full_delivery: every node holds every origin's every step at the end (full_delivery_after_drain_s:
the first whole second of the drain at which it did).  false_dead: (observer, peer)
PeerDead events about a node that was running (no node stops in this run).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from onebyte.protocol import PeerDead, ProtocolConfig
from onebyte.protocol.sim import NetConfig, Swarm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--publish-s", type=float, default=60.0)
    ap.add_argument("--drain-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n = args.nodes
    nat = {i: ("symmetric" if i % 3 == 0 else "cone") for i in range(n - n // 2, n)}
    deaths = []
    sw = Swarm(n, ProtocolConfig(swarm_id=bytes(32)), seed=args.seed,
               net=NetConfig(delay_s=0.03, jitter_s=0.04, loss=0.1), nat=nat,
               on_event=lambda node, ev, now: isinstance(ev, PeerDead) and deaths.append((node.index, ev.node_id)))
    t0 = time.perf_counter()
    sw.start_all(stagger_s=2.0)
    for node in sw.nodes:
        sw.schedule(3.0, sw.set_publishing, node, 2.0)
    sw.run_for(3.0 + args.publish_s)
    for node in sw.nodes:
        sw.set_publishing(node, 0)
    full_at = None   # seconds into the drain when every node first held every update
    for _ in range(int(args.drain_s)):
        sw.run_for(1.0)
        if full_at is None and sw.converged():
            full_at = round(sw.now - 3.0 - args.publish_s, 1)
    sw.run_for(args.drain_s - int(args.drain_s))
    ids = {node.identity.node_id: node for node in sw.nodes}
    kinds = {"public": [i for i in range(n) if i not in nat],
             "cone": [i for i, k in nat.items() if k == "cone"],
             "symmetric": [i for i, k in nat.items() if k == "symmetric"]}
    counters = {k: sum(node.engine.counters[k] for node in sw.nodes)
                for k in ("punches_ok", "punches_failed", "introductions", "relay_forwarded_bytes",
                          "suspicions_asked", "accusations_answered")}
    out = {"argv": ["bench/nat_sim.py", *(sys.argv[1:] if argv is None else argv)], "nodes": n, "behind_nat": len(nat), "publish_s": args.publish_s, "drain_s": args.drain_s,
           "full_delivery": sw.converged(), "full_delivery_after_drain_s": full_at,
           "updates_published": sum(node.engine.book.contiguous(node.identity.node_id) for node in sw.nodes),
           "false_dead": len(deaths), "false_dead_by_victim_type": {
               k: sum(1 for _, v in deaths if ids[v].index in set(idx)) for k, idx in kinds.items()},
           "nat_kind_learned_right": sum(
               node.engine.nat.kind.name.lower() == {"public": "open", "cone": "nat"}.get(
                   "public" if node.nat is None else node.nat.kind, "symmetric") for node in sw.nodes),
           "relayed_bytes_fraction": round(sw.stats["relay_bytes"] / sw.stats["bytes"], 4),
           "bytes": sw.stats["bytes"],
           "nat_dropped": sw.stats["nat_dropped"], **counters,
           "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
