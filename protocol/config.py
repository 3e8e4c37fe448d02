"""ProtocolConfig: the knobs of the gossip engine (most come from the genesis)."""
from __future__ import annotations

import math
from dataclasses import dataclass


class ProtocolConfigError(ValueError):
    """A ProtocolConfig value is out of range (our own misuse, so it raises)."""


@dataclass(frozen=True)
class ProtocolConfig:
    swarm_id: bytes                       # 32 bytes, blake2b-256 of the genesis
    protocol_version: int = 1             # first byte of every datagram
    admission: str = "open"               # "open": any key (rate limited); "closed": members only
    members: frozenset = frozenset()      # closed swarm: raw Ed25519 public keys (32 bytes)
    admission_work_bits: int = 0          # open swarm: a key must carry this much work (identity.key_work)
    authority: frozenset = frozenset()    # keys whose signed amendments change the members
    authority_threshold: int = 1          # (protocol/amendments.py): k of the n authority keys
    max_updates_per_s_per_origin: float = 50.0  # cap on pushed updates per origin
    rate_burst_s: float = 30.0            # token bucket depth, in seconds of the cap
    pull_rate_mult: float = 4.0           # pulled updates per origin: their own bucket, mult x the cap
    influence_window: int = 32            # influence budget (protocol/influence.py): window of an
    influence_max_abs: int = 2048         # origin's steps, bound on sum |q| (mean |q| <= 64) and
    influence_max_sum: int = 1024         # on |sum q| (mean q <= 32) over it; window 0: no budget
    updates_per_record: int = 64          # own updates batched per signed record
    record_linger_s: float = 4.0          # flush a partial record after this long: one 64-byte
                                          # signature per 4 s of an origin's steps (staleness
                                          # <= ~4 s; docs/performance-node.md, the trade-off)
    records_per_signature: int = 4        # records per signed batch (docs/protocol.md, "Batch
                                          # signatures"); 1: every record signed on its own
    gossip_interval_s: float = 0.05       # eager push round: a record relayed within ~50 ms of
                                          # coming (at 0.2 s the rounds' wait set the latency)
    fanout: int = 3                       # peers per push round
    retransmit_mult: int = 4              # membership gossip: limit = mult * ceil(log10(n + 1))
    record_retransmit_mult: int = 1       # records: the same rule; lazy push covers the tail
    lazy_push_mult: int = 3               # IHAVE announcements of a delivered record per node: this
                                          # x ceil(log10(n + 1)), in the push rounds' PUSH payload
                                          # (a receiver lacking it pulls it); 0: none
    lazy_push_wait_s: float = 0.1         # an announced record not arrived after this: pull it
    max_push_datagrams: int = 4           # per peer per push round, when the queue is long
    direct_push_max: int = 32             # up to this many live peers, an origin pushes its records
                                          # to each once and nobody relays them (n - 1 copies)
    probe_interval_s: float = 1.0         # SWIM protocol period
    probe_timeout_s: float = 0.5          # direct ack wait before indirect probes
    probe_quiet_s: float = 4.0            # a member heard from this recently is not pinged: its own
                                          # traffic answers for it (detection + at most this)
    indirect_probes: int = 3              # helpers asked to ping a silent peer
    suspicion_mult: int = 4               # suspect -> dead after mult * max(1, log10 n) periods
    dead_forget_s: float = 60.0           # dead/left peers forgotten (and allowed back) after this
    reconnect_interval_s: float = 5.0     # ping a dead peer / re-join bootstrap this often
    anti_entropy_interval_s: float = 1.0  # version-vector comparison with one random peer
    anti_entropy_max_interval_s: float = 16.0  # doubled up to this while nothing new is seen
    peer_exchange_interval_s: float = 10.0
    peer_exchange_max_interval_s: float = 160.0  # the same back-off while membership is quiet
    max_datagram: int = 1200              # safe under IPv6 minimum MTU minus headers
    max_record_updates: int = 1024        # largest record accepted from a peer
    max_pending_updates_per_origin: int = 4096  # out-of-order buffer, per origin
    max_pending_records: int = 20000      # out-of-order buffer, total
    max_peers: int = 4096                 # membership table bound
    max_events: int = 100000              # high-value events before back-pressure
    max_drop_events: int = 1024           # DatagramDropped events kept if not drained
    max_broadcasts: int = 2048            # queued records / gossip items per queue
    cert_verifies_per_s: float = 200.0    # budget for verifying unknown certificates (JOIN floods)
    pull_serve_bytes: int = 4 * 1100      # bytes of records served per PULL request
    serve_amplification: float = 4.0      # records served to a member: at most this times the bytes
                                          # received from it at its current address (PULLs are
                                          # padded to pull_serve_bytes / this, so one earns an answer)

    def __post_init__(self) -> None:
        if not isinstance(self.swarm_id, bytes) or len(self.swarm_id) != 32:
            raise ProtocolConfigError("swarm_id must be 32 bytes")
        if not (isinstance(self.serve_amplification, (int, float)) and 1.0 <= self.serve_amplification <= 64.0):
            raise ProtocolConfigError("serve_amplification must be a number in 1..64")
        if not 0 < self.protocol_version < 256:
            raise ProtocolConfigError("protocol_version must be in 1..255")
        if self.admission not in ("open", "closed"):
            raise ProtocolConfigError(f"admission must be 'open' or 'closed', not {self.admission!r}")
        for key in self.members:
            if not isinstance(key, bytes) or len(key) != 32:
                raise ProtocolConfigError("members must be raw 32-byte Ed25519 public keys")
        if isinstance(self.admission_work_bits, bool) or not isinstance(self.admission_work_bits, int) \
                or not 0 <= self.admission_work_bits <= 40:
            raise ProtocolConfigError(f"admission_work_bits must be an integer in 0..40, not {self.admission_work_bits!r}")
        if not (isinstance(self.authority_threshold, int) and
                1 <= self.authority_threshold <= max(1, len(self.authority))):
            raise ProtocolConfigError(f"authority_threshold must be 1..{max(1, len(self.authority))} "
                                      f"(the number of authority keys), not {self.authority_threshold!r}")
        if self.admission == "closed" and not self.members:
            raise ProtocolConfigError("a closed swarm needs at least one member key")
        if not 1 <= self.updates_per_record <= min(256, self.max_record_updates):
            raise ProtocolConfigError("updates_per_record must be in 1..256")
        if isinstance(self.records_per_signature, bool) or not isinstance(self.records_per_signature, int) \
                or not 1 <= self.records_per_signature <= 16:
            # 16: a closer's hashes (15 x 16 bytes) and a 256-update record fit one datagram
            raise ProtocolConfigError("records_per_signature must be an integer in 1..16")
        if self.max_datagram < 600 or self.max_datagram > 1400:
            raise ProtocolConfigError("max_datagram must be in 600..1400")
        for name in ("gossip_interval_s", "probe_interval_s", "probe_timeout_s",
                     "anti_entropy_interval_s", "record_linger_s", "max_updates_per_s_per_origin"):
            if not getattr(self, name) > 0:
                raise ProtocolConfigError(f"{name} must be > 0")
        if not (self.anti_entropy_max_interval_s >= self.anti_entropy_interval_s
                and self.peer_exchange_max_interval_s >= self.peer_exchange_interval_s > 0):
            raise ProtocolConfigError("anti-entropy and peer-exchange max intervals must be >= their base")
        if not 0 <= self.probe_quiet_s <= 60:
            raise ProtocolConfigError("probe_quiet_s must be in 0..60")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ProtocolConfigError("probe_timeout_s must be shorter than probe_interval_s")
        for name in ("influence_window", "influence_max_abs", "influence_max_sum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 40:
                raise ProtocolConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if not self.pull_rate_mult >= 1:
            raise ProtocolConfigError("pull_rate_mult must be >= 1")
        if self.fanout < 1 or self.retransmit_mult < 1:
            raise ProtocolConfigError("fanout and retransmit_mult must be >= 1")

    @property
    def swarm_tag(self) -> bytes:
        """8-byte tag on every datagram: a cheap first filter for foreign traffic.

        It is not the security boundary (every MAC key and signature covers the
        full 32-byte swarm id); it only has to make collisions between swarms
        that share a network rare, and 64 bits does that for 24 bytes less.
        """
        import hashlib
        return hashlib.blake2b(b"onebyte-tag-v1" + self.swarm_id, digest_size=8).digest()

    def transmit_limit(self, n: int, mult: int | None = None) -> int:
        return (mult or self.retransmit_mult) * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_timeout(self, n: int) -> float:
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval_s
