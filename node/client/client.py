"""Client commands: they talk to a running daemon through its status socket (docs/status.md)
and print. They import neither torch, numba nor transformers (a test checks sys.modules),
so `watch -n1 onebyte status` and `onebyte top` cost milliseconds, not seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..config import load_config
from ..errors import DaemonUnreachable, UserError
from .liveview import LiveView, human_bytes
from ..ops.status import request

TOP_INTERVAL_S = 1.0


def socket_of(args) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    return load_config(args.config).socket_path


def ask(args, req: dict, timeout: float | None = None) -> dict:
    ans = request(socket_of(args), req, timeout=timeout or args.timeout)
    if not ans.get("ok"):
        raise UserError(f"daemon: {ans.get('error')}")
    return ans


# --- status ---------------------------------------------------------------------------------

def cmd_status(args) -> int:
    st = ask(args, {"cmd": "status"})
    print(json.dumps(st, indent=1) if args.json else render_status(st))
    return 0


def render_starting(st: dict) -> str:
    ph = st["phase"]
    part = f" {ph['done']} of {ph['total']}" if ph.get("total") else ""
    return (f"node      {st['node_id']}  (starting: {ph['name']}{part}, {ph['seconds']:.0f}s in this phase, "
            f"up {st['uptime_s']:.0f}s)\nswarm     {st['swarm_id'][:16]}… {st.get('swarm_name') or ''}")


def render_status(st: dict) -> str:
    """The human view: the fields an operator looks at first (`--json` has every field)."""
    if st.get("phase", {}).get("name", "ready") != "ready":
        return render_starting(st)
    vv = st["version_vector"]
    ev = st.get("last_eval") or {}
    loss = st.get("loss_mean")
    lines = [
        f"node      {st['node_id']}  ({st['worker_state']}, up {st['uptime_s']:.0f}s, {st.get('listen')}, "
        f"onebyte {st.get('version')})",
        f"swarm     {st['swarm_id'][:16]}… {st.get('swarm_name') or ''}",
        f"steps     own {st['own_steps']}  applied own {st['applied_own']}  replayed {st['applied_replayed']}"
        f"  backlog {st['replay_backlog']}",
        f"rates     own {st['update_rate']['own_per_s']}/s  received {st['update_rate']['received_per_s']}/s",
        f"loss      {loss:.4f} (running mean)" if loss is not None else "loss      -",
        f"eval      step {ev.get('step')}: accuracy {ev.get('accuracy'):.4f} loss {ev.get('loss'):.4f}"
        if ev else "eval      -",
        f"state     {vv['updates']} updates from {vv['origins']} origins, digest {str(st['digest'])[:16]}…"
        + (f", {st['trainable_weights']:,} trainable weights" if st.get("trainable_weights") else ""),
        f"traffic   in {st['bytes_in']} B / {st['datagrams_in']} dgrams, out {st['bytes_out']} B / "
        f"{st['datagrams_out']} dgrams, drops {st['drops_total']}"
        + (f" {st['drops']}" if st['drops_total'] else ""),
        f"peers     {st['peers_alive']} alive of {len(st['peers'])}",
    ]
    trunk = st.get("trunk_cache")
    if trunk:
        done = (f"building {trunk.get('done')}/{trunk.get('total')} examples" if trunk.get("state") == "building"
                else f"{trunk.get('examples')} examples, {trunk.get('mb')} MB")
        lines.insert(5, f"trunk     layers >= {trunk['first_layer']} run per loss; cache {done}")
    for p in st["peers"]:
        rtt = f"{p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else "-"
        lines.append(f"  {p['node_id'][:16]}  {p['state']:<9} {p['addr'] or '-':<24} rtt {rtt}")
    for b in st.get("bootstrap_silent") or []:
        why = f"cannot resolve ({b['error']})" if b.get("addr") is None else "no answer"
        lines.append(f"  bootstrap {b['peer']}: {why} for {b['silent_s']:.0f} s")
    return "\n".join(lines)


# --- members --------------------------------------------------------------------------------

def cmd_members(args) -> int:
    ans = ask(args, {"cmd": "members"})
    if args.json:
        print(json.dumps(ans["members"], indent=1))
    else:
        print(render_members(ans["members"], time.time()))
        if ans.get("amendments"):
            print("\n" + render_amendments(ans["amendments"]))
    return 0


def render_amendments(amendments: list[dict]) -> str:
    lines = ["membership amendments (signed by the genesis authority):"]
    for a in amendments:
        what = {"admit": f"admit  {a['node_id'][:16]}",
                "revoke": f"revoke {a['node_id'][:16]} from step {a['step']}",
                "rotate": f"rotate {a['node_id'][:16]} -> key {(a['new_key'] or '')[:16]} from step {a['step']}"}
        state = "in effect" if a["in_effect"] else "waiting for a lower number"
        lines.append(f"  #{a['number']:<4} {what.get(a['kind'], a['kind']):<56} {state}")
    return "\n".join(lines)


def render_members(members: list[dict], now: float) -> str:
    if not members:
        return "no members known yet"
    head = (f"{'node id':<16} {'label':<10} {'state':<10} {'since':>7} {'address':<24} {'heard':>6} "
            f"{'rtt':>8} {'updates':>8} {'in':>10} {'out':>10}")
    lines = [head]
    for m in members:
        since = _ago(now - m["since"]) if m.get("since") else "-"
        heard = _ago(m["last_heard_s_ago"]) if m.get("last_heard_s_ago") is not None else "-"
        rtt = f"{m['rtt_ms']:.1f}ms" if m.get("rtt_ms") is not None else "-"
        lines.append(f"{m['node_id'][:16]:<16} {(m.get('label') or '-')[:10]:<10} {m['state']:<10} {since:>7} "
                     f"{(m.get('addr') or '-'):<24} {heard:>6} {rtt:>8} {m['updates']:>8} "
                     f"{human_bytes(m['bytes_in']):>10} {human_bytes(m['bytes_out']):>10}")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


# --- top ------------------------------------------------------------------------------------

def cmd_top(args) -> int:
    """The demo's live view for running nodes: one line per socket, redrawn every interval."""
    sockets = [Path(s) for s in args.socket] or [load_config(c).socket_path for c in (args.config or [])]
    if not sockets:
        raise UserError("give --socket PATH or --config FILE (repeatable) for the node(s) to watch")
    names = {f"node{i + 1}" if len(sockets) > 1 else "node": s for i, s in enumerate(sockets)}
    view = LiveView(sys.stdout, 0, sys.stdout.isatty(), line_every_s=args.interval, title="onebyte top")
    t0 = time.monotonic()
    rounds = 0
    try:
        while True:
            statuses = {}
            for name, sock in names.items():
                try:
                    ans = request(sock, {"cmd": "status"}, timeout=args.interval * 5)
                    statuses[name] = ans if ans.get("ok") else None
                except DaemonUnreachable:
                    statuses[name] = None
            view.update(statuses, time.monotonic() - t0)
            rounds += 1
            if args.count and rounds >= args.count:
                if not any(statuses.values()):   # a scripted check: nobody answered is a failure
                    print(f"onebyte: error: no daemon answers on {', '.join(map(str, sockets))}", file=sys.stderr)
                    return DaemonUnreachable.exit_code
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


