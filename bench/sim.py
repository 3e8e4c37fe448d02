"""Swarm dissemination benchmark over the deterministic simulator (onebyte.protocol.sim).

    .venv/bin/python bench/sim.py --json bench-sim.json

For each swarm size, one swarm warms up its membership, then every node
publishes updates at a steady rate for the whole run while the network loss
is stepped through 0%, 5% and 20%. Each loss phase tracks the records emitted
in its measurement window and checks, after a drain period at the same loss,
which of them reached every live node. On the largest swarm, 80% of the nodes
then crash at once and the survivors keep publishing.

Definitions (also written into the JSON):
  delivered_fraction    updates (of tracked records) held by every live node other than
                        their origin at the end of the phase / updates tracked
  dissemination time    from the moment the origin signs a record (its first send) to the
                        moment the last live node delivers it (UpdatesReceived), simulated s
  from_publish time     the same, from the publish() of the record's first update (adds the
                        batching wait: up to updates_per_record / rate)
  bytes_per_node_per_s  all datagram bytes sent (headers, MACs, membership, anti-entropy,
                        retransmits) per live node per simulated second in the phase
  idle_bytes_per_s_per_node  a swarm with no updates flowing (default ProtocolConfig): all
                        bytes sent per node per simulated second, measured over --idle-measure s
                        after --idle-warmup s (membership settled, back-offs at their caps),
                        keyed by swarm size; idle_bytes_by_kind splits it by message type
  bytes_per_update_K    bytes of an origin's PUSH datagrams (header, MAC, msgpack framing
                        and K-update records in whole signed batches, packed as full as the
                        engine packs them) / updates they carry; see docs/protocol.md
"""
from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from onebyte.protocol import ProtocolConfig, UpdatesReceived  # noqa: E402
from onebyte.protocol.sim import NetConfig, Swarm  # noqa: E402
from onebyte.protocol.testing import Net  # noqa: E402
from onebyte.protocol.records import HASH_SIZE, decode_any  # noqa: E402
from onebyte.protocol.wire import MessageType, unpack_body  # noqa: E402

SWARM_ID = bytes.fromhex("6f6e6562797465" + "00" * 25)


def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class Tracker:
    """Records emitted (by origin, last step) and their deliveries, per phase window."""

    def __init__(self, rate: float):
        self.rate = rate
        self.window = None          # (t0, t1) of records to track
        self.tracked = {}           # (origin, last) -> [emit_t, size, first_step, deliveries, last_t]

    def on_record(self, node, first, last, now):
        if self.window and self.window[0] <= now <= self.window[1]:
            self.tracked[(node.identity.node_id, last)] = [now, last - first + 1, first, 0, now]

    def on_event(self, node, ev, now):
        if isinstance(ev, UpdatesReceived):
            rec = self.tracked.get((ev.origin, ev.last_step))
            if rec is not None:
                rec[3] += 1
                rec[4] = now

    def evaluate(self, swarm, nodes):
        live = [n for n in nodes if n.alive]
        floor = {}
        for (origin, last) in self.tracked:
            if origin not in floor:
                floor[origin] = min((n.engine.book.contiguous(origin) for n in live
                                     if n.identity.node_id != origin), default=0)
        total = done = 0
        times, from_pub = [], []
        for (origin, last), (emit, size, first, _, last_t) in self.tracked.items():
            total += size
            if floor[origin] >= last:
                done += size
                times.append(last_t - emit)
                from_pub.append(last_t - emit + (size - 1) / self.rate)
        return {
            "records_tracked": len(self.tracked),
            "updates_tracked": total,
            "delivered_fraction": done / total if total else None,
            "p50_dissemination_s": pct(times, 0.50),
            "p99_dissemination_s": pct(times, 0.99),
            "max_dissemination_s": max(times) if times else None,
            "p99_from_publish_s": pct(from_pub, 0.99),
        }


