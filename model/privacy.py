"""The private step's mechanism (DP-ZO, Tang et al., arXiv 2401.04343): what one example can
change in the one number a node publishes per update is bounded, then hidden in noise.

    g_i  = (L_i(w + eps z) - L_i(w - eps z)) / (2 eps)      each example's projected gradient
    g    = (sum_i clip(g_i, -C, C) + N(0, (sigma C)^2)) / B  B: the expected batch size
    q    = quantize(g)                                        post-processing (model/quantize.py)

Adding or removing one example moves sum_i clip(g_i) by at most C, so with batches drawn by
Poisson sampling (each example in with probability B / N) each update is a subsampled Gaussian
mechanism of noise multiplier sigma; node/train/privacy.py composes them with an accountant.

Adaptive clipping (Andrew et al., arXiv 1905.03871, "Differentially Private Learning with
Adaptive Clipping"), when a quantile gamma is set: each step also releases a noised count of
the examples inside C, b = sum_i (1[|g_i| <= C] - 1/2) + N(0, sigma_b^2), and moves C toward
the gamma-quantile of |g_i|: C <- C exp(-eta (b / B + 1/2 - gamma)). The pair (sum, count) has
per-example sensitivity (C, 1/2), so it is one Gaussian mechanism of noise multiplier sigma
when 1 / sigma^2 = 1 / sigma_sum^2 + 1 / (2 sigma_b)^2: the sum gets a little more noise
(sigma_sum), the accountant is unchanged, and the new C is post-processing of released values. The
noise comes from the operating system's generator, never from the update's public seed (an
observer who could regenerate it would subtract it). Quantizing g with the seed's stochastic
rounding is post-processing: it cannot weaken the guarantee. docs/privacy.md.
"""
from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch


def unsupported(hyper) -> str | None:
    """Why a genesis' step cannot be made private (None: it can): the clip must bound what one
    example changes in the one number published, so the step is two-sided SPSA, not a
    multi-probe step normalised by the probes' spread nor one normalised by a running RMS."""
    if hyper.probes != 1 or hyper.g_normalize != "none":
        return (f"private steps are two-sided SPSA (genesis probes = 1, g_normalize = \"none\"); this "
                f"genesis has probes = {hyper.probes}, g_normalize = {hyper.g_normalize!r}")
    return None


CLIP_RATE = 0.2     # eta: C moves by at most a factor exp(eta / 2) per step


@dataclass(frozen=True)
class Mechanism:
    clip: float              # C: the bound on one example's projected gradient (the first C, if adaptive)
    noise_multiplier: float  # sigma: the noise's standard deviation in units of C
    expected_batch: float    # B = sample rate * examples: what the noisy sum is divided by
    clip_quantile: float = 0.0   # gamma > 0: C adapts to this quantile of |g_i| (adaptive clipping)

    def __post_init__(self):
        if not (self.clip > 0 and self.noise_multiplier >= 0 and self.expected_batch > 0):
            raise ValueError(f"privacy: clip > 0, noise_multiplier >= 0 and a positive batch needed, got {self}")
        if not 0 <= self.clip_quantile < 1:
            raise ValueError(f"privacy: clip_quantile in [0, 1), got {self.clip_quantile}")

    def noise_split(self) -> tuple[float, float]:
        """(sigma_sum, sigma_b): the sum's noise multiplier and the count's noise, together one
        Gaussian mechanism of multiplier sigma. The count gets sigma_b = max(B / 20, sigma) (B / 20
        is Andrew et al.'s choice; at least sigma keeps the sum's share of the noise above 3/4)."""
        sigma = self.noise_multiplier
        if not self.clip_quantile or sigma == 0:
            return sigma, 0.0
        sigma_b = max(self.expected_batch / 20, sigma)
        return (sigma ** -2 - (2 * sigma_b) ** -2) ** -0.5, sigma_b


CLIP_WINDOW = 4096   # recent per-example |g| the clip summary is taken over


class Privatizer:
    """Clip, sum, add noise, divide: one private g from the per-example g of a batch.

    It also keeps how the clip bites (`clip_summary`), for the operator who tunes C: a C far
    below the typical |g_i| turns every example into its sign (a biased step), one far above
    it buys noise for nothing (the noise scales with C). These numbers stay on the node (its
    status), never on the wire."""

    def __init__(self, mechanism: Mechanism, rng: np.random.Generator | None = None):
        self.mechanism = mechanism
        self._rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self.clip = mechanism.clip                           # C now (moves if adaptive)
        self._sigma_sum, self._sigma_b = mechanism.noise_split()
        self._recent: deque[float] = deque(maxlen=CLIP_WINDOW)
        # Replaced whole after each step (one reference swap), so another thread reads a
        # consistent dict without a lock.
        self.clip_summary: dict | None = None

    def __call__(self, g_examples: torch.Tensor) -> float:
        m, c = self.mechanism, self.clip
        g = g_examples.double()
        clipped = float(g.clamp(-c, c).sum()) if len(g) else 0.0
        noise = float(self._rng.normal(0.0, self._sigma_sum * c)) if self._sigma_sum else 0.0
        if m.clip_quantile:
            self._adapt(int((g.abs() <= c).sum()) - len(g) / 2)
        self._summarize(g.abs().tolist())
        return (clipped + noise) / m.expected_batch

    def _adapt(self, centred_count: float) -> None:
        """Move C toward the clip quantile from the noised share of examples inside C."""
        m = self.mechanism
        b = centred_count + (float(self._rng.normal(0.0, self._sigma_b)) if self._sigma_b else 0.0)
        self.clip *= float(np.exp(-CLIP_RATE * (b / m.expected_batch + 0.5 - m.clip_quantile)))

    def _summarize(self, g_abs: list[float]) -> None:
        self._recent.extend(g_abs)
        if not self._recent:
            return
        a = np.fromiter(self._recent, dtype=np.float64)
        p50, p90 = np.percentile(a, [50, 90])
        self.clip_summary = {"clip": float(f"{self.clip:.4g}"),
                             "clipped_fraction": round(float((a > self.clip).mean()), 4),
                             "g_abs_p50": float(f"{p50:.4g}"), "g_abs_p90": float(f"{p90:.4g}"),
                             "examples": len(a)}
