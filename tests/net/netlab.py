"""A network lab of Linux network namespaces joined through a userspace switch.

    with Lab(seed=1) as lab:
        lab.add_nat("natA", "port-restricted-cone")
        a = lab.add_host("a")                 # public host, 10.201.0.10
        b = lab.add_host("b", nat="natA")     # inside host behind natA
        lab.start()
        lab.set_policy(Policy(loss=0.1, delay_s=0.05, jitter_s=0.02))
        subprocess.run(lab.exec_prefix(a) + ["some", "command"])

Topology: every host is a namespace with one interface `eth0` (a /32 address, ARP off, a
default route out of eth0), the other end of its veth pair sits in the lab's switch
namespace. The switch namespace has no addresses and no routes, so its kernel forwards
nothing: a frame leaves one host only through the forwarder thread below, which reads it
from a packet socket on the host's switch-side port, lets the `Fabric` (netlab_switch.py)
decide, and writes a rebuilt frame to the receiving host's port. Only IPv4/UDP passes; the
root namespace and the machine's real interfaces are never involved.

This machine's kernel has no sch_netem, no tc classifiers and no iptables/nft, hence the
userspace switch and NATs. Everything here needs root (`ip netns`, packet sockets):
`unavailable()` says why a lab cannot run, for tests to skip with that reason.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import heapq
import itertools
import os
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from netlab_packet import ETH_P_IP, build_frame, mac_bytes, parse_frame
from netlab_switch import Fabric, Nat, Policy

PREFIX = "oblab"                    # every namespace of every lab starts with this
NAME_RE = re.compile(rf"^{PREFIX}(\d+)x(\d+)-")
CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4
_labs = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, ns: str | None = None, stdin: str | None = None) -> str:
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def run_in_netns(ns: str, fn):
    """fn() called on a thread that entered namespace `ns` (sockets it creates stay there)."""
    out: dict = {}

    def target():
        try:
            with open(f"/run/netns/{ns}") as f:
                if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            out["value"] = fn()
        except BaseException as e:      # handed to the caller's thread
            out["error"] = e
    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@functools.cache
def unavailable() -> str | None:
    """Why a lab cannot be built here, or None when it can (probed once per process)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}x999999-probe"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError) as e:
        return f"cannot create a network namespace: {e}"
    try:
        run_in_netns(probe, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
    except OSError as e:
        return f"cannot open a packet socket in a namespace: {e}"
    finally:
        ip("netns", "del", probe)
    return None


def lab_namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines()
            if line.startswith(PREFIX)]


def sweep_stale() -> list[str]:
    """Delete the namespaces of labs whose process is gone (a crashed or killed test run),
    ending what still runs inside them (daemons the dead lab started). Returns their names."""
    swept = []
    for ns in lab_namespaces():
        m = NAME_RE.match(ns)
        if m is None or _alive(int(m.group(1))):
            continue
        for pid in ip("netns", "pids", ns).split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        swept.append(ns)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    nat: str | None
    index: int

    @property
    def port(self) -> str:          # its veth end in the switch namespace
        return f"p{self.index}"

    @property
    def mac(self) -> str:
        return "02:0b:00:00:%02x:%02x" % divmod(self.index, 256)

    @property
    def switch_mac(self) -> str:
        return "02:0b:01:00:%02x:%02x" % divmod(self.index, 256)