def snapshot(nodes):
    """Summed counters of live nodes (diagnostics, see --diag)."""
    tot = {"drops": {}, "bytes_by_kind_out": {}, "pruned_by_count": {}}
    for x in nodes:
        if not x.alive:
            continue
        c = x.engine.counters
        for k in ("duplicate_records", "records_accepted", "batch_members_waiting", "updates_delivered",
                  "records_served_bytes", "serve_credit_cuts", "bytes_out", "datagrams_out", "lazy_pulls"):
            tot[k] = tot.get(k, 0) + c.get(k, 0)
        for k, v in c["drops"].items():
            tot["drops"][k] = tot["drops"].get(k, 0) + v
        for k, v in c["bytes_by_kind"]["out"].items():
            tot["bytes_by_kind_out"][str(k)] = tot["bytes_by_kind_out"].get(str(k), 0) + v
        q = x.engine.sync.record_q
        tot["pruned"] = tot.get("pruned", 0) + q.pruned
        for k, v in q.pruned_by_count.items():
            tot["pruned_by_count"][k] = tot["pruned_by_count"].get(k, 0) + v
    return tot


def diff(a, b):
    out = {}
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = {kk: vv - a[k].get(kk, 0) for kk, vv in sorted(v.items()) if vv - a[k].get(kk, 0)}
        else:
            out[k] = v - a.get(k, 0)
    return out


def diagnose(swarm, tracker, nodes, c0, live_n):
    """Where the records went: per tracked record, how many live non-origin nodes hold it."""
    live = [x for x in nodes if x.alive]
    conts = {}
    hist = {"all": 0, "miss1-5": 0, "miss6-50": 0, "miss51-500": 0, "miss>500": 0}
    fracs = []
    for (origin, last) in tracker.tracked:
        if origin not in conts:
            conts[origin] = sorted(x.engine.book.contiguous(origin) for x in live
                                   if x.identity.node_id != origin)
        cs = conts[origin]

        have = len(cs) - bisect.bisect_left(cs, last)
        miss = len(cs) - have
        fracs.append(have / max(1, len(cs)))
        hist["all" if miss == 0 else "miss1-5" if miss <= 5 else "miss6-50" if miss <= 50
             else "miss51-500" if miss <= 500 else "miss>500"] += 1
    qlen = [len(x.engine.sync.record_q) for x in live]
    pend = [x.engine.book.pending_total for x in live]
    fracs.sort()
    return {"records_by_missing_nodes": hist, "lagging": lagging(tracker, live),
            "held_fraction_mean": sum(fracs) / len(fracs) if fracs else None,
            "held_fraction_p10_p50": [pct(fracs, 0.1), pct(fracs, 0.5)] if fracs else None,
            "record_q_len_mean_max": [sum(qlen) / len(qlen), max(qlen)],
            "pending_total_mean_max": [sum(pend) / len(pend), max(pend)],
            "counters_delta_per_node": {k: ({kk: round(vv / live_n, 1) for kk, vv in v.items()}
                                            if isinstance(v, dict) else round(v / live_n, 1))
                                        for k, v in diff(c0, snapshot(nodes)).items()}}


def lagging(tracker, live) -> dict:
    """The (node, origin) pairs short of the origin's last tracked step: how many, on how many
    nodes, how far behind, and what the lagging node knows of it (a want from an IHAVE,
    records held beyond the gap, how many live nodes count it live)."""
    target = {}
    for (origin, last) in tracker.tracked:
        target[origin] = max(last, target.get(origin, 0))
    pairs, nodes, wants, held, gaps = 0, {}, 0, 0, []
    for x in live:
        sync = x.engine.sync
        for origin, last in target.items():
            have = x.engine.book.contiguous(origin)
            if origin == x.identity.node_id or have >= last:
                continue
            pairs += 1
            nodes[x.index] = nodes.get(x.index, 0) + 1
            wants += origin in getattr(sync, "_wants", {})
            held += bool(x.engine.book.state(origin).pending_updates)
            gaps.append(last - have)
    seen_live = {i: sum(1 for y in live if (m := y.engine.members.get(live_by(live, i))) is not None and m.live)
                 for i in sorted(nodes, key=nodes.get, reverse=True)[:5]}
    gaps.sort()
    return {"pairs": pairs, "nodes": len(nodes), "with_want": wants, "with_records_beyond_gap": held,
            "gap_p50_max": [pct(gaps, 0.5), gaps[-1]] if gaps else None,
            "top_nodes_pairs_and_seen_live_by": {i: [nodes[i], seen_live[i]] for i in seen_live}}


