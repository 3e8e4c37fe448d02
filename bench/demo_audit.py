"""Benchmark: what the peer audit says in an honest `onebyte demo` run; prints one JSON object.

    python bench/demo_audit.py --nodes 4 --json demo_audit.json

Runs `onebyte demo --nodes N --out RUN_DIR` (its defaults otherwise: SmolLM2, the built-in
task, 5 training minutes) and reads every daemon's status socket every --every seconds while
it runs: which origins any node flagged or held a suspect, when, and each node's last audit
scores (docs/security.md, "Poisoning"). Every member is honest, so any flag is a false one.
Fails (exit 1, with the reason) when no audit was read at all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def read_audits(run: Path) -> dict:
    """{socket path: the status's audit} of every daemon of the run answering now."""
    from onebyte.node.errors import DaemonUnreachable
    from onebyte.node.ops.status import request
    out = {}
    for sock in sorted(run.glob("*/status.sock")):
        try:
            st = request(sock, {"cmd": "status"}, timeout=3)
        except (DaemonUnreachable, OSError, ValueError):
            continue
        if st.get("audit"):
            out[sock.parent.name] = st["audit"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between status reads")
    ap.add_argument("--out", default="", help="the demo's run dir (default: a temp dir, removed)")
    ap.add_argument("--json", default="", help="also write the JSON object to this path")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="onebyte-demo-audit-") as tmp:
        run = Path(args.out or tmp) / "run"
        out_path = Path(tmp) / "demo.out"   # a file, not a pipe: nobody reads the live view meanwhile
        with open(out_path, "w") as out:
            demo = subprocess.Popen([sys.executable, "-m", "onebyte.node.client.cli", "demo", "--nodes",
                                     str(args.nodes), "--out", str(run)], stdout=out, stderr=subprocess.STDOUT)
        flags, suspects, last, reads, t0 = {}, {}, {}, 0, time.monotonic()
        while demo.poll() is None:
            for node, audit in read_audits(run).items():
                reads += 1
                now = round(time.monotonic() - t0, 1)
                for o in audit.get("flagged", []):
                    flags.setdefault(f"{node}:{o}", now)
                for o in audit.get("suspects", []):
                    suspects.setdefault(f"{node}:{o}", now)
                last[node] = {"audits": audit["audits"],
                              "scores": {o: {"samples": v["samples"], "z": v["z"], "z_weighted": v["z_weighted"]}
                                         for o, v in audit.get("origins", {}).items()}}
            time.sleep(args.every)
        summary = out_path.read_text(errors="replace").splitlines()
    if demo.returncode != 0:
        raise SystemExit(f"the demo failed ({demo.returncode}): {summary[-5:]}")
    if not reads:
        raise SystemExit("no audit was read from any daemon: nothing measured")
    scores = [min(s["z"], s["z_weighted"]) for n in last.values() for s in n["scores"].values()]
    result = {
        "bench": "demo_audit",
        "command": " ".join([os.path.basename(sys.executable), "bench/demo_audit.py"] + sys.argv[1:]),
        "nodes": args.nodes,
        "status_reads": reads,
        "flagged": flags,                     # "node:origin" -> seconds into the run (false flags)
        "suspects_ever": suspects,
        "final_scores_min": round(min(scores), 2) if scores else None,
        "final_scores_max": round(max(scores), 2) if scores else None,
        "final": last,
        "demo_summary": [line.strip() for line in summary
                         if line.startswith(("swarm ", "accuracy ", "digests ", "wire "))],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
