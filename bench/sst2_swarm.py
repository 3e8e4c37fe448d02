"""SST-2 through real daemons: 4 `onebyte run` nodes on disjoint shards versus 1 alone.

    python bench/sst2_swarm.py --json out.json --results docs/results.json   # the full run
    python bench/sst2_swarm.py --quick --json quick.json                     # <= 10 minutes

Both runs use `onebyte keygen`, `onebyte init` and `onebyte run` on loopback, exactly as a
user would (the process handling is node/client/demo/swarm.py's LocalSwarm):
* the swarm: --nodes daemons, node k trains on shard k of the training pool (rows
  0..train_n-1 of train.tsv, TSV files written into the run dir), --steps own updates each
  (or --minutes of training once every node is ready to train);
* the solo: one daemon on the whole pool, the same --steps own updates.
Every --eval-every per-node updates (the swarm's own updates / nodes) and at the end, the
bench scores node1's replica on the first --eval-n rows of dev.tsv *off the producing path*:
node1 writes a snapshot (status `snapshot`: the worker hashes and writes its state, a few
milliseconds), and the bench process loads it into its own replica and evaluates it with
the prebuilt trunk cache, so no producer stops for the 872 dev rows. When every node has made its
updates, the bench waits for identical digests (status `digest` command), scores once more and the
swarm's model is exported with `onebyte export`.

Reported: dev accuracy of both, the per-node steps the swarm needed to reach the solo's
final accuracy (`steps_ratio_4node_to_match`), trainable weights, wire bytes per update
(all UDP bytes the nodes sent / updates) against the fp32 gradient of the trainable set,
wall seconds. Hyper-parameters come from bench/scope_probe.py runs on held-out training
rows, never from dev.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from onebyte.node.client.demo.swarm import LocalSwarm, run_cli
from onebyte.node.ops.status import request

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
# The prompt: the best zero-shot of six templates on held-out training rows (docs/results.md).
TEMPLATE = "Movie review: {sentence}\nSentiment:"
VERBALIZER = " negative, positive"


def write_rows(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sentence", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def node_fields(a) -> dict:
    """--node-field NAME=VALUE, numbers as numbers: [node] fields of every daemon (e.g. privacy)."""
    out = {}
    for item in a.node_field:
        k, _, v = item.partition("=")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = {"true": True, "false": False}.get(v, v)
    return out


def flipped(rows: list[dict]) -> list[dict]:
    """A poisoner's shard (--flip-node): every label the other way, so its q follow the
    gradient of the wrong task while it obeys the protocol in every other respect."""
    return [dict(r, label=str(1 - int(r["label"]))) for r in rows]


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{"sentence": r["sentence"], "label": r["label"]} for r in csv.DictReader(f, delimiter="\t")]


def shard_texts(rows_file: str, a) -> list[str]:
    """The prompts of a shard's rows, exactly as the daemons build them."""
    from onebyte.model import TaskSpec, load_task
    spec = TaskSpec(template=a.template, verbalizer=tuple(a.verbalizer.split(",")))
    return [e.text for e in load_task(rows_file, spec).examples]