def live_by(live, index):
    return next(x.identity.node_id for x in live if x.index == index)


def bytes_sent(nodes):
    return sum(n.engine.counters["bytes_out"] for n in nodes if n.alive)


_T0 = [time.perf_counter()]


def _log(msg):
    print(f"[{time.perf_counter() - _T0[0]:6.0f}s] {msg}", file=sys.stderr, flush=True)


def _job(job, args):
    kind, n = job
    if kind == "idle":
        return idle_cost(n, args.idle_warmup, args.idle_measure, args.seed)
    return run_size(n, args, _log)


def run_jobs(jobs: list, args) -> dict:
    """Each (kind, n) job's result: in this process one after another, or with --jobs N in N
    forked processes, the largest swarms first (they take longest).  Every swarm builds its
    own seeded Swarm, so a job's figures are the same either way."""
    if args.jobs == 1 or len(jobs) < 2:
        return {job: _job(job, args) for job in jobs}
    import concurrent.futures
    import multiprocessing
    order = sorted(jobs, key=lambda j: (-j[1], j[0] == "idle"))
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {job: pool.submit(_job, job, args) for job in order}
        return {job: f.result() for job, f in futures.items()}


def run_size(n, args, log):
    # The swarm-wide update rate is fixed, so per-node rates fall as the swarm grows (a real
    # swarm's aggregate rate is bounded by what every node can replay, not by its size).
    # The genesis defaults (records of up to updates_per_record updates, sealed after
    # record_linger_s, signed in batches of records_per_signature): what a swarm runs. (A
    # linger of 2 * 64 / rate, the earlier setting, closed no batch inside the tracking window
    # at 1,000 nodes.)
    rate = args.swarm_rate / n
    over = {}
    for kv in args.set:
        key, val = kv.split("=", 1)
        over[key] = type(getattr(ProtocolConfig(swarm_id=SWARM_ID), key))(val)
    cfg = ProtocolConfig(swarm_id=SWARM_ID, **over)
    if over:
        log(f"config overrides {over}")
    k = cfg.updates_per_record
    tracker = Tracker(rate)
    swarm = Swarm(n, cfg, seed=args.seed + n, net=NetConfig(delay_s=0.01, jitter_s=0.005),
                  on_event=tracker.on_event, on_record=tracker.on_record)
    t_wall = time.perf_counter()
    swarm.start_all(stagger_s=2.0)

    def begin(node):
        # A random backlog of 0..k-1 updates, then the steady rate: each node's record
        # boundaries fall at a random phase, so the swarm emits records steadily from the
        # start instead of all at once after k / rate seconds.
        # Its q are an honest node's (as Swarm._publish_tick draws them): uniform q in
        # -127..127 breach the influence budget, and the origin is (rightly) excluded.
        for _ in range(swarm.rng.randrange(k)):
            q = max(-127, min(127, round(swarm.rng.gauss(0.0, 12.0))))
            node.engine.publish(node.engine.next_own_step, q, swarm.now)
        swarm._after(node)
        swarm.set_publishing(node, rate)

    for node in swarm.nodes:
        swarm.schedule(2.0 + swarm.rng.uniform(0, 1.0 / rate), begin, node)
    swarm.run_for(args.warmup)
    members = sum(len(x.engine.members.live_members()) for x in swarm.nodes) / n
    log(f"n={n} mean live members after warm-up {members:.1f}")
    log(f"n={n} warm-up {args.warmup}s sim in {time.perf_counter() - t_wall:.0f}s wall")
    results = []
    for loss in args.losses:
        t_phase = time.perf_counter()
        swarm.net.loss = loss
        tracker.tracked = {}
        tracker.window = (swarm.now, swarm.now + args.window)
        b0, t0 = bytes_sent(swarm.nodes), swarm.now
        c0 = snapshot(swarm.nodes) if args.diag else None
        if args.diag:
            swarm.run_for(args.window)
            log("end of window " + json.dumps(diagnose(swarm, tracker, swarm.nodes, c0, n)))
            swarm.run_for(args.drain)
            log("end of drain " + json.dumps(diagnose(swarm, tracker, swarm.nodes, c0, n)))
        else:
            swarm.run_for(args.window + args.drain)
        res = tracker.evaluate(swarm, swarm.nodes)
        res.update(nodes=n, loss=loss, window_s=args.window, drain_s=args.drain,
                   bytes_per_node_per_s=(bytes_sent(swarm.nodes) - b0) / n / (swarm.now - t0),
                   wall_s=round(time.perf_counter() - t_phase, 1))
        results.append(res)
        log(json.dumps(res))
    crash = None
    if n == max(args.sizes) and not args.no_crash:
        t_phase = time.perf_counter()
        swarm.net.loss = 0.05
        victims = swarm.rng.sample(swarm.nodes, int(0.8 * n))
        for v in victims:
            swarm.crash(v)
        survivors = [x for x in swarm.nodes if x.alive]
        tracker.tracked = {}
        tracker.window = (swarm.now, swarm.now + args.window)
        b0, t0 = bytes_sent(survivors), swarm.now
        swarm.run_for(args.window + args.crash_drain)
        crash = tracker.evaluate(swarm, survivors)
        crash.update(nodes=n, crashed=len(victims), loss=0.05, window_s=args.window,
                     drain_s=args.crash_drain,
                     bytes_per_node_per_s=(bytes_sent(survivors) - b0) / len(survivors) / (swarm.now - t0),
                     wall_s=round(time.perf_counter() - t_phase, 1))
        log("crash80 " + json.dumps(crash))
    cache = swarm.shared_crypto
    meta = {"nodes": n, "sim_s": swarm.now, "wall_s": round(time.perf_counter() - t_wall, 1),
            # honest origins only: an exclusion here means the bench fed q the budget refuses
            "origins_excluded": max(x.engine.counters["origins_excluded"] for x in swarm.nodes if x.alive),
            "datagrams": swarm.stats["sent"], "ed25519_verifications": cache.verifications,
            "x25519_exchanges": cache.exchanges}
    return results, crash, meta