class Forwarder(threading.Thread):
    """Moves frames between the hosts' ports as the Fabric decides, holding each datagram
    until its arrival time. Owns the sockets; the Fabric is shared under `lock`."""

    def __init__(self, fabric: Fabric, lock: threading.Lock, ports: dict[str, tuple[socket.socket, Host]]):
        super().__init__(name="netlab-forwarder", daemon=True)
        self.fabric, self.lock, self.ports = fabric, lock, ports
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        for name, (sock, _host) in ports.items():
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, name)
        self._heap: list = []
        self._seq = itertools.count()
        self._halt = False
        self.error: BaseException | None = None

    def run(self):
        try:
            while not self._halt:
                timeout = max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None
                for key, _ in self.sel.select(timeout):
                    if key.data is not None:
                        self._drain(key.fileobj, key.data)
                self._release(time.monotonic())
        except BaseException as e:     # surfaced by Lab.check()
            self.error = e

    def _drain(self, sock: socket.socket, sender: str) -> None:
        while True:
            try:
                frame, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            dg = parse_frame(frame)
            with self.lock:
                if dg is None:
                    self.fabric.counters["not_udp"] += 1
                    continue
                for due, out in self.fabric.route(sender, dg, time.monotonic()):
                    heapq.heappush(self._heap, (due, next(self._seq), out))

    def _release(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, dg = heapq.heappop(self._heap)
            with self.lock:
                out = self.fabric.deliver(dg, now)
            if out is None:
                continue
            sock, host = self.ports[out[0]]
            try:
                sock.send(build_frame(out[1], mac_bytes(host.switch_mac), mac_bytes(host.mac)))
            except OSError:
                with self.lock:
                    self.fabric.counters["send_error"] += 1

    def stop(self):
        self._halt = True
        self._wake_w.send(b"x")
        self.join(10)
        for sock, _ in self.ports.values():
            sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()


class Lab:
    """Hosts, NATs and the switch between them. Declare hosts and NATs, `start()`, then steer
    the links at any time; `close()` (or the `with` block) removes every namespace."""

    def __init__(self, seed: int = 0, policy: Policy = Policy()):
        self.id = f"{PREFIX}{os.getpid()}x{next(_labs)}"
        self.switch_ns = f"{self.id}-sw"
        self.fabric = Fabric(seed, policy)
        self.lock = threading.Lock()
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self._forwarder: Forwarder | None = None
        self._sockets: list[socket.socket] = []
        self._moves = itertools.count()
        atexit.register(self.close)

    # --- declaring ---------------------------------------------------------------------

    def add_nat(self, name: str, kind: str, timeout_s: float = 30.0) -> str:
        """A NAT on the WAN with its own inside network; returns its public address."""
        public_ip = f"10.201.1.{10 + len(self.fabric.nats)}"
        self.fabric.add_nat(name, public_ip, kind, timeout_s)
        return public_ip

    def add_host(self, name: str, nat: str | None = None) -> Host:
        """A host on the WAN (10.201.0.x) or on `nat`'s inside network (192.168.k.x)."""
        if self._forwarder is not None:
            raise RuntimeError("add hosts before start()")
        if not re.fullmatch(r"[a-z0-9]{1,12}", name):
            raise ValueError("host names: 1-12 lowercase letters or digits")
        index = len(self.hosts)
        if nat is None:
            addr = f"10.201.0.{10 + index}"
        else:
            k = list(self.fabric.nats).index(nat) if nat in self.fabric.nats else -1
            if k < 0:
                raise ValueError(f"no NAT named {nat!r}")
            addr = f"192.168.{k + 1}.{10 + index}"
        self.fabric.add_host(name, addr, nat)
        host = self.hosts[name] = Host(name, f"{self.id}-{name}", addr, nat, index)
        return host

    def nat(self, name: str) -> Nat:
        return self.fabric.nats[name]

    # --- building and tearing down -------------------------------------------------------

    def start(self) -> "Lab":
        sweep_stale()
        self._netns_add(self.switch_ns)
        ip("link", "set", "lo", "up", ns=self.switch_ns)
        for h in self.hosts.values():
            self._build_host(h)
        ports = {}
        for h in self.hosts.values():
            ports[h.name] = (run_in_netns(self.switch_ns, lambda h=h: self._packet_socket(h.port)), h)
        self._forwarder = Forwarder(self.fabric, self.lock, ports)
        self._forwarder.start()
        return self

    def _netns_add(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._made.append(ns)

    def _build_host(self, h: Host) -> None:
        self._netns_add(h.ns)
        ip("link", "add", "name", h.port, "netns", self.switch_ns, "address", h.switch_mac, "type", "veth",
           "peer", "name", "eth0", "netns", h.ns, "address", h.mac)
        ip("link", "set", h.port, "up", ns=self.switch_ns)
        ip("-batch", "-", ns=h.ns, stdin="\n".join([
            "link set lo up",
            f"addr add {h.ip}/32 dev eth0",
            "link set eth0 arp off up",      # no neighbour resolution: the switch addresses frames
            "route add default dev eth0",
        ]) + "\n")

    @staticmethod
    def _packet_socket(ifname: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((ifname, ETH_P_IP))
        return s

    def close(self) -> None:
        """Stop the switch and delete every namespace this lab made (idempotent). Processes
        still running in a host namespace are killed first: a namespace outlives `ip netns
        del` while anything holds it."""
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        for ns in reversed(self._made):
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self) -> None:
        """Raise if the forwarder thread died (a lab bug, not a network condition)."""
        if self._forwarder is not None and self._forwarder.error is not None:
            raise RuntimeError(f"netlab forwarder failed: {self._forwarder.error!r}")

    # --- steering ----------------------------------------------------------------------

    def set_policy(self, policy: Policy, a: str | None = None, b: str | None = None) -> None:
        with self.lock:
            self.fabric.set_policy(policy, a, b)

    def partition(self, *groups) -> None:
        with self.lock:
            self.fabric.partition(*groups)

    def heal(self) -> None:
        with self.lock:
            self.fabric.heal()

    def readdress(self, name: str) -> str:
        """Move host `name` to a fresh address while it runs (as DHCP or roaming would): the
        new address is added, the switch learns it, the old one is removed. Sockets bound to
        0.0.0.0 keep working and send from the new address."""
        h = self.hosts[name]
        n = next(self._moves)
        new = f"10.201.2.{10 + n}" if h.nat is None else f"192.168.{h.ip.split('.')[2]}.{100 + n}"
        ip("addr", "add", f"{new}/32", "dev", "eth0", ns=h.ns)
        with self.lock:
            self.fabric.readdress(name, new)
        ip("addr", "del", f"{h.ip}/32", "dev", "eth0", ns=h.ns)
        h.ip = new
        return new

    def counters(self) -> dict:
        with self.lock:
            out = dict(self.fabric.counters)
            for name, nat in self.fabric.nats.items():
                out.update({f"{name}_{k}": v for k, v in nat.counters.items()})
        return out

    # --- using hosts --------------------------------------------------------------------

    def exec_prefix(self, name: str) -> list[str]:
        """argv prefix that runs a command inside host `name`'s namespace."""
        return ["ip", "netns", "exec", self.hosts[name].ns]

    def udp_socket(self, name: str, port: int = 0) -> socket.socket:
        """A UDP socket bound to 0.0.0.0:port inside host `name` (closed by close())."""
        def make():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", port))
            return s
        s = run_in_netns(self.hosts[name].ns, make)
        self._sockets.append(s)
        return s