# --- commands that change a running node -------------------------------------------------------

def cmd_stop_producing(args) -> int:
    ans = ask(args, {"cmd": "stop_producing"})
    print(f"stopped producing after {ans.get('own_steps')} own steps; the node keeps replaying and serving")
    return 0


def cmd_leave(args) -> int:
    ask(args, {"cmd": "leave"})
    print("leaving: the daemon tells its peers, writes a final snapshot and exits")
    return 0


def cmd_pubkey(args) -> int:
    """The public key (for a genesis's members) and node id of a key file."""
    from onebyte.protocol.identity import node_id_of

    from ..keys import public_of, read_key

    pub = public_of(read_key(args.key))
    print(f"public key {pub.hex()}\nnode id {node_id_of(pub).hex()}")
    return 0


def add_client_parsers(sub, env_cfg: str) -> None:
    def socket_args(s, timeout: float):
        s.add_argument("--config", default=env_cfg, help="node config (finds the status socket)")
        s.add_argument("--socket", default="", help="status socket path (instead of --config)")
        s.add_argument("--timeout", type=float, default=timeout, help="seconds to wait for the daemon")

    s = sub.add_parser("status", help="show a running daemon's status",
                       description="Show a running daemon's status (while it starts: the start-up phase); "
                       "fields: docs/status.md.")
    socket_args(s, 30.0)
    s.add_argument("--json", action="store_true", help="every field, machine-readable")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("members", help="list every member this node knows",
                       description="Every member the node knows: state (alive, suspect, dead, left, forgotten, "
                       "never seen), since when, address, last heard, RTT, updates and bytes exchanged.")
    socket_args(s, 30.0)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_members)

    s = sub.add_parser("top", help="live view of one or several running nodes",
                       description="Live view of running nodes (the demo's view), redrawn every --interval "
                       "seconds until Ctrl-C.")
    s.add_argument("--socket", action="append", default=[], help="status socket (repeatable)")
    s.add_argument("--config", action="append", default=[], help="node config (repeatable)")
    s.add_argument("--interval", type=float, default=TOP_INTERVAL_S, help="seconds between refreshes")
    s.add_argument("--count", type=int, default=0, help="stop after this many refreshes (0: until Ctrl-C)")
    s.set_defaults(func=cmd_top)

    s = sub.add_parser("stop-producing", help="a running node stops its own steps (keeps replaying, serving)",
                       description="Ask a running daemon to stop taking local steps until it restarts; it "
                       "keeps replaying peers' updates and serving them (status command stop_producing).")
    socket_args(s, 120.0)
    s.set_defaults(func=cmd_stop_producing)

    s = sub.add_parser("leave", help="a running node leaves the swarm and exits (as SIGTERM)",
                       description="Ask a running daemon to leave gracefully: peers learn it at once, it "
                       "writes a final snapshot and exits 0.")
    socket_args(s, 30.0)
    s.set_defaults(func=cmd_leave)

    s = sub.add_parser("pubkey", help="print the public key and node id of a key file",
                       description="Print the public key (for a genesis's members) and node id of an existing key.")
    s.add_argument("key", help="key file written by `onebyte keygen`")
    s.set_defaults(func=cmd_pubkey)