def prebuild_trunk(model_spec: str, scope: dict, texts: list[str], path: Path):
    """Build the frozen-trunk cache of every pool and dev row once, here (the TrunkCache, kept in
    memory and written to `path`); each daemon starts with the entries of its own shard in its
    state dir (the cache is keyed by the base-model hash and the first trained layer, so the
    daemons accept it). Otherwise every node would spend minutes computing trunk outputs
    before its first step."""
    from onebyte.model import Hyper, Replica, load_model
    from onebyte.model.load import model_hash
    from onebyte.model.trunk import TrunkCache, first_trainable_layer
    model, tok = load_model(model_spec)
    rep = Replica(model, Hyper(**scope))
    k = first_trainable_layer(rep.model, rep.names)
    if k is None:
        return None
    t0 = time.monotonic()
    trunk = TrunkCache(rep.model, tok, k, base_hash=model_hash(model_spec), path=path)
    trunk.fill(texts, progress=lambda d, n: d % 512 < 16 and print(f"trunk cache {d}/{n}", flush=True))
    print(f"trunk cache: {len(trunk.h)} examples, {trunk.nbytes() / 1e6:.0f} MB, "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    return trunk


class SnapshotEval:
    """Scores a daemon's replica on dev rows in this process, from a snapshot the daemon writes."""

    def __init__(self, model_spec: str, genesis_path: Path, dev: str, n: int, pool_trunk=None):
        from onebyte.model import Replica, evaluate, load_model, load_task
        from onebyte.model.load import model_hash
        from onebyte.model.trunk import TrunkCache, first_trainable_layer
        from onebyte.node.genesis import load_genesis
        from onebyte.node.train.training import task_sources
        g = load_genesis(genesis_path)
        model, self.tok = load_model(model_spec)
        self.replica = Replica(model, g.make_hyper())
        spec, _, _ = task_sources(g.task, genesis_dir=genesis_path.parent)
        self.task = load_task(dev, spec, split="eval")
        self.examples = self.task.examples[:n]
        k = first_trainable_layer(self.replica.model, self.replica.names)
        self.trunk = None
        if k is not None:   # the dev rows' entries of the pool's cache, on this replica's model
            self.trunk = TrunkCache(self.replica.model, self.tok, k, base_hash=model_hash(model_spec))
            if pool_trunk is not None:
                self.trunk.h = {e: pool_trunk.h[e] for e in self.trunk.missing([x.text for x in self.examples])
                                if e in pool_trunk.h}
        self._evaluate = evaluate

    def __call__(self, node, path: Path) -> dict:
        res = request(node.socket, {"cmd": "snapshot", "path": str(path)}, timeout=600)
        if not res.get("ok", True) or "error" in res:
            raise RuntimeError(f"{node.name}: snapshot failed: {res.get('error')}")
        self.replica.load(path)
        r = self._evaluate(self.replica.model, self.tok, self.task, self.examples, trunk=self.trunk)
        return {"accuracy": r["accuracy"], "loss": r["loss"], "n": r["n"], "digest": self.replica.digest()}


def run(name: str, root: Path, shards: list[str], pool: str, dev: str, hyper: dict, a, trunk=None) -> dict:
    """One swarm of len(shards) daemons until each made a.steps own steps; returns its record."""
    n = len(shards)
    swarm = LocalSwarm(root=root / name, n=n, model=a.model, data=pool, eval_data=dev, hyper=hyper,
                  batch_size=a.batch_size, curve_examples=a.eval_n, eval_examples=a.eval_n,
                  threads=max(1, (os.cpu_count() or 1) // n), init_args=prompt_args(a))
    swarm.root.mkdir(parents=True)
    t0 = time.monotonic()
    swarm_id = swarm.prepare()
    for node, shard in zip(swarm.nodes, shards):
        node.data = shard
        # nobody evaluates inside a daemon (the bench scores snapshots): small eval caches
        swarm.write_config(node, max_steps=0 if a.minutes else a.steps, eval_examples=16, threads=swarm.threads,
                           extra=node_fields(a))
    for node, shard in zip(swarm.nodes, shards):
        if trunk is not None:   # the node's own rows only: a copy of the whole pool's cache per daemon
            (node.dir / "state").mkdir(mode=0o700, exist_ok=True)   # would cost memory, not time
            trunk.save(node.dir / "state" / "trunk.pt", texts=shard_texts(shard, a))
    # `onebyte init` wrote the scope into the genesis: every node trains these weights
    genesis_text = (swarm.root / "genesis.toml").read_text()
    curve, node1 = [], swarm.nodes[0]
    score = SnapshotEval(a.model, swarm.root / "genesis.toml", dev, a.eval_n, trunk)
    snap = swarm.root / "eval-snapshot.safetensors"

    def evaluate(node, n):
        return score(node, snap)
    try:
        swarm.start()
        sts = swarm.wait_ready()
        print(f"[{name}] {n} daemons up after {time.monotonic() - t0:.0f} s "
              f"(trunk cache: {sts[node1.name].get('trunk_cache')})", flush=True)
        next_eval, t_train, stopped = 0, None, False
        flags: dict = {}   # (auditor, origin) -> when first flagged: the origin's own steps, audits of it, time
        while True:
            swarm.check_alive()
            sts = {node.name: swarm.status(node, timeout=60) for node in swarm.nodes}
            if not all(sts.values()):
                time.sleep(1.0)  # a node too busy to answer (a long step or eval): ask again
                continue
            own = [int(st["own_steps"]) for st in sts.values()]
            for auditor, st in sts.items():
                for origin in (st.get("audit") or {}).get("flagged", []):
                    vv = st["version_vector"]["by_origin"]
                    flags.setdefault((auditor, origin), {
                        "origin_steps_when_flagged": vv.get(origin, 0),
                        "audits_of_origin": st["audit"]["origins"][origin]["samples"],
                        "train_seconds": round(time.monotonic() - t_train, 1) if t_train else None})
            if t_train is None and all(st.get("worker_state") not in ("starting", "preparing")
                                       for st in sts.values()):
                t_train = time.monotonic()  # every trunk cache is built: the training clock starts
            if a.minutes and t_train is not None and not stopped and time.monotonic() - t_train >= a.minutes * 60:
                for node in swarm.nodes:  # time is up: each node finishes its step, then only replays
                    request(node.socket, {"cmd": "stop_producing"}, timeout=300)
                stopped = True
                continue
            done = stopped if a.minutes else min(own) >= a.steps
            # Per-node steps = the swarm's own steps / nodes: nodes run at different speeds
            # (node1 also builds the dev rows' cache), and node1's replica holds everyone's.
            mean = sum(own) / n
            if mean >= next_eval or done:
                point = evaluate(node1, a.eval_n)
                point.update(step=round(mean, 1), steps_all=own, elapsed_s=round(time.monotonic() - t0, 1))
                curve.append(point)
                print(f"[{name}] " + json.dumps(point), flush=True)
                next_eval = (int(mean) // a.eval_every + 1) * a.eval_every
            if done:
                break
            time.sleep(1.0)
        digests = converge(swarm, a.converge_timeout)
        final = evaluate(node1, a.eval_n)
        st = swarm.statuses()
        bytes_out = sum(int((s or {}).get("bytes_out", 0)) for s in st.values())
        trainable = int(st[node1.name]["trainable_weights"])
        updates = digests[node1.name]["updates"]
        export = None
        if a.export and n > 1:
            export = str(Path(a.export).resolve())
            run_cli(["export", "--config", str(node1.config), "--out", export, "--force"], swarm.root,
                    "onebyte export", timeout=1800)
        own = [int(digests[node1.name]["vv"].get(node.node_id, 0)) for node in swarm.nodes]
        flipper = swarm.nodes[a.flip_node - 1].node_id if a.flip_node and n > 1 else None
        flipper_name = swarm.nodes[a.flip_node - 1].name if flipper else None
        audit = {"flip_node": a.flip_node or None, "flipper": flipper,
                 "flagged": [{"by": b, "origin": o, **when} for (b, o), when in sorted(flags.items())],
                 "flipper_flagged_by": sorted(b for (b, o) in flags if o == flipper),
                 # by honest auditors (a flipper measures on flipped labels: it flags the honest)
                 "honest_flagged": sorted({o for (b, o) in flags if o != flipper and b != flipper_name}),
                 "flagged_by_flipper": sorted({o for (b, o) in flags if b == flipper_name}),
                 "final": {node.name: (st.get("audit") or {}) for node, st in zip(swarm.nodes, swarm.statuses().values())}}
        return {"audit": audit, "privacy": {name: s.get("privacy") for name, s in st.items() if s and s.get("privacy")},"name": name, "nodes": n, "swarm_id": swarm_id, "evaluation": "bench process, from node1's snapshots", "steps_per_node": round(sum(own) / n, 1), "own_steps": own,
                "train_seconds": round(time.monotonic() - t_train, 1) if t_train else None, "curve": curve,
                "final_accuracy": final["accuracy"], "final_loss": final["loss"], "eval_n": final["n"],
                "updates": updates, "digests_identical": len({d["digest"] for d in digests.values()}) == 1,
                "digest": digests[node1.name]["digest"], "trainable_weights": trainable,
                "bytes_out": bytes_out, "wire_bytes_per_update": bytes_out / max(1, updates),
                "fp32_grad_bytes_per_update": 4 * trainable, "wall_seconds": round(time.monotonic() - t0, 1),
                "trunk_cache": st[node1.name].get("trunk_cache"), "export": export,
                "genesis": genesis_text, "run_dir": str(swarm.root)}
    finally:
        swarm.stop(timeout=60.0)


def converge(swarm, timeout: float) -> dict:
    """Wait until every node applied the same update set (identical digests, else DemoError)."""
    deadline = time.monotonic() + timeout
    while True:
        swarm.check_alive()
        answers, converged = swarm.digests()
        if converged:
            return answers
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas did not converge within {timeout:.0f} s")
        time.sleep(1.0)


def prompt_args(a) -> list[str]:
    """`onebyte init` arguments of the prompt: template and verbalizer (docs/results.md)."""
    return ["--template", a.template, "--verbalizer", a.verbalizer]


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    return next((p["step"] for p in curve if p["accuracy"] >= target), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000, help="own steps per node, in both runs")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="instead of --steps: train this long (after every trunk cache is built), then stop")
    ap.add_argument("--no-solo", action="store_true", help="only the swarm (e.g. a point of the scope frontier)")
    ap.add_argument("--train-n", type=int, default=8000, help="training pool: the first rows of train.tsv "
                    "(of at least --min-words words)")
    ap.add_argument("--min-words", type=int, default=0, help="pool rows of at least this many words (SST-2's "
                    "training rows are mostly phrases, its dev rows whole sentences)")
    ap.add_argument("--eval-n", type=int, default=872, help="dev rows evaluated (872 = all)")
    ap.add_argument("--eval-every", type=int, default=250, help="node1 evaluates every N own steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hyper", action="append", default=[], metavar="NAME=VALUE",
                    help="genesis hyper-parameter (repeatable); defaults: the --scope preset (model/scope.py)")
    ap.add_argument("--scope", default="top1", help="named scope (model/scope.py): norm, topN, lora-topN")
    ap.add_argument("--template", default=TEMPLATE, help="prompt template (chosen on held-out training rows)")
    ap.add_argument("--verbalizer", default=VERBALIZER, help="label words, comma-separated")
    ap.add_argument("--quick", action="store_true", help="a short run (<= 10 min) printing the same keys")
    ap.add_argument("--out", default="", help="run dir (default: a new temp folder)")
    ap.add_argument("--export", default="", help="export the swarm's model to this folder")
    ap.add_argument("--converge-timeout", type=float, default=600.0)
    ap.add_argument("--trunk-file", default="", help="keep the prebuilt trunk cache here (reused by a later run "
                    "with the same model and first trained layer)")
    ap.add_argument("--swarm-from", default="", metavar="JSON",
                    help="take the swarm run from this earlier --json output of the same settings and run "
                         "only the single daemon (its curve, steps and digests are kept, and the command named)")
    ap.add_argument("--node-field", action="append", default=[], metavar="NAME=VALUE",
                    help="a [node] field of every daemon (docs/config.md), e.g. privacy_epsilon=3")
    ap.add_argument("--flip-node", type=int, default=0, metavar="K",
                    help="node K (1-based) trains on its shard with every label flipped: a poisoner inside every "
                    "budget; the run records which nodes' audits flag whom (docs/security.md, Poisoning)")
    ap.add_argument("--json", default="")
    ap.add_argument("--results", default="", help="merge the keys into this results JSON (docs/results.json)")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.train_n, a.eval_n, a.eval_every = min(a.steps, 200), min(a.train_n, 800), min(a.eval_n, 200), 100
    t0 = time.time()
    root = Path(a.out).resolve() if a.out else Path(tempfile.mkdtemp(prefix="onebyte-sst2-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_rows(os.path.join(a.data_dir, "train.tsv")) if len(r["sentence"].split()) >= a.min_words]
    rows = rows[:a.train_n]
    dev = os.path.join(a.data_dir, "dev.tsv")
    pool = write_rows(root / "pool.tsv", rows)
    shards = [write_rows(root / f"shard{k}.tsv", flipped(rows[k::a.nodes]) if k + 1 == a.flip_node else rows[k::a.nodes])
              for k in range(a.nodes)]

    from onebyte.model.load import num_layers
    from onebyte.model.scope import scope_preset
    scope = scope_preset(a.scope, num_layers(a.model))
    hyper = dict(scope)
    for item in a.hyper:
        k, _, v = item.partition("=")
        hyper[k] = v
    print(f"run dir {root}; hyper {hyper}", flush=True)

    from onebyte.model import TaskSpec, load_task  # the prompts exactly as the daemons build them
    spec = TaskSpec(template=a.template, verbalizer=tuple(a.verbalizer.split(",")))
    texts = [e.text for e in load_task(pool, spec).examples]
    texts += [e.text for e in load_task(dev, spec, split="eval").examples[:a.eval_n]]
    trunk = prebuild_trunk(a.model, scope, texts, Path(a.trunk_file) if a.trunk_file else root / "trunk.pt")
    earlier = None
    if a.swarm_from:
        earlier = json.loads(Path(a.swarm_from).read_text())
        same = {"hyper": hyper, "train_pool": a.train_n, "min_words": a.min_words, "batch_size": a.batch_size,
                "steps_per_node": float(a.steps), "nodes": a.nodes, "eval_set": f"dev.tsv, first {a.eval_n} rows"}
        differ = [k for k, v in same.items() if earlier.get(k) != v]
        if differ or earlier.get("runs", {}).get("swarm") is None:
            raise SystemExit(f"--swarm-from {a.swarm_from}: not a swarm run of these settings ({', '.join(differ) or 'no swarm run'})")
        swarm = earlier["runs"]["swarm"]
    else:
        swarm = run("swarm", root, shards, pool, dev, hyper, a, trunk)
    solo = None if a.no_solo else run("solo", root, [pool], pool, dev, hyper, a, trunk)
    match = steps_to_reach(swarm["curve"], solo["final_accuracy"]) if solo else None
    out = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "swarm": "daemons", "bench": "bench/sst2_swarm.py", "model": a.model, "scope": a.scope, "hyper": hyper,
        "node_fields": node_fields(a) or None,
        "train_pool": a.train_n, "min_words": a.min_words, "eval_set": f"dev.tsv, first {a.eval_n} rows", "batch_size": a.batch_size,
        "steps_per_node": swarm["steps_per_node"], "minutes": a.minutes or None,
        "dev_accuracy_1node": solo["final_accuracy"] if solo else None,
        "dev_accuracy_4node": swarm["final_accuracy"], "nodes": a.nodes,
        "steps_ratio_4node_to_match": (match / solo["steps_per_node"]) if match is not None else None,
        "trainable_weights": swarm["trainable_weights"], "wire_bytes_per_update": swarm["wire_bytes_per_update"],
        "fp32_grad_bytes_per_update": swarm["fp32_grad_bytes_per_update"],
        "wire_to_fp32_ratio": swarm["wire_bytes_per_update"] / swarm["fp32_grad_bytes_per_update"],
        "digests_identical": swarm["digests_identical"] and (solo is None or solo["digests_identical"]),
        "wall_seconds": round(time.time() - t0, 1), "device": "cpu", "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "exported_model": Path(swarm["export"]).name if swarm["export"] else None,
        "runs": {"swarm": swarm, "solo": solo}, "quick": a.quick,
        "swarm_from": {"json": a.swarm_from, "command": earlier["command"], "date_utc": earlier["date_utc"],
                       "wall_seconds": earlier["wall_seconds"]} if earlier else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(out, indent=1)
    if a.json:
        Path(a.json).write_text(text + "\n")
    if a.results:
        p = Path(a.results)
        old = json.loads(p.read_text()) if p.exists() else {}
        if old and old.get("swarm") != "daemons":  # keys of the simulated bench (bench/sst2.py) kept aside
            old["simulated"] = {k: old[k] for k in old if k in out}
        old.update({k: v for k, v in out.items() if k != "runs"})
        old["daemon_runs"] = out["runs"]
        p.write_text(json.dumps(old, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("runs", "hyper")}, indent=1))
    return 0 if out["digests_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
