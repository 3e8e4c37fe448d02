"""Real daemons across an emulated WAN: network namespaces joined by the userspace lossy switch
and NATs of tests/net/netlab.py (docs/network-testing.md). Needs root.

    sudo .venv/bin/python bench/wan.py --json wan.json            # every scenario
    sudo .venv/bin/python bench/wan.py --quick --json quick.json  # shorter phases

Every link: --loss (10%) and --delay-ms +- --jitter-ms (50 +- 20 ms). Tiny model, threads=1.
Scenarios (--scenario, repeatable; default all):
  partition  --nodes public daemons join (join_s: from all ready until each node and every
             other see each other alive), train, split into two halves that keep training
             for --apart-s; the producers stop (status command stop_producing), the
             partition heals, and partition_heal_s is the time from the heal until every
             digest is identical (null if not within --converge-s).
  churn      --nodes public daemons train; half are SIGKILLed, the rest train --churn-s,
             the killed restart on their state dirs; the producers stop.
             churn_digests_identical: identical digests, every origin's own steps held by
             every node, and equal to a fresh replica replaying the union of the logs.
  nat        8 daemons: 3 public, 3 behind port-restricted cone NATs, 2 behind symmetric
             NATs (one NAT per node, --nat-timeout-s mapping timeout, 30 s), bootstrapped from
             the public nodes. Join time per node and per NAT type (null: not joined within
             --join-window-s), false_dead (pairs (observer, peer) where the observer showed
             a running peer as dead, sampled every second), nat_digests_identical after the
             producers stop, relayed_bytes_fraction (bytes of RELAY datagrams, both hops, over
             all bytes the daemons sent).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "net"))

import netlab  # noqa: E402
from netlab_swarm import (COMMON, LabNode, alive_views, converged, make_genesis, nothing_lost,  # noqa: E402
                          stop_producing, union_digest, wait_for)
from netlab_switch import Policy  # noqa: E402

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def start_swarm(lab, root: Path, genesis: Path, names: list[str], bootstrap: list[str]) -> dict[str, LabNode]:
    """Daemons on lab hosts `names`, every one told the `bootstrap` nodes' addresses."""
    boot = [f"{lab.hosts[b].ip}:7470" for b in bootstrap]
    nodes = {}
    for name in names:
        nodes[name] = LabNode(lab, name, root, genesis, [a for a in boot if not a.startswith(lab.hosts[name].ip + ":")],
                              **COMMON).start()
    return nodes


def wait_ready(nodes: dict[str, LabNode]) -> float:
    t = time.monotonic()
    for n in nodes.values():
        n.wait_ready()
    return time.monotonic() - t


def watch_join(nodes: dict[str, LabNode], window_s: float, until_all: bool = True) -> tuple[dict, set]:
    """Seconds until each node and every other see each other alive (None: not within the
    window), and the (observer, peer) pairs seen dead while the peer was running."""
    t0 = time.monotonic()
    joined: dict[str, float | None] = {name: None for name in nodes}
    false_dead: set = set()
    while time.monotonic() - t0 < window_s:
        views = alive_views(list(nodes.values()))
        now = time.monotonic() - t0
        for name in nodes:
            others = set(nodes) - {name}
            if joined[name] is None and views.get(name, set()) >= others and \
                    all(name in views.get(o, set()) for o in others):
                joined[name] = round(now, 2)
        false_dead |= dead_marks(nodes)
        if until_all and all(v is not None for v in joined.values()):
            break
        time.sleep(1.0)
    return joined, false_dead


def dead_marks(nodes: dict[str, LabNode]) -> set:
    ids = {n.node_id: name for name, n in nodes.items()}
    out = set()
    for name, n in nodes.items():
        st = n.try_status()
        for p in (st or {}).get("peers", []):
            peer = ids.get(p["node_id"])
            if p["state"] == "dead" and peer is not None and nodes[peer].running():
                out.add((name, peer))
    return out


def train_until(nodes, steps: int, timeout: float) -> None:
    wait_for(lambda: all(n.status()["own_steps"] >= steps for n in nodes), timeout, f"{steps} own steps each", 0.5)


