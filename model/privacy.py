"""The private step's mechanism (DP-ZO, Tang et al., arXiv 2401.04343): what one example can
change in the one number a node publishes per update is bounded, then hidden in noise.

    g_i  = (L_i(w + eps z) - L_i(w - eps z)) / (2 eps)      each example's projected gradient
    g    = (sum_i clip(g_i, -C, C) + N(0, (sigma C)^2)) / B  B: the expected batch size
    q    = quantize(g)                                        post-processing (model/quantize.py)

Adding or removing one example moves sum_i clip(g_i) by at most C, so with batches drawn by
Poisson sampling (each example in with probability B / N) each update is a subsampled Gaussian
mechanism of noise multiplier sigma; node/privacy.py composes them with an accountant. The
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


@dataclass(frozen=True)
class Mechanism:
    clip: float              # C: the bound on one example's projected gradient
    noise_multiplier: float  # sigma: the noise's standard deviation in units of C
    expected_batch: float    # B = sample rate * examples: what the noisy sum is divided by

    def __post_init__(self):
        if not (self.clip > 0 and self.noise_multiplier >= 0 and self.expected_batch > 0):
            raise ValueError(f"privacy: clip > 0, noise_multiplier >= 0 and a positive batch needed, got {self}")


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
        self._recent: deque[float] = deque(maxlen=CLIP_WINDOW)
        # Replaced whole after each step (one reference swap), so another thread reads a
        # consistent dict without a lock.
        self.clip_summary: dict | None = None

    def __call__(self, g_examples: torch.Tensor) -> float:
        m = self.mechanism
        g = g_examples.double()
        clipped = float(g.clamp(-m.clip, m.clip).sum()) if len(g) else 0.0
        noise = float(self._rng.normal(0.0, m.noise_multiplier * m.clip)) if m.noise_multiplier else 0.0
        self._summarize(g.abs().tolist())
        return (clipped + noise) / m.expected_batch

    def _summarize(self, g_abs: list[float]) -> None:
        self._recent.extend(g_abs)
        if not self._recent:
            return
        a = np.fromiter(self._recent, dtype=np.float64)
        p50, p90 = np.percentile(a, [50, 90])
        self.clip_summary = {"clipped_fraction": round(float((a > self.mechanism.clip).mean()), 4),
                             "g_abs_p50": float(f"{p50:.4g}"), "g_abs_p90": float(f"{p90:.4g}"),
                             "examples": len(a)}
