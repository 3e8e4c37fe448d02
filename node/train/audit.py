"""Auditing peers' updates on this node's own data (docs/security.md, "Poisoning").

A member can publish updates whose q has the wrong sign (or train on flipped labels): every q
stays inside every budget and rule, yet the swarm's gain is erased. No rule over one origin's
sequence can see that; a measurement on data can. Every `audit_interval_s` the worker takes the
updates of one peer (peers in turn) that it applied since that peer's last audit, up to
BATCH_MAX of the newest, and measures on a batch of its own training data the two-sided
projected gradient g along their signed sum u = sum_t sign(q_t) n_t (two forward passes,
nothing applied: Replica.directional). What it measures is the task's label margin where the
task is a classification (minus the mean margin: model/data.py label_margins), else the loss:
cross-entropy's gradient is the margin's times (1 - p_label), so on a task the model mostly
solves it rests on the few rows of our batch the model gets wrong, while the margin moves on
every row (on SST-2 a flipper's score fell about 2.5 times as steeply per sqrt(audits)). Each
term sign(q_t) (grad . n_t) is positive in expectation when q_t follows the gradient of the
loss (which, for a classification, raises the margin of the rows it sees), negative when it
opposes it, and the terms' noise (independent noises n_t) adds in quadrature: one audit of K
updates weighs like K audits of one, for the same two forward passes (the regeneration of K
noises costs about K / 15,000 s for the 3.5M weights of `top1` on a CPU core). Per origin, over its audits j:

    n = audits with g_j != 0,  a = agreements (g_j > 0) - disagreements
    z = a / sqrt(n)                          the sign test: about N(0, 1) if q ignored the gradient
    z_weighted = sum_j m_j g_j / sqrt(sum_j (m_j g_j)^2),   m_j = sum_t |q_t| over audit j
                                             the same test, each audit weighted by |m_j g_j|

The weighted score counts a confident measurement (large |g|) of a large claimed step (large
m) for more than a near-zero one, whose sign is mostly noise, and it weighs each audit by the
harm the updates can do. Where q ignores the gradient, flipping every n_t flips g and nothing
else, so g is symmetric given the magnitudes: both scores are sums of independent random signs,
and Hoeffding's bound holds for each whatever the magnitudes: P(score <= -k) <= exp(-k^2 / 2).

An origin whose score sinks below -SUSPECT_Z (n >= MIN_SAMPLES) is a *suspect*: besides its turn
in the round, its new updates are audited every interval_s / SUSPECT_SPEEDUP. The round alone
gives each of P peers one audit per P * interval_s; spending the extra forward passes only
where the evidence already points settles the question sooner, and an honest origin that dips
to -2 by chance is measured more, which brings its score back up. Updates are never measured
twice (each audit's noises are its own, which the bound below needs), so a suspect whose
updates arrive in large records (a record every few seconds) is audited once per record;
what more forward passes buy there is precision: a suspect's audit measures on
SUSPECT_BATCHES of our batches at once. On SST-2 the noise of one audit is mostly our batch's
(aggregating ~50 updates raised a score's slope about 1.7x, not the sqrt(50) = 7x of
independent per-update noise), so four batches make each audit about twice as telling.

An origin is *flagged* once n >= MIN_SAMPLES and min(z, z_weighted) <= -flag_z (default 4: by
that bound at most 2 exp(-8) = 7e-4 per check of an origin whose q ignores the gradient; an
honest origin's q follows it, which makes a flag rarer still). Flagging excludes nothing (it is
one node's measurement on its own data, not a rule every node evaluates alike): status and
metrics show it with the evidence an operator needs to revoke the key (the audited steps, the
claimed step mass and the g this node measured).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

MIN_SAMPLES = 16
BATCH_MAX = 64        # an origin's newest updates measured together in one audit
SUSPECT_Z = 2.0       # a score this low (after MIN_SAMPLES audits) makes an origin a suspect
SUSPECT_SPEEDUP = 4   # a suspect's new updates are audited this many times per interval_s
SUSPECT_BATCHES = 4   # ... each on this many of our batches at once
EVIDENCE = 8          # audits (first step, last step, updates, sum |q|, g) kept per origin for status


@dataclass
class OriginAudit:
    n: int = 0
    agree: int = 0
    mg: float = 0.0       # sum_j m_j g_j
    mg2: float = 0.0      # sum_j (m_j g_j)^2
    evidence: deque = field(default_factory=lambda: deque(maxlen=EVIDENCE))

    @property
    def z(self) -> float:
        return (2 * self.agree - self.n) / math.sqrt(self.n) if self.n else 0.0

    @property
    def z_weighted(self) -> float:
        return self.mg / math.sqrt(self.mg2) if self.mg2 > 0 else 0.0

    @property
    def score(self) -> float:
        return min(self.z, self.z_weighted)


class Audit:
    def __init__(self, interval_s: float, flag_z: float = 4.0, skip: bytes | None = None,
                 batch_max: int = BATCH_MAX):
        self.interval_s, self.flag_z, self.skip, self.batch_max = interval_s, flag_z, skip, batch_max
        self.origins: dict[bytes, OriginAudit] = {}
        # origin -> its (step, q) applied since its last audit, the newest batch_max of them
        self._pending: dict[bytes, deque] = {}
        self._order: deque = deque()          # origins waiting their turn in the round
        self._queued: set = set()             # the same, for an O(1) "already waiting"
        self._next_at = 0.0                   # the round's next audit
        self._next_suspect_at = 0.0           # the suspects' next audit
        self._suspects: set = set()           # origins at score <= -SUSPECT_Z (record keeps it)
        self.audits = 0
        self.batches_drawn = 0                # our batches audits measured on (each once)

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def offer(self, origin: bytes, step: int, q: int) -> None:
        """An update the worker applied (called in step order per origin)."""
        if not self.enabled or origin == self.skip or q == 0:
            return
        if origin not in self._queued:
            self._queued.add(origin)
            self._order.append(origin)
        self._pending.setdefault(origin, deque(maxlen=self.batch_max)).append((step, q))

    def suspects(self) -> list[bytes]:
        """Origins whose score is low enough to be audited faster, lowest score first."""
        return sorted(self._suspects, key=lambda o: self.origins[o].score)

    def _pick(self, now: float) -> bytes | None:
        """The origin to audit now: the next origin of the round when the round's audit is due
        (the round comes first: a suspect never starves it), else a suspect with new updates
        when the suspects' audit is due; None when nothing is due."""
        if now >= self._next_at:
            while self._order:
                o = self._order.popleft()
                self._queued.discard(o)
                if o in self._pending:
                    self._next_at = now + self.interval_s
                    return o
        if now >= self._next_suspect_at:
            for o in self.suspects():
                if o in self._pending:
                    self._next_suspect_at = now + self.interval_s / SUSPECT_SPEEDUP
                    return o
        return None

    def due(self, now: float | None = None) -> bool:
        if not self.enabled or not self._pending:
            return False
        now = now if now is not None else time.monotonic()
        return now >= self._next_at or (now >= self._next_suspect_at and any(o in self._pending for o in self._suspects))

    def run(self, measure, now: float | None = None) -> bool:
        """Audit one peer's pending updates: measure(origin, [(step, q), ...], batch_ids) -> g on
        our batches numbered batch_ids (never used before) along sum_t sign(q_t) n_t. True if
        one ran."""
        if not self.due(now):
            return False
        origin = self._pick(now if now is not None else time.monotonic())
        if origin is None:
            return False
        updates = list(self._pending.pop(origin))
        batches = SUSPECT_BATCHES if origin in self._suspects else 1
        ids = range(self.batches_drawn, self.batches_drawn + batches)
        self.batches_drawn += batches
        self.record(origin, updates, measure(origin, updates, ids))
        return True

    def record(self, origin: bytes, updates: list[tuple[int, int]], g: float) -> None:
        """g: this node's measurement along sum_t sign(q_t) n_t of updates [(step, q), ...]."""
        mass = sum(abs(q) for _, q in updates)
        if g == 0 or mass == 0 or not math.isfinite(g):
            return
        o = self.origins.setdefault(origin, OriginAudit())
        o.n += 1
        o.agree += g > 0
        o.mg += mass * g
        o.mg2 += (mass * g) ** 2
        o.evidence.append((updates[0][0], updates[-1][0], len(updates), mass, round(g, 6)))
        self.audits += 1
        if o.n >= MIN_SAMPLES and o.score <= -SUSPECT_Z:
            self._suspects.add(origin)
        else:
            self._suspects.discard(origin)

    def flagged(self) -> list[bytes]:
        return [o for o, a in self.origins.items() if a.n >= MIN_SAMPLES and a.score <= -self.flag_z]

    def status(self) -> dict:
        flagged, suspects = set(self.flagged()), set(self.suspects())
        return {"interval_s": self.interval_s, "flag_z": self.flag_z, "audits": self.audits,
                "flagged": sorted(o.hex() for o in flagged),
                "suspects": sorted(o.hex() for o in suspects),
                "origins": {o.hex(): {"samples": a.n, "agree": a.agree, "z": round(a.z, 2),
                                      "z_weighted": round(a.z_weighted, 2), "flagged": o in flagged,
                                      "suspect": o in suspects,
                                      "evidence": [list(e) for e in a.evidence]}
                            for o, a in sorted(self.origins.items())}}