def converge(nodes, timeout: float) -> float | None:
    """Seconds until every digest agrees, or None after `timeout`."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if converged(nodes):
            return round(time.monotonic() - t, 2)
        time.sleep(0.5)
    return None


def checked(nodes, genesis: Path) -> dict:
    """Digests, nothing lost, and the union replay, for a swarm whose producers stopped."""
    answers = [n.digest() for n in nodes]
    expect, count = union_digest([Path(n.state_dir) for n in nodes], genesis)
    return {"digests_identical": len({a["digest"] for a in answers}) == 1,
            "nothing_lost": nothing_lost(nodes),
            "union_replay_matches": all(a["digest"] == expect for a in answers),
            "updates": {n.name: a["updates"] for n, a in zip(nodes, answers)}, "union_updates": count}


def scenario_partition(args, root: Path, genesis: Path) -> dict:
    names = [f"p{i}" for i in range(args.nodes)]
    with netlab.Lab(seed=args.seed, policy=args.policy) as lab:
        for n in names:
            lab.add_host(n)
        lab.start()
        nodes = start_swarm(lab, root / "partition", genesis, names, names[:1])
        try:
            ready_s = wait_ready(nodes)
            joined, false_dead = watch_join(nodes, args.join_window_s)
            log(f"partition: ready in {ready_s:.0f}s, joined {joined}")
            group = list(nodes.values())
            train_until(group, 5, 300)
            half = len(names) // 2
            lab.partition(names[:half], names[half:])
            before = {n.name: n.status()["own_steps"] for n in group}
            log(f"partition: split {names[:half]} | {names[half:]} for {args.apart_s:.0f}s")
            time.sleep(args.apart_s)
            gained = {n.name: n.status()["own_steps"] - before[n.name] for n in group}
            stop_producing(group)
            time.sleep(1.0)                  # the last partial records seal (record_linger 0.1 s)
            lab.heal()
            heal_s = converge(group, args.converge_s)
            log(f"partition: healed, identical digests after {heal_s}s")
            result = checked(group, genesis) if heal_s is not None else {}
            return {"nodes": len(names), "ready_s": round(ready_s, 1), "join_s": joined,
                    "join_false_dead": sorted(false_dead), "apart_s": args.apart_s,
                    "own_steps_gained_apart": gained, "partition_heal_s": heal_s, **result,
                    "switch": lab.counters()}
        finally:
            for n in nodes.values():
                n.cleanup()


def scenario_churn(args, root: Path, genesis: Path) -> dict:
    names = [f"c{i}" for i in range(args.nodes)]
    with netlab.Lab(seed=args.seed + 1, policy=args.policy) as lab:
        for n in names:
            lab.add_host(n)
        lab.start()
        nodes = start_swarm(lab, root / "churn", genesis, names, names[:1])
        try:
            wait_ready(nodes)
            watch_join(nodes, args.join_window_s)
            group = list(nodes.values())
            train_until(group, 5, 300)
            victims = group[len(group) // 2:]
            logged = {n.name: n.status()["own_steps"] for n in victims}
            for n in victims:
                n.kill()
            log(f"churn: SIGKILLed {[n.name for n in victims]}, the rest train {args.churn_s:.0f}s")
            time.sleep(args.churn_s)
            for n in victims:
                n.start()
            restored = {n.name: n.wait_ready()["own_steps"] for n in victims}
            time.sleep(args.churn_s / 2)     # all train together again
            stop_producing(group)
            converge_s = converge(group, args.converge_s)
            log(f"churn: identical digests after {converge_s}s")
            result = checked(group, genesis) if converge_s is not None else {}
            ok = bool(result) and result["digests_identical"] and result["nothing_lost"] \
                and result["union_replay_matches"] and all(restored[k] >= v for k, v in logged.items())
            return {"nodes": len(names), "killed": [n.name for n in victims], "own_steps_at_kill": logged,
                    "own_steps_after_restart": restored, "converge_s": converge_s, **result,
                    "churn_digests_identical": ok, "switch": lab.counters()}
        finally:
            for n in nodes.values():
                n.cleanup()


def scenario_nat(args, root: Path, genesis: Path) -> dict:
    kinds = {"pub0": None, "pub1": None, "pub2": None,
             "cone0": "port-restricted-cone", "cone1": "port-restricted-cone", "cone2": "port-restricted-cone",
             "sym0": "symmetric", "sym1": "symmetric"}
    with netlab.Lab(seed=args.seed + 2, policy=args.policy) as lab:
        for name, kind in kinds.items():
            if kind is not None:
                lab.add_nat(f"nat{name}", kind, timeout_s=args.nat_timeout_s)
            lab.add_host(name, nat=f"nat{name}" if kind else None)
        lab.start()
        public = [n for n, k in kinds.items() if k is None]
        nodes = start_swarm(lab, root / "nat", genesis, list(kinds), public)
        try:
            ready_s = wait_ready(nodes)
            joined, false_dead = watch_join(nodes, args.join_window_s)
            log(f"nat: ready in {ready_s:.0f}s, joined {joined}")
            t = time.monotonic()
            while time.monotonic() - t < args.train_s:          # keep watching for false deaths
                false_dead |= dead_marks(nodes)
                time.sleep(1.0)
            group = list(nodes.values())
            stop_producing(group)
            converge_s = converge(group, args.converge_s)
            false_dead |= dead_marks(nodes)
            log(f"nat: identical digests: {converge_s is not None}; false dead pairs {len(false_dead)}")
            held = {n.name: n.status()["version_vector"]["updates"] for n in group}
            views = alive_views(group)
            relayed, total = relay_bytes(group)
            return {"nodes": kinds, "ready_s": round(ready_s, 1), "join_s": joined,
                    "join_s_by_type": by_type(joined, kinds), "train_s": args.train_s,
                    "nat_digests_identical": converge_s is not None, "converge_s": converge_s,
                    "false_dead": len(false_dead), "false_dead_pairs": sorted(false_dead),
                    "updates_held_at_end": held, "own_steps": {n.name: n.status()["own_steps"] for n in group},
                    "alive_views_at_end": {k: sorted(v) for k, v in views.items()},
                    "relayed_bytes_fraction": round(relayed / total, 4) if total else None,
                    "relayed_bytes": relayed, "bytes_sent": total, "switch": lab.counters()}
        finally:
            for n in nodes.values():
                n.cleanup()


def relay_bytes(nodes) -> tuple[int, int]:
    """(bytes of RELAY datagrams sent, all bytes sent), summed over the nodes (status bytes_by_kind)."""
    relayed = total = 0
    for n in nodes:
        out = (n.status().get("bytes_by_kind") or {}).get("out", {})
        relayed += out.get("relay", 0)
        total += sum(out.values())
    return relayed, total


def by_type(joined: dict, kinds: dict) -> dict:
    out = {}
    for label, kind in (("public", None), ("cone", "port-restricted-cone"), ("symmetric", "symmetric")):
        times = [joined[n] for n, k in kinds.items() if k == kind]
        done = [x for x in times if x is not None]
        out[label] = {"joined": len(done), "of": len(times), "max_s": max(done) if len(done) == len(times) else None,
                      "median_s": round(statistics.median(done), 2) if done else None}
    return out


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the result object here")
    ap.add_argument("--scenario", action="append", choices=["partition", "churn", "nat"],
                    help="run only these (repeatable; default all)")
    ap.add_argument("--quick", action="store_true", help="shorter phases (apart 20 s, churn 10 s, train 15 s)")
    ap.add_argument("--nodes", type=int, default=4, help="daemons in the partition and churn scenarios")
    ap.add_argument("--loss", type=float, default=0.10)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--jitter-ms", type=float, default=20.0)
    ap.add_argument("--apart-s", type=float, default=60.0, help="partition: seconds the halves train apart")
    ap.add_argument("--churn-s", type=float, default=30.0, help="churn: seconds the survivors train alone")
    ap.add_argument("--train-s", type=float, default=30.0, help="nat: seconds of training after the join window")
    ap.add_argument("--join-window-s", type=float, default=60.0)
    ap.add_argument("--nat-timeout-s", type=float, default=30.0, help="nat: the NATs' mapping timeout")
    ap.add_argument("--converge-s", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the run dir (daemon logs) and print its path")
    args = ap.parse_args(argv)
    if args.quick:
        args.apart_s, args.churn_s, args.train_s = 20.0, 10.0, 15.0
    if args.nodes < 2:
        ap.error("--nodes must be at least 2")
    args.policy = Policy(loss=args.loss, delay_s=args.delay_ms / 1000, jitter_s=args.jitter_ms / 1000)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if why := netlab.unavailable():
        print(f"bench/wan.py: the network lab cannot run here: {why}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="onebyte-wan-"))
    scenarios = args.scenario or ["partition", "churn", "nat"]
    out = {"command": " ".join([os.path.basename(sys.executable), "bench/wan.py"]
                               + list(sys.argv[1:] if argv is None else argv)),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
           "links": {"loss": args.loss, "delay_ms": args.delay_ms, "jitter_ms": args.jitter_ms,
                     "delay_distribution": "uniform in delay +- jitter, per datagram"}}
    try:
        genesis = make_genesis(root / "genesis.toml")
        if "partition" in scenarios:
            p = out["partition"] = scenario_partition(args, root, genesis)
            out["partition_heal_s"] = p["partition_heal_s"]
            out["join_s_public"] = max(p["join_s"].values()) if None not in p["join_s"].values() else None
        if "churn" in scenarios:
            c = out["churn"] = scenario_churn(args, root, genesis)
            out["churn_digests_identical"] = c["churn_digests_identical"]
        if "nat" in scenarios:
            n = out["nat"] = scenario_nat(args, root, genesis)
            out["nat_digests_identical"] = n["nat_digests_identical"]
            out["false_dead"] = n["false_dead"]
            out["nat_join_s_by_type"] = n["join_s_by_type"]
            out["relayed_bytes_fraction"] = n["relayed_bytes_fraction"]
        out["wall_s"] = round(time.monotonic() - T0, 1)
    finally:
        if args.keep:
            log(f"run dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(out, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
