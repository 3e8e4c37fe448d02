"""The node's privacy budget: (epsilon, delta)-DP for each of its training rows, spent one own
step at a time (docs/privacy.md).

Each private step is a Poisson-subsampled Gaussian mechanism (model/privacy.py: sample rate
p = batch_size / rows, noise multiplier sigma); `dp_accounting`'s RDP accountant composes them.
Every own step of this key counts, the ones before privacy was switched on too (conservative),
and the count is the node's own step number, which its log makes durable: a restart spends
nothing again and forgets nothing. When the next step would pass the budget the node stops
producing (it keeps replaying and serving), and says so once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger("onebyte.node.train.privacy")


@lru_cache(maxsize=4096)
def epsilon(steps: int, sample_rate: float, noise_multiplier: float, delta: float) -> float:
    """epsilon after `steps` Poisson-sampled Gaussian steps (RDP accountant of dp_accounting)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    import dp_accounting
    from dp_accounting import rdp
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps))
    return float(acc.get_epsilon(delta))


def noise_for(budget: float, steps: int, sample_rate: float, delta: float) -> float:
    """The smallest noise multiplier (to 0.1%) whose `steps` steps stay within `budget`."""
    lo, hi = 0.05, 1.0
    while epsilon(steps, sample_rate, hi, delta) > budget:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier keeps {steps} steps within epsilon {budget}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon(steps, sample_rate, mid, delta) > budget else (lo, mid)
    return hi


@dataclass
class PrivacyBudget:
    budget: float            # epsilon this node may spend
    delta: float
    clip: float
    noise_multiplier: float
    sample_rate: float       # batch_size / training rows (Poisson sampling)
    steps: int = 0           # own steps taken by this key (the log's own step count)
    exhausted: bool = False

    def allows(self, step: int) -> bool:
        """May the node take own step `step` without passing its budget? Steps 1..step-1 of
        this key are spent (its log holds them: a restart counts them again, never less)."""
        self.steps = step - 1
        if self.exhausted:
            return False
        if epsilon(step, self.sample_rate, self.noise_multiplier, self.delta) > self.budget:
            self.exhausted = True
            log.warning("privacy budget spent: epsilon %.3f of %.3f (delta %g) after %d own steps; not producing "
                        "any more, still replaying and serving (docs/privacy.md)", self.spent(), self.budget,
                        self.delta, self.steps)
            return False
        return True

    def spent(self) -> float:
        return epsilon(self.steps, self.sample_rate, self.noise_multiplier, self.delta)

    def status(self) -> dict:
        return {"epsilon_spent": round(self.spent(), 4), "epsilon_budget": self.budget, "delta": self.delta,
                "clip": self.clip, "noise_multiplier": round(self.noise_multiplier, 4),
                "sample_rate": round(self.sample_rate, 6), "steps": self.steps, "exhausted": self.exhausted}
