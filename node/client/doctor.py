"""`onebyte doctor`: is this node healthy, and if not, why and what to do.

One line per check: `ok`, `warn` or `FAIL`, what was seen, and for a problem the likely cause
and the fix. Offline first (config, genesis, key: what `check-config` reads, without loading the
model), then the live node through its status socket and from outside it: a datagram sent to
its UDP port (asyncio-dgram) must show up in its drop counters, and its TCP snapshot port
(the same number) must accept a connection. Exit status 0: no FAIL; 1: at least one.

Like the other client commands it imports no torch.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import load_config
from ..errors import DaemonUnreachable, UserError
from ..ops.status import request

DISK_WARN_BYTES = 1 << 30       # less free space than this beside the state dir: a warning
BACKLOG_WARN = 10_000           # updates logged but not yet applied
PROBE_WAIT_S = 1.5              # how long the probe datagram may take to be counted


@dataclass
class Check:
    name: str
    level: str          # "ok", "warn", "FAIL"
    seen: str
    fix: str = ""


class Doctor:
    def __init__(self, args):
        self.args = args
        self.checks: list[Check] = []
        self.sock: Path | None = None   # the status socket, once live() found it

    def add(self, name: str, level: str, seen: str, fix: str = "") -> None:
        self.checks.append(Check(name, level, seen, fix))

    # --- offline ---------------------------------------------------------------------------
    def offline(self):
        from onebyte.protocol import Identity
        from ..genesis import load_genesis, own_key_work_problem, protocol_config
        from ..keys import read_key
        try:
            cfg = load_config(self.args.config)
            genesis = load_genesis(cfg.genesis)
            protocol_config(genesis, cfg.protocol)
            identity = Identity.from_private_bytes(read_key(cfg.key))
        except UserError as exc:
            self.add("config", "FAIL", str(exc), "fix the file it names; `onebyte check-config` checks the rest")
            return None, None, None
        self.add("config", "ok", f"{cfg.path}: genesis {cfg.genesis} (swarm {genesis.swarm_id.hex()[:16]}, "
                 f"{genesis.setting('admission')}), node {identity.node_id.hex()[:16]}")
        pub = identity.public_bytes()
        problem = own_key_work_problem(genesis, pub, cfg.key)
        if problem:
            self.add("key", "FAIL", problem)
        elif genesis.setting("admission") == "closed" and pub not in genesis.member_keys():
            self.add("key", "warn", "this key is not in the genesis members",
                     "peers refuse it until an amendment admits it (`onebyte admit`, docs/operations.md)")
        self._disk(cfg)
        return cfg, genesis, identity

    def _disk(self, cfg) -> None:
        where = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
        try:
            free = shutil.disk_usage(where).free
        except OSError as exc:
            self.add("disk", "FAIL", f"{where}: {exc.strerror}", "create the state dir's parent, writable by the node")
            return
        level = "ok" if free >= DISK_WARN_BYTES else "warn"
        self.add("disk", level, f"{free / 2**30:.1f} GiB free beside {cfg.state_dir}",
                 "" if level == "ok" else "free space: a full disk stops the node's own steps (docs/security.md)")

    # --- the live node ---------------------------------------------------------------------
    def live(self, cfg, genesis) -> dict | None:
        self.sock = sock = Path(self.args.socket) if self.args.socket else cfg.socket_path
        try:
            st = request(sock, {"cmd": "status"}, timeout=self.args.timeout)
        except DaemonUnreachable as exc:
            self.add("daemon", "FAIL", str(exc), "start it (`systemctl start onebyte@NAME`) and read why it stopped: "
                     "`journalctl -u onebyte@NAME`")
            return None
        if st.get("phase", {}).get("name") != "ready":
            self.add("daemon", "warn", f"starting: {st.get('phase')}", "wait, then run doctor again")
            return None
        self.add("daemon", "ok", f"pid {st['pid']}, up {st['uptime_s']:.0f} s, worker {st['worker_state']}, "
                 f"version {st['version']}")
        if st["swarm_id"] != genesis.swarm_id.hex():
            self.add("genesis", "FAIL", f"the daemon runs swarm {st['swarm_id'][:16]}, the config's genesis is "
                     f"{genesis.swarm_id.hex()[:16]}", "restart the daemon after changing the genesis")
        self._peers(st)
        self._drops(st)
        self._nat(st)
        self._state(st)
        return st

    def _peers(self, st: dict) -> None:
        alive = st["peers_alive"]
        for b in st.get("bootstrap_silent") or []:
            self.add("bootstrap", "warn", f"peer {b['peer']} ({b['addr'] or 'unresolved'}) silent for "
                     f"{b['silent_s']:.0f} s" + (f": {b['error']}" if b.get("error") else ""),
                     "check the address, that the peer runs, and that UDP (and TCP) PORT is open on both sides")
        if alive:
            versions = sorted({p["version"] for p in st["peers"] if p.get("version")} | {f"onebyte {st['version']}"})
            self.add("peers", "ok", f"{alive} alive" + (f"; versions {', '.join(versions)}" if len(versions) > 1 else ""))
        elif not st["peers"]:
            self.add("peers", "FAIL", "no peer alive", "give `peers` in the node config and open UDP PORT; "
                     "a swarm of one trains alone")
        else:
            self.add("peers", "FAIL", f"no peer alive ({len(st['peers'])} known, none alive)",
                     "they stopped answering: a firewall, a changed address, or they are down")

    def _drops(self, st: dict) -> None:
        drops = st.get("drops") or {}
        for reason, why, fix in (
                ("wrong_swarm", "datagrams of another swarm", "a peer runs another genesis: compare `swarm_id` "
                 "in `onebyte status` on both machines"),
                ("wrong_version", "datagrams of another protocol version", "upgrade the older onebyte"),
                ("not_admitted", "datagrams from keys this swarm does not admit", "a node uses a key that is not a "
                 "member (closed swarm) or lacks the admission work (open swarm): `onebyte admit` or its key")):
            if drops.get(reason):
                self.add("drops", "warn", f"{drops[reason]} {why} dropped ({reason})", fix)
        if st.get("send_errors"):
            self.add("send", "warn", f"{st['send_errors']} UDP send errors", "a peer address that is unroutable "
                     "from here (IPv6 without a route?): check `peers`")

    def _nat(self, st: dict) -> None:
        nat = st.get("nat") or {}
        kind = nat.get("kind", "open")
        seen = f"{kind}, observed as {nat.get('observed') or 'unknown'}"
        if kind == "symmetric":
            self.add("nat", "warn", seen + f"; relayed through {nat.get('relayed', 0)} peer(s)",
                     "a symmetric NAT maps each peer to another port: traffic goes through relays; "
                     "a port forward of UDP PORT makes it direct")
        else:
            self.add("nat", "ok", seen)

    def _state(self, st: dict) -> None:
        if st.get("weights_diverged"):
            self.add("weights", "FAIL", f"{st['weights_diverged']} divergence(s): {st.get('last_divergence')}",
                     "report it (docs/troubleshooting.md): a peer holds our updates with other weights")
        if st.get("disk_full"):
            self.add("disk", "FAIL", "the state dir's disk is full: no own steps, intake paused", "free space; "
                     "the node resumes by itself")
        backlog = st.get("replay_backlog", 0)
        if backlog > BACKLOG_WARN:
            self.add("backlog", "warn", f"{backlog:,} updates logged but not applied yet",
                     "the node replays slower than the swarm publishes: more threads, or a GPU")
        if st.get("excluded_origins"):
            self.add("excluded", "warn", f"{len(st['excluded_origins'])} origin(s) excluded: "
                     + ", ".join(f"{o[:16]} ({v['reason']} from step {v['step']})"
                                 for o, v in st["excluded_origins"].items()),
                     "expected after an attack or a revocation; docs/security.md says what each reason means")
        if st.get("worker_state") == "failed":
            self.add("worker", "FAIL", st.get("worker_error") or "failed", "read the daemon's log")

    # --- from outside ----------------------------------------------------------------------
    async def reach(self, st: dict) -> None:
        """A datagram to the UDP port, a connection to the TCP snapshot port."""
        import asyncio_dgram
        host, port = _split(self.args.address or st["listen"])
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        before = self._probes_counted()
        try:
            stream = await asyncio_dgram.connect((host, port))
            await stream.send(b"\x00")   # version 0 is never valid: counted as wrong_version, nothing else
            stream.close()
        except OSError as exc:
            self.add("udp", "FAIL", f"cannot send to {host}:{port}: {exc.strerror}", "check the address")
            return
        deadline = time.monotonic() + PROBE_WAIT_S
        seen = False
        while time.monotonic() < deadline and not seen:
            await asyncio.sleep(0.1)
            seen = self._probes_counted() > before
        self.add("udp", "ok" if seen else "FAIL", f"a datagram to {host}:{port} " + ("reached the node" if seen else
                 "never reached the node"), "" if seen else f"open UDP {port} (firewall, security group)")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.args.timeout)
            writer.close()
            self.add("tcp", "ok", f"the snapshot port {host}:{port} (TCP) accepts connections")
        except (OSError, asyncio.TimeoutError) as exc:
            self.add("tcp", "FAIL", f"the snapshot port {host}:{port} (TCP) refused: {getattr(exc, 'strerror', exc)}",
                     f"open TCP {port} as well: joining nodes fetch snapshots over it")


    def _probes_counted(self) -> int:
        """Datagrams of protocol version 0 the node dropped: how the UDP probe shows up."""
        st = request(self.sock, {"cmd": "status"}, timeout=self.args.timeout)
        return (st.get("drops") or {}).get("wrong_version", 0)


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def cmd_doctor(args) -> int:
    doc = Doctor(args)
    cfg, genesis, _ = doc.offline()
    if cfg is not None:
        st = doc.live(cfg, genesis)
        if st is not None:
            asyncio.run(doc.reach(st))
    failed = any(c.level == "FAIL" for c in doc.checks)
    if args.json:
        print(json.dumps({"healthy": not failed, "checks": [asdict(c) for c in doc.checks]}, indent=1))
    else:
        for c in doc.checks:
            print(f"{c.level:<5} {c.name:<10} {c.seen}" + (f"\n{'':16}-> {c.fix}" if c.fix and c.level != "ok" else ""))
        print("healthy" if not failed else "NOT healthy: see FAIL above")
    return 1 if failed else 0


def add_parser(sub, env_cfg: str) -> None:
    s = sub.add_parser("doctor", help="check a node and say what is wrong and how to fix it",
                       description="Check the config, genesis and key, then the running node: peers, drops of "
                       "other swarms or versions, NAT, divergence, disk, backlog, and from outside its UDP and TCP "
                       "ports. Exit 0 when no check fails.")
    s.add_argument("--config", default=env_cfg, help="node config")
    s.add_argument("--socket", default="", help="status socket path (instead of --config's)")
    s.add_argument("--address", default="", help="HOST:PORT to probe (default: the node's listen address)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_doctor)
