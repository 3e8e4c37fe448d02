"""The influence budget: how far one origin may push the weights per window of its own steps.

A coherent publisher (one that picks q = 127 * sign(z_u(i)), which it can: it knows the
seed of its next step) moves weight i by up to s * |q| / 127 per update, s = Hyper.max_step().
Bounding, over every window of `window` consecutive steps of one origin,

    sum |q|  <= max_abs      (how far it can move any one weight, whatever the signs)
    |sum q|  <= max_sum      (a constant push, e.g. q = +127 every step)

bounds any single origin's coherent drift to s * max_abs / 127 per window.  The rule
reads nothing but the origin's own signed sequence, which every node delivers in step
order from step 1, so every node finds the same first breaking step k in any arrival
order (push or pull, any record split): steps 1..k-1 are delivered everywhere, k and
later nowhere.  docs/protocol.md (influence budget) is the spec; docs/security.md says
what it does and does not bound.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

ABS_SUM = "abs_sum"        # sum of |q| over the window above max_abs
SIGNED_SUM = "signed_sum"  # |sum of q| over the window above max_sum


@dataclass(frozen=True)
class Breach:
    """The first step of an origin that breaks the budget, and which bound it broke."""
    step: int
    reason: str


class InfluenceWindow:
    """One origin's last `window` q values and their two running sums.

    Steps are fed in order; feed() stops at the first q whose window breaks a bound."""
    __slots__ = ("window", "max_abs", "max_sum", "qs", "abs_sum", "signed_sum", "next_step")

    def __init__(self, window: int, max_abs: int, max_sum: int, next_step: int = 1):
        self.window, self.max_abs, self.max_sum = window, max_abs, max_sum
        self.qs: deque = deque()
        self.abs_sum = 0
        self.signed_sum = 0
        self.next_step = next_step   # the step the next q fed belongs to

    def feed(self, first_step: int, qs) -> Breach | None:
        """Take qs (signed ints) as steps first_step..; stop at, and return, the first breach."""
        if first_step != self.next_step:
            raise ValueError(f"influence window fed step {first_step}, expected {self.next_step}")
        win, ring = self.window, self.qs
        for i, q in enumerate(qs):
            old = ring.popleft() if len(ring) == win else 0
            a = self.abs_sum + abs(q) - abs(old)
            s = self.signed_sum + q - old
            if a > self.max_abs or abs(s) > self.max_sum:
                # (the window is left one short: a breaching origin is never fed again)
                return Breach(first_step + i, ABS_SUM if a > self.max_abs else SIGNED_SUM)
            ring.append(q)
            self.abs_sum, self.signed_sum = a, s
            self.next_step += 1
        return None


class InfluenceBudget:
    """The rule for every origin: per-origin windows and the origins it excluded.

    window == 0 disables it (every feed passes)."""

    def __init__(self, window: int, max_abs: int, max_sum: int):
        if window < 0 or max_abs < 0 or max_sum < 0:
            raise ValueError("influence budget: window and bounds must be >= 0")
        self.window, self.max_abs, self.max_sum = window, max_abs, max_sum
        self.windows: dict[bytes, InfluenceWindow] = {}
        self.excluded: dict[bytes, Breach] = {}

    @classmethod
    def from_config(cls, config) -> "InfluenceBudget":
        return cls(config.influence_window, config.influence_max_abs, config.influence_max_sum)

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def excluded_from(self, origin: bytes) -> int | None:
        """The first step of origin that is never delivered (None: not excluded)."""
        b = self.excluded.get(origin)
        return b.step if b is not None else None

    def exclude(self, origin: bytes, step: int, reason: str) -> bool:
        """Exclude origin from step on for another reason (an equivocation proof,
        protocol/equivocation.py); the lower step wins.  True if the exclusion moved."""
        cur = self.excluded.get(origin)
        if cur is not None and cur.step <= step:
            return False
        self.excluded[origin] = Breach(step, reason)
        return True

    def admit(self, origin: bytes, first_step: int, qs) -> int:
        """How many of qs (steps first_step.., the next ones of origin in order) are within
        budget and below the origin's exclusion; on a breach the origin is excluded from
        that step on, and stays excluded."""
        cut = self.excluded_from(origin)
        if cut is not None:
            # Steps below a proof's step are still delivered and counted, so a breach below
            # it is found the same everywhere (after a breach nothing below is left).
            qs = qs[:max(0, cut - first_step)]
        if not qs:
            return 0
        if not self.enabled:
            return len(qs)
        return self._feed(origin, first_step, qs)

    def _feed(self, origin: bytes, first_step: int, qs) -> int:
        w = self.windows.get(origin)
        if w is None or w.next_step != first_step:
            # A history that does not start at step 1 (a snapshot join) or has a hole: the
            # budget counts from here (docs/security.md says what that leaves open).
            w = self.windows[origin] = InfluenceWindow(self.window, self.max_abs, self.max_sum,
                                                       first_step)
        breach = w.feed(first_step, qs)
        if breach is None:
            return len(qs)
        self.excluded[origin] = min(breach, self.excluded.get(origin, breach), key=lambda b: b.step)
        del self.windows[origin]
        return breach.step - first_step


def first_breach(budget_args: tuple, qs, first_step: int = 1) -> Breach | None:
    """The first breaking step of one origin's whole sequence (qs from first_step on):
    what a node replaying its log (or a test) computes without an engine."""
    window, max_abs, max_sum = budget_args
    if window <= 0:
        return None
    return InfluenceWindow(window, max_abs, max_sum, first_step).feed(first_step, list(qs))
