"""Auditing peers' updates on this node's own data (docs/security.md, "Poisoning").

A member can publish updates whose q has the wrong sign (or train on flipped labels): every q
stays inside every budget and rule, yet the swarm's gain is erased. No rule over one origin's
sequence can see that; a measurement on data can. Every `audit_interval_s` the worker takes the
newest update it applied of one peer (peers in turn) and measures, on a batch of its own
training data, the two-sided projected gradient g along that update's noise (two forward
passes; nothing is applied: Replica.directional). For an honest origin q and g estimate the
same directional derivative on different data: their signs agree more often than not. For a
sign flipper they disagree. Per origin:

    n = audited updates (q and g both non-zero),  a = agreements - disagreements
    z = a / sqrt(n)                          the sign test: about N(0, 1) if q ignored the gradient
    z_weighted = sum_t q_t g_t / sqrt(sum_t (q_t g_t)^2)
                                             the same test, each audit weighted by |q_t g_t|

The weighted score counts a confident measurement (large |g|) of a large claimed step (large
|q|) for more than a near-zero one, whose sign is mostly noise, and it weighs each audit by
the harm the update can do (|q|). Both are sums of independent random signs when q ignores
the gradient (given the magnitudes), so Hoeffding's bound holds for each whatever the
distribution of the magnitudes: P(score <= -k) <= exp(-k^2 / 2).

An origin whose score sinks below -SUSPECT_Z (n >= MIN_SAMPLES) is a *suspect*: besides its turn
in the round, its newest update is audited every interval_s / SUSPECT_SPEEDUP. The round alone
gives each of P peers one audit per P * interval_s, and a flipper's score falls like sqrt(n):
at the rates measured on SST-2 (docs/security.md) it needed about 200 audits, 20 minutes of
rounds. Spending the extra forward passes only where the evidence already points settles the
question in minutes, and an honest origin that dips to -2 by chance is measured more, which
brings its score back up. The flag below is checked after each audit either way.

An origin is *flagged* once n >= MIN_SAMPLES and min(z, z_weighted) <= -flag_z (default 4: by
that bound at most 2 exp(-8) = 7e-4 per check of an origin whose q ignores the gradient; an
honest origin's q follows it, which makes a flag rarer still). Flagging excludes nothing (it is one node's
measurement on its own data, not a rule every node evaluates alike): status and metrics show it
with the evidence an operator needs to revoke the key (the audited steps, their q and the g
this node measured).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

MIN_SAMPLES = 16
SUSPECT_Z = 2.0       # a score this low (after MIN_SAMPLES audits) makes an origin a suspect
SUSPECT_SPEEDUP = 4   # a suspect's newest update is audited this many times per interval_s
EVIDENCE = 8          # audited (step, q, g) kept per origin for status


@dataclass
class OriginAudit:
    n: int = 0
    agree: int = 0
    qg: float = 0.0       # sum_t q_t g_t
    qg2: float = 0.0      # sum_t (q_t g_t)^2
    evidence: deque = field(default_factory=lambda: deque(maxlen=EVIDENCE))

    @property
    def z(self) -> float:
        return (2 * self.agree - self.n) / math.sqrt(self.n) if self.n else 0.0

    @property
    def z_weighted(self) -> float:
        return self.qg / math.sqrt(self.qg2) if self.qg2 > 0 else 0.0


class Audit:
    def __init__(self, interval_s: float, flag_z: float = 4.0, skip: bytes | None = None):
        self.interval_s, self.flag_z, self.skip = interval_s, flag_z, skip
        self.origins: dict[bytes, OriginAudit] = {}
        self._latest: dict[bytes, tuple[int, int]] = {}   # origin -> (step, q) newest applied, not yet audited
        self._order: deque = deque()                      # origins waiting their turn in the round
        self._next_at = 0.0                               # the round's next audit
        self._next_suspect_at = 0.0                       # the suspects' next audit
        self.audits = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def offer(self, origin: bytes, step: int, q: int) -> None:
        """An update the worker applied (called in step order; the newest per origin is kept)."""
        if not self.enabled or origin == self.skip or q == 0:
            return
        if origin not in self._order:
            self._order.append(origin)
        self._latest[origin] = (step, q)

    def suspects(self) -> list[bytes]:
        """Origins whose score is low enough to be audited faster, lowest score first."""
        low = [(min(a.z, a.z_weighted), o) for o, a in self.origins.items()
               if a.n >= MIN_SAMPLES and min(a.z, a.z_weighted) <= -SUSPECT_Z]
        return [o for _, o in sorted(low)]

    def _pick(self, now: float) -> bytes | None:
        """The origin to audit now: a suspect with a new update when the suspects' audit is due,
        else the next origin of the round when the round's is; None when nothing is due."""
        if now >= self._next_suspect_at:
            for o in self.suspects():
                if o in self._latest:
                    self._next_suspect_at = now + self.interval_s / SUSPECT_SPEEDUP
                    return o
        if now >= self._next_at:
            while self._order:
                o = self._order.popleft()
                if o in self._latest:
                    self._next_at = now + self.interval_s
                    return o
        return None

    def due(self, now: float | None = None) -> bool:
        if not self.enabled or not self._latest:
            return False
        now = now if now is not None else time.monotonic()
        return now >= self._next_at or (now >= self._next_suspect_at and any(o in self._latest for o in self.suspects()))

    def run(self, measure, now: float | None = None) -> bool:
        """Audit one peer's newest update: measure(origin, step, q) -> g on our data. True if one ran."""
        if not self.due(now):
            return False
        origin = self._pick(now if now is not None else time.monotonic())
        if origin is None:
            return False
        step, q = self._latest.pop(origin)
        self.record(origin, step, q, measure(origin, step, q))
        return True

    def record(self, origin: bytes, step: int, q: int, g: float) -> None:
        if g == 0 or q == 0 or not math.isfinite(g):
            return
        o = self.origins.setdefault(origin, OriginAudit())
        o.n += 1
        o.agree += (q > 0) == (g > 0)
        o.qg += q * g
        o.qg2 += (q * g) ** 2
        o.evidence.append((step, q, round(g, 6)))
        self.audits += 1

    def flagged(self) -> list[bytes]:
        return [o for o, a in self.origins.items()
                if a.n >= MIN_SAMPLES and min(a.z, a.z_weighted) <= -self.flag_z]

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