def idle_cost(n: int, warmup: float, measure: float, seed: int) -> dict:
    """Bytes per node per second of an n-node swarm in which nothing is published."""
    swarm = Swarm(n, ProtocolConfig(swarm_id=SWARM_ID), seed=seed + n,
                  net=NetConfig(delay_s=0.01, jitter_s=0.005))
    swarm.start_all(stagger_s=2.0)
    swarm.run_for(warmup)

    def snap():
        kinds = {}
        for x in swarm.nodes:
            for k, v in x.engine.counters["bytes_by_kind"]["out"].items():
                kinds[k] = kinds.get(k, 0) + v
        return kinds

    k0 = snap()
    swarm.run_for(measure)
    k1 = snap()
    by_kind = {k: round((v - k0.get(k, 0)) / n / measure, 1) for k, v in k1.items() if v > k0.get(k, 0)}
    live = sum(len(x.engine.members.live_members()) for x in swarm.nodes) / n
    return {"bytes_per_s_per_node": (sum(k1.values()) - sum(k0.values())) / n / measure,
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "mean_live_members": live}


def draw_q(rng: random.Random, dist: str) -> int:
    if dist == "uniform":      # incompressible: the worst case for the packed encoding
        return rng.randint(-127, 127)
    sigma = float(dist.split("_sigma")[1])
    return max(-127, min(127, round(rng.gauss(0.0, sigma))))


