"""The steering rule, fed with the updates a replica applies (docs/security.md, "Steering").

An origin knows the seed of each of its steps before it publishes, so it can pick the sign
of q to follow the noise at one chosen weight and push that weight one way, inside every
rate cap and influence budget. Each origin's steps are checked in runs of W (steps 1..W,
W+1..2W, ...): `Replica.steering` sums q * noise per weight over the run and breaches when
some weight's sum is past sqrt(k2) honest standard deviations. A run is judged at its
checkpoints, its first W/2^c, ..., W/4, W/2 and W steps (c = steering_checkpoints), so an
origin that stops early is judged on what it published: it can move a weight by at most
about W/2^c |q| lr unjudged, not W |q| lr, for about twice the rule's work (W/2^c + ... + W
steps summed per run, under 2W). The verdict depends only on the origin's own signed
sequence, so every node that applied the prefix reaches the same one, whatever the arrival
order; a breaching origin is excluded from the run's first step on.

One SteeringGuard per replica, fed by whoever applies updates (the restore, then the
worker) in each origin's step order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("onebyte.node.train.steering")


@dataclass(frozen=True)
class Steered:
    """origin breached the steering rule in the run that starts at `step`; qs: its q of
    step `step` on, as far as they were applied (what must be taken back)."""
    origin: bytes
    step: int
    ratio: float
    qs: tuple


@dataclass
class _Run:
    start: int                       # first step of the run being collected
    qs: list = field(default_factory=list)


class SteeringGuard:
    def __init__(self, replica, seeder, window: int, k2: int, skip: bytes | None = None, checkpoints: int = 0):
        self.replica, self.seeder = replica, seeder
        self.window, self.k2 = window, k2
        # run lengths at which a run is judged: W >> c, ..., W >> 1, W (the distinct positive ones)
        self.points = frozenset(window >> k for k in range(checkpoints + 1) if window >> k > 0)
        self.skip = skip                      # our own origin: nobody checks itself
        self.runs: dict[bytes, _Run] = {}
        self.ratio: dict[bytes, float] = {}   # per origin, the largest ratio of a checked run (status)
        self.checked = 0                      # whole runs checked
        self.checks = 0                       # checks made (each checkpoint of each run)

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def prime(self, origin: bytes, applied: int, qs_of) -> None:
        """Start origin's current run from the log: applied steps are in the weights already;
        qs_of(first, last) gives their q (shorter if the log no longer holds them)."""
        if not self.enabled or origin == self.skip:
            return
        start = applied - applied % self.window + 1
        qs = list(qs_of(start, applied)) if applied >= start else []
        if len(qs) == applied - start + 1:
            self.runs[origin] = _Run(start, qs)

    def feed(self, origin: bytes, step: int, qs: list[int]) -> Steered | None:
        """Steps step, step + 1, ... of origin were applied with these q. Returns the breach
        if a run completed here breaks the rule (qs fed after it are in its Steered.qs)."""
        if not self.enabled or origin == self.skip or not qs:
            return None
        run = self.runs.get(origin)
        if run is None or run.start + len(run.qs) != step:
            # A first sight of the origin mid-run (a snapshot join, a log compacted past the
            # run's start): the run cannot be checked whole; start at the next boundary.
            nxt = step + (-(step - 1)) % self.window
            run = self.runs[origin] = _Run(nxt)
            qs, step = qs[nxt - step:], nxt
        for i, q in enumerate(qs):
            run.qs.append(int(q))
            if len(run.qs) in self.points:
                hit = self._check(origin, run)
                self.checked += len(run.qs) == self.window
                if hit is not None:
                    return Steered(origin, run.start, hit, tuple(run.qs) + tuple(int(x) for x in qs[i + 1:]))
            if len(run.qs) == self.window:
                self.runs[origin] = run = _Run(run.start + self.window)
        return None

    def feed_all(self, updates: list) -> list[Steered]:
        """feed() for [(origin, step, q)] in which each origin's steps are contiguous and in
        order (origins interleaved): the breaches, at most one per origin, each with every q
        of its origin applied from the breaching run on."""
        runs: dict[bytes, tuple[int, list]] = {}
        for o, s, q in updates:
            first, qs = runs.setdefault(o, (s, []))
            if s != first + len(qs):
                raise ValueError(f"steering guard: steps of origin {o.hex()[:16]} out of order ({s} after "
                                 f"{first + len(qs) - 1})")
            qs.append(q)
        return [hit for o, (first, qs) in runs.items() if (hit := self.feed(o, first, qs)) is not None]

    def _check(self, origin: bytes, run: _Run) -> float | None:
        updates = [self.seeder.update(origin, s, q) for s, q in enumerate(run.qs, run.start)]
        breach, ratio = self.replica.steering(updates, self.k2)
        self.checks += 1
        self.ratio[origin] = max(ratio, self.ratio.get(origin, 0.0))
        if breach:
            log.warning("origin %s steers single weights: steps %d..%d sum q * noise to %.0f honest variances "
                        "(rule: %d); excluded from step %d on (docs/security.md)", origin.hex()[:16], run.start,
                        run.start + len(run.qs) - 1, ratio, self.k2, run.start)
            self.runs.pop(origin, None)
            return ratio
        return None

    def status(self) -> dict:
        return {"window": self.window, "k2": self.k2, "checkpoints": sorted(self.points), "runs_checked": self.checked,
                "checks": self.checks,
                "largest_ratio": {o.hex(): round(r, 2) for o, r in sorted(self.ratio.items())}}
