"""The lab's decisions, free of I/O: link policies (loss, delay, jitter, duplication,
reordering), partitions, and NAT tables. Time comes in as an argument and randomness from one
seeded RNG, so the unit tests drive these with a fake clock.

A datagram crosses the lab in two stages:

* `Fabric.route` when the switch reads it from the sender's port: the sender's NAT (if any)
  maps its source, the partition and the link policy decide whether and when it arrives;
* `Fabric.deliver` when that time comes: the destination address is resolved *then* (so an
  address that moved meanwhile is honoured) and the destination's NAT filters it *then* (so a
  hole punched while the datagram was in flight lets it in, as on a real path).

Vocabulary: a *site* is what sits on the emulated WAN: a public host, or a NAT with the
hosts of its inside network behind it. Policies and partitions apply between sites.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from netlab_packet import Datagram

Endpoint = tuple[str, int]

# kind -> (mapping, filtering), in RFC 4787 terms: "independent" (endpoint-independent),
# "address" (address-dependent), "address-port" (address-and-port-dependent).
NAT_KINDS = {
    "full-cone": ("independent", "independent"),
    "restricted-cone": ("independent", "address"),
    "port-restricted-cone": ("independent", "address-port"),
    "symmetric": ("address-port", "address-port"),
}


@dataclass(frozen=True)
class Policy:
    """What a link does to each datagram. Delay is uniform in delay_s +- jitter_s (never
    negative), so jitter alone already reorders; `reorder` holds a datagram back an extra
    `reorder_gap_s` with that probability so later ones overtake it."""

    loss: float = 0.0
    delay_s: float = 0.0
    jitter_s: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_gap_s: float = 0.05

    def __post_init__(self):
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Policy.{name} must be a probability in [0, 1]")
        for name in ("delay_s", "jitter_s", "reorder_gap_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Policy.{name} must be >= 0")

    def sample(self, rng: random.Random) -> list[float]:
        """Delays of the copies that arrive: [] when lost, two when duplicated."""
        if rng.random() < self.loss:
            return []
        delays = [self._delay(rng)]
        if self.duplicate and rng.random() < self.duplicate:
            delays.append(self._delay(rng))
        return delays

    def _delay(self, rng: random.Random) -> float:
        d = self.delay_s + (rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0)
        if self.reorder and rng.random() < self.reorder:
            d += self.reorder_gap_s
        return max(0.0, d)


PERFECT = Policy()


@dataclass
class Mapping:
    inside: Endpoint
    public_port: int
    last_out: float
    permits: dict[Endpoint, float] = field(default_factory=dict)  # remote -> last datagram sent to it


class Nat:
    """A NAT's translation table. Mappings and the permissions they carry are created and
    refreshed by outbound datagrams only (inbound traffic keeps nothing alive, as on most
    home routers), and expire `timeout_s` after the last outbound datagram. Public ports are
    handed out in sequence from `first_port`. No hairpinning."""

    def __init__(self, public_ip: str, kind: str, timeout_s: float = 30.0, first_port: int = 40000):
        if kind not in NAT_KINDS:
            raise ValueError(f"unknown NAT kind {kind!r}; known: {', '.join(NAT_KINDS)}")
        if timeout_s <= 0:
            raise ValueError("NAT timeout_s must be > 0")
        self.public_ip = public_ip
        self.kind = kind
        self.mapping, self.filtering = NAT_KINDS[kind]
        self.timeout_s = timeout_s
        self._first_port = first_port
        self._next_port = first_port
        self._out: dict[tuple, Mapping] = {}
        self._in: dict[int, Mapping] = {}
        self.counters: Counter = Counter()

    def outbound(self, inside: Endpoint, remote: Endpoint, now: float) -> Endpoint:
        """The public endpoint that `inside` -> `remote` leaves from (creating the mapping)."""
        key = (inside,) if self.mapping == "independent" else (inside, remote)
        m = self._out.get(key)
        if m is not None and self._expired(m, now):
            self._remove(key, m)
            m = None
        if m is None:
            m = Mapping(inside, self._allocate(now), now)
            self._out[key] = m
            self._in[m.public_port] = m
            self.counters["mappings"] += 1
        m.last_out = now
        m.permits[remote] = now
        return self.public_ip, m.public_port

    def inbound(self, public_port: int, remote: Endpoint, now: float) -> Endpoint | None:
        """The inside endpoint a datagram from `remote` to our `public_port` reaches, or None
        (counted by reason) when no live mapping admits it."""
        m = self._in.get(public_port)
        if m is None:
            self.counters["no_mapping"] += 1
            return None
        if self._expired(m, now):
            self.counters["expired"] += 1
            return None
        if not self._permitted(m, remote, now):
            self.counters["filtered"] += 1
            return None
        return m.inside

    def mappings(self, now: float) -> list[tuple[Endpoint, int]]:
        """Live (inside endpoint, public port) pairs, for tests and reports."""
        return sorted((m.inside, m.public_port) for m in self._in.values() if not self._expired(m, now))

    def _permitted(self, m: Mapping, remote: Endpoint, now: float) -> bool:
        if self.filtering == "independent":
            return True
        fresh = [r for r, t in m.permits.items() if now - t < self.timeout_s]
        if self.filtering == "address":
            return any(r[0] == remote[0] for r in fresh)
        return remote in fresh

    def _expired(self, m: Mapping, now: float) -> bool:
        return now - m.last_out >= self.timeout_s

    def _remove(self, key: tuple, m: Mapping) -> None:
        del self._out[key]
        if self._in.get(m.public_port) is m:
            del self._in[m.public_port]

    def _allocate(self, now: float) -> int:
        span = 65536 - self._first_port
        for _ in range(span):
            port = self._next_port
            self._next_port = self._first_port + (port + 1 - self._first_port) % span
            old = self._in.get(port)
            if old is None:
                return port
            if self._expired(old, now):
                key = next(k for k, v in self._out.items() if v is old)
                self._remove(key, old)
                return port
        raise RuntimeError(f"NAT {self.public_ip}: no free public port")


@dataclass
class HostInfo:
    name: str
    ip: str
    nat: str | None = None       # the NAT whose inside network the host is on

    @property
    def site(self) -> str:
        return self.nat or self.name


class Fabric:
    """Who is where, and what the links between sites do. Single-threaded: the lab's
    forwarder holds a lock around every call."""

    def __init__(self, seed: int = 0, policy: Policy = PERFECT):
        self.rng = random.Random(seed)
        self.default_policy = policy
        self.pair_policy: dict[tuple[str, str], Policy] = {}
        self.hosts: dict[str, HostInfo] = {}
        self.nats: dict[str, Nat] = {}
        self._public: dict[str, str] = {}      # public ip -> site (host name or NAT name)
        self._inside: dict[str, str] = {}      # inside ip -> host name
        self._group: dict[str, int] = {}       # site -> partition group; empty when healed
        self.counters: Counter = Counter()

    # --- topology ---------------------------------------------------------------------

    def add_nat(self, name: str, public_ip: str, kind: str, timeout_s: float = 30.0) -> Nat:
        self._check_new(name, public_ip)
        nat = self.nats[name] = Nat(public_ip, kind, timeout_s)
        self._public[public_ip] = name
        return nat

    def add_host(self, name: str, ip: str, nat: str | None = None) -> HostInfo:
        self._check_new(name, ip)
        if nat is not None and nat not in self.nats:
            raise ValueError(f"no NAT named {nat!r}")
        h = self.hosts[name] = HostInfo(name, ip, nat)
        (self._inside if nat else self._public)[ip] = name
        return h

    def readdress(self, name: str, ip: str) -> None:
        """Host `name` now answers at `ip` (its old address stops existing)."""
        h = self.hosts[name]
        table = self._inside if h.nat else self._public
        if ip in self._public or ip in self._inside:
            raise ValueError(f"address {ip} is taken")
        del table[h.ip]
        table[ip] = name
        h.ip = ip

    def _check_new(self, name: str, ip: str) -> None:
        if name in self.hosts or name in self.nats:
            raise ValueError(f"name {name!r} is taken")
        if ip in self._public or ip in self._inside:
            raise ValueError(f"address {ip} is taken")

    # --- policies and partitions --------------------------------------------------------

    def set_policy(self, policy: Policy, a: str | None = None, b: str | None = None) -> None:
        """The default policy, or (with two host or NAT names) the policy of the link between
        their sites in both directions."""
        if a is None:
            self.default_policy = policy
            self.pair_policy.clear()
            return
        sa, sb = self.site_of(a), self.site_of(b)
        self.pair_policy[(sa, sb)] = self.pair_policy[(sb, sa)] = policy

    def partition(self, *groups) -> None:
        """Only sites in the same group reach each other; a site in no group reaches no one."""
        table: dict[str, int] = {}
        for i, group in enumerate(groups):
            for name in group:
                site = self.site_of(name)
                if table.setdefault(site, i) != i:
                    raise ValueError(f"{name!r} (site {site!r}) is in two groups")
        for site in [h.site for h in self.hosts.values()]:
            table.setdefault(site, -1 - len(table))    # a group of its own
        self._group = table

    def heal(self) -> None:
        self._group = {}

    def site_of(self, name: str) -> str:
        if name in self.nats:
            return name
        if name in self.hosts:
            return self.hosts[name].site
        raise ValueError(f"no host or NAT named {name!r}")

    # --- the two stages of a datagram ----------------------------------------------------

    def route(self, sender: str, dg: Datagram, now: float) -> list[tuple[float, Datagram]]:
        """(arrival time, datagram) for each copy of `dg`, sent by host `sender`, that
        crosses the WAN ([] when dropped; the reason is counted)."""
        h = self.hosts[sender]
        if dg.ttl <= 1:
            return self._drop("ttl")
        dg = Datagram(dg.src, dg.dst, dg.payload, dg.ttl - 1, dg.ident)
        if h.nat is not None:
            if dg.dst[0] in self._inside and self.hosts[self._inside[dg.dst[0]]].nat == h.nat:
                self.counters["lan"] += 1         # the NAT's own inside network: untouched
                return [(now, dg)]
            dg = dg.with_src(self.nats[h.nat].outbound(dg.src, dg.dst, now))
        dst_site = self._public.get(dg.dst[0])
        if dst_site is None:
            return self._drop("no_route")
        if dst_site == h.site:
            return self._drop("hairpin")
        if self._group and self._group.get(h.site) != self._group.get(dst_site):
            return self._drop("partition")
        policy = self.pair_policy.get((h.site, dst_site), self.default_policy)
        delays = policy.sample(self.rng)
        if not delays:
            return self._drop("loss")
        if len(delays) > 1:
            self.counters["duplicated"] += 1
        return [(now + d, dg) for d in delays]

    def deliver(self, dg: Datagram, now: float) -> tuple[str, Datagram] | None:
        """(receiving host, datagram as it reaches it) at arrival time, or None (counted)."""
        if dg.dst[0] in self._inside:            # only reached on a NAT's inside network
            self.counters["delivered"] += 1
            return self._inside[dg.dst[0]], dg
        site = self._public.get(dg.dst[0])
        if site is None:
            self._drop("no_route")
            return None
        if site in self.nats:
            inside = self.nats[site].inbound(dg.dst[1], dg.src, now)
            if inside is None or inside[0] not in self._inside:
                self._drop("nat")
                return None
            dg = dg.with_dst(inside)
            site = self._inside[inside[0]]
        self.counters["delivered"] += 1
        return site, dg

    def _drop(self, reason: str) -> list:
        self.counters[f"drop_{reason}"] += 1
        return []