def bytes_per_update(k: int, dist: str = "uniform", rps: int | None = None) -> dict:
    """Measure an origin's steady-state PUSH datagrams with records of k updates, signed in
    batches of rps records (None: the ProtocolConfig default): all the PUSH datagrams that
    carry whole batches (a datagram may end inside a batch), bytes / updates over them."""
    extra = {} if rps is None else {"records_per_signature": rps}
    cfg = ProtocolConfig(swarm_id=SWARM_ID, updates_per_record=k, record_linger_s=1000.0, fanout=1,
                         **extra)
    net = Net(cfg)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(3.0)
    b_addr = net.addr_of[b.node_id]
    per = max(1, 1100 // (k + 72))
    step = a.next_own_step
    rng = random.Random(k)
    rps = cfg.records_per_signature
    n_records = -(-8 * max(per, rps) // rps) * rps   # whole batches, about eight datagrams
    for _ in range(n_records * k):
        a.publish(step, draw_q(rng, dist), net.now)
        step += 1
    pushes = []

    def grab(data, src, dst):
        if dst == b_addr and data[9] == MessageType.PUSH:
            pushes.append(data)
        return False

    for _ in range(100):
        net.advance(0.05, drop=grab)
        if pushes:
            break
    net.advance(0.05, drop=grab)   # the rest of the round
    sizes, records, gossip = [], [], 0
    for data in pushes:
        _, g, recs = unpack_body(data[35:-16])
        if recs:
            sizes.append(len(data))
            records += recs
            gossip += len(g)
    updates = sum(len(decode_any(r)[2]) for r in records)
    return {"updates_per_record": k, "records_per_signature": rps,
            "q_distribution": dist, "datagrams": len(sizes), "datagram_bytes": sizes,
            "records": len(records),
            "signatures": sum(decode_any(r)[3] is not None for r in records),
            "gossip_items": gossip, "updates": updates,
            "bytes_per_update": sum(sizes) / updates,
            "record_bytes_per_update": sum(len(r) for r in records) / updates,
            "floor_qs_plus_signature": (k + 64 / rps + HASH_SIZE * (1 - 1 / rps)) / k}


def bytes_out(rps: int | None) -> dict:
    """The bytes-per-update keys of the result: K in (1, 8, 64, 256), uniform and concentrated
    q, at rps records per signature (None: the default), and K = 64 across rps."""
    bpu = {k: bytes_per_update(k, rps=rps) for k in (1, 8, 64, 256)}
    bpu_g = {k: bytes_per_update(k, "gaussian_sigma8", rps) for k in (1, 8, 64, 256)}
    sweep = {r: bytes_per_update(64, rps=r) for r in (1, 2, 4, 8, 16)}
    return {
        **{f"bytes_per_update_{k}": round(v["bytes_per_update"], 4) for k, v in bpu.items()},
        **{f"bytes_per_update_{k}_q_gaussian_sigma8": round(v["bytes_per_update"], 4)
           for k, v in bpu_g.items()},
        "records_per_signature": bpu[64]["records_per_signature"],
        "bytes_per_update_64_by_records_per_signature": {
            str(r): round(v["bytes_per_update"], 4) for r, v in sweep.items()},
        "bytes_per_update_note": "headline bytes_per_update_K use uniform q in [-127, 127] "
                                 "(incompressible, worst case) and records_per_signature as "
                                 "shown; *_q_gaussian_sigma8 draw q from a rounded N(0, 8^2), "
                                 "which the packed record encoding shrinks",
        "bytes_per_update_detail": {"uniform": bpu, "gaussian_sigma8": bpu_g},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the result object here")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--swarm-rate", type=float, default=800.0,
                    help="updates per second over the whole swarm (per node: this / nodes)")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=15.0)
    ap.add_argument("--crash-drain", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--idle-sizes", type=int, nargs="*", default=[3, 30, 100, 300])
    ap.add_argument("--idle-warmup", type=float, default=240.0)
    ap.add_argument("--idle-measure", type=float, default=120.0)
    ap.add_argument("--idle-only", action="store_true", help="only the idle-cost measurement")
    ap.add_argument("--bytes-only", action="store_true",
                    help="only the bytes-per-update measurement (seconds, not minutes)")
    ap.add_argument("--records-per-signature", type=int, default=None,
                    help="records per signed batch for bytes_per_update_K (default: ProtocolConfig's)")
    ap.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.05, 0.20])
    ap.add_argument("--no-crash", action="store_true", help="skip the 80%%-crash phase")
    ap.add_argument("--no-bytes", action="store_true", help="skip bytes_per_update_K")
    ap.add_argument("--diag", action="store_true",
                    help="log per-phase diagnostics (where records went, counters) at window and drain end")
    ap.add_argument("--jobs", type=int, default=1, help="swarms simulated at once, one process each (each "
                    "swarm is seeded alike either way: the figures do not depend on it, only the wall time)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="ProtocolConfig overrides for the scale phases (experiments)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    t0 = _T0[0] = time.perf_counter()
    log = _log

    # what actually ran (a lock wrapper, if any, is not visible from here and not recorded)
    command = " ".join([os.path.basename(sys.executable), "bench/sim.py"] + list(
        sys.argv[1:] if argv is None else argv))
    if args.bytes_only:
        text = json.dumps({"command": command, **bytes_out(args.records_per_signature)}, indent=2)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text + "\n")
        return

    bytes_res = {} if args.no_bytes else bytes_out(args.records_per_signature)
    if not args.no_bytes:
        log("bytes/update uniform q " + json.dumps(bytes_res["bytes_per_update_64_by_records_per_signature"]))
    jobs = [("idle", n) for n in args.idle_sizes]
    if not args.idle_only:
        jobs += [("scale", n) for n in args.sizes]
    done = run_jobs(jobs, args)
    idle = {}
    for n in args.idle_sizes:
        idle[str(n)] = done[("idle", n)]
        log(f"idle n={n} " + json.dumps(idle[str(n)]))
    idle_out = {"idle_bytes_per_s_per_node": {k: round(v["bytes_per_s_per_node"], 1) for k, v in idle.items()},
                "idle_bytes_by_kind": {k: v["by_kind"] for k, v in idle.items()},
                "idle_settings": {"warmup_s": args.idle_warmup, "measure_s": args.idle_measure,
                                  "config": "ProtocolConfig defaults"}}
    if args.idle_only:
        text = json.dumps({"command": command, **idle_out}, indent=2)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text + "\n")
        return
    scenarios, crash, runs = [], None, []
    for n in args.sizes:
        res, c, meta = done[("scale", n)]
        scenarios += res
        runs.append(meta)
        crash = c or crash
    empty = [f"{s['nodes']} nodes at {s['loss']:.0%} loss" for s in scenarios + [crash]
             if s and not s["records_tracked"]]
    excluded = sum(r["origins_excluded"] for r in runs)
    big = max(args.sizes)
    loss5 = [s for s in scenarios if s["nodes"] == big and s["loss"] == 0.05]
    out = {
        "command": command,
        "delivered_fraction_min": min((s["delivered_fraction"] for s in scenarios + [crash]
                                       if s and s["delivered_fraction"] is not None), default=None),
        "crash80_delivered_fraction": crash["delivered_fraction"] if crash else None,
        f"p99_dissemination_s_{big}_loss5": loss5[0]["p99_dissemination_s"] if loss5 else None,
        **bytes_res,
        **idle_out,
        "scenarios": scenarios,
        "crash80": crash,
        "runs": runs,
        "settings": {"swarm_updates_per_s": args.swarm_rate,
                     "updates_per_s_per_node": {n: args.swarm_rate / n for n in args.sizes},
                     "protocol": "ProtocolConfig defaults (the genesis defaults)",
                     "net_delay_s": 0.01, "net_jitter_s": 0.005,
                     "warmup_s": args.warmup, "window_s": args.window, "drain_s": args.drain,
                     "seed": args.seed},
        "crypto": "real Ed25519/X25519/blake2b; one CryptoCache shared by all simulated engines "
                  "(each distinct signature verified once per process, not once per node)",
        "definitions": {k.strip(): v for k, v in (
            ("delivered_fraction", "updates held by every live non-origin node at phase end / "
                                   "updates in records emitted in the window"),
            ("dissemination_s", "record signed at origin -> delivered by the last live node "
                                "(simulated seconds)"),
            ("from_publish_s", "as dissemination_s but from publish() of the record's first update"),
            ("bytes_per_node_per_s", "all bytes sent by live nodes / nodes / simulated seconds"),
            ("bytes_per_update_K", "bytes of an origin's PUSH datagrams carrying whole batches / "
                                   "updates in them; includes 35-byte header, 16-byte MAC, "
                                   "msgpack framing, 64-byte signature per batch, 16-byte hash "
                                   "per other record of a batch"),
        )},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if excluded:
        print(f"bench/sim.py: {excluded} origin(s) excluded by the influence budget: the stream was not "
              "an honest one", file=sys.stderr)
        return 1
    if empty:   # a phase that tracked nothing measured nothing: never a silent null
        print(f"bench/sim.py: no record was emitted inside the tracking window in: {', '.join(empty)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
