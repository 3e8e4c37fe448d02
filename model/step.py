"""The local step: measure the loss around the replica's weights, turn it into own updates.

Two estimators, chosen by the genesis (Hyper.probes):

probes = 1, two-sided SPSA (MeZO):
    l+ = L(w + eps z),  l- = L(w - eps z),  g = (l+ - l-) / (2 eps),  q = quantize(g)

probes = N >= 2, N one-sided probes (FZOO, arXiv 2506.09034):
    l_k = L(w + eps z_k),  sigma = std(l_1 .. l_N),  g_k = (l_k - b) / sigma,
    b = L(w) (probe_baseline "clean", FZOO's: one more forward pass) or mean(l_1 .. l_N)
    ("mean", a group-relative baseline: N passes, and the g_k of a step sum to 0)
    q_k = quantize(g_k), each probe its own update on consecutive own steps.
    Dividing by the probes' loss spread (about eps |grad|) makes the step a normalised-SGD
    step whose size no longer follows the gradient's scale: N updates for N + 1 (or N)
    forward passes, where SPSA spends 2 per update. g_k lies in about [-sqrt(N), sqrt(N)],
    so q_scale = 1/32 (range +-3.97) keeps the byte's resolution. With the clean baseline
    the curvature term eps^2 z^T H z / 2 > 0 biases every g_k upward near a minimum, so
    sum q drifts positive (a signed-influence budget sees it); the mean baseline cancels it.

A probe only shows state + eps z_k on the weights (Replica._apply(commit=False)); the state
never holds a perturbation, so nothing needs restoring exactly: the step ends with one fused
commit of its own updates, the same integers a peer adds when it replays them.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .grid import update_coefficients_many
from .privacy import unsupported
from .quantize import quantize


class LocalStep:
    """The estimator of one replica. Its only state is the running mean of g**2 of
    g_normalize = "rms" (local: only q travels)."""

    def __init__(self, replica):
        self.replica = replica
        self.hyper = replica.hyper
        self._g2 = None

    @torch.no_grad()
    def __call__(self, loss_fn: Callable, batch, probes: Sequence[tuple],
                 privatize: Callable | None = None) -> tuple[list[int], float]:
        """privatize (model/privacy.py): the private step, two-sided, each example's g clipped
        and the sum noised before quantization; batch may then be empty (Poisson sampling)."""
        probes = [_probe(p) for p in probes]
        if len(probes) != self.hyper.probes:
            raise ValueError(f"the genesis measures {self.hyper.probes} probe(s) per step, got {len(probes)}")
        if privatize is not None and (why := unsupported(self.hyper)):
            raise ValueError(why)
        rep = self.replica
        try:
            if privatize is not None:
                gs, loss = self._private(loss_fn, batch, probes[0], privatize)
            elif len(probes) == 1:
                gs, loss = self._spsa(loss_fn, batch, probes[0])
            else:
                gs, loss = self._fzoo(loss_fn, batch, probes)
            qs = [quantize(self._normalized(g), seed, self.hyper.q_scale) for g, (seed, _, _) in zip(gs, probes)]
        except BaseException:
            rep._show()   # a failing loss_fn must not leave a perturbation on the weights
            raise
        seeds, steps, vseeds = zip(*probes)
        rep._apply(seeds, vseeds, update_coefficients_many(rep.grid, self.hyper, seeds, qs, steps), commit=True)
        return qs, loss

    @torch.no_grad()
    def directional(self, loss_fn: Callable, batch, updates: Sequence[tuple], held: bool) -> float:
        """(L(w + eps u) - L(w - eps u)) / (2 eps) along u = sum_t sign(q_t) n_t, the noises of
        updates [(seed, q, step, vseed), ...]: what this node's data says of a peer's updates
        (node/train/audit.py). held: the weights hold these updates (an audit of applied ones), so w
        is the weights without them, shown in the same fused pass: measured after its own step,
        an update's direction would show the curvature that step met (about -lr |q| tr(H) per
        update, for honest and flipped q alike) besides the gradient. The state is untouched.
        At most max_fused updates: a probe is one fused pass."""
        if not updates or len(updates) > self.hyper.max_fused:
            raise ValueError(f"directional takes 1..{self.hyper.max_fused} updates, got {len(updates)}")
        rep = self.replica
        seeds, vseeds, applied = rep._updates(updates)
        signs = np.sign([q for _, q, *_ in updates]).astype(np.int64)[:, None]
        probe = signs * rep.grid.eps_k[None, :]                    # [K, T]: eps along sign(q_t) n_t
        base = -applied if held else np.zeros_like(applied)
        try:
            l_plus, l_minus = self._two_sided(loss_fn, batch, seeds, vseeds, probe, base)
        finally:
            rep._show()
        return (l_plus - l_minus) / (2.0 * self.hyper.eps)

    def _two_sided(self, loss_fn, batch, seeds, vseeds, probe, base=0) -> tuple[float, float]:
        """L at the weights showing state + base + probe, then state + base - probe (integer
        coefficients [K, T] of the noises (seeds, vseeds)): one fused pass each."""
        ls = []
        for sign in (+1, -1):
            self.replica._apply(seeds, vseeds, base + sign * probe, commit=False)
            ls.append(float(loss_fn(self.replica.model, batch)))
        return ls[0], ls[1]

    def _measure(self, loss_fn, batch, probe, sign: int) -> float:
        seed, _, vseed = probe
        self.replica._apply([seed], [vseed], [sign * self.replica.grid.eps_k], commit=False)
        return float(loss_fn(self.replica.model, batch))

    def _spsa(self, loss_fn, batch, probe):
        seed, _, vseed = probe
        l_plus, l_minus = self._two_sided(loss_fn, batch, [seed], [vseed], self.replica.grid.eps_k[None, :])
        return [(l_plus - l_minus) / (2.0 * self.hyper.eps)], 0.5 * (l_plus + l_minus)

    def _private(self, loss_fn, batch, probe, privatize):
        """Per-example two-sided g, privatized (clip, sum, noise, divide) before quantization."""
        if not batch:   # Poisson sampling drew nobody: the update is noise alone
            return [privatize(torch.zeros(0, dtype=torch.float64))], float("nan")
        seed, _, vseed = probe
        eps_k = self.replica.grid.eps_k
        self.replica._apply([seed], [vseed], [eps_k], commit=False)
        l_plus = loss_fn.per_example(self.replica.model, batch)
        self.replica._apply([seed], [vseed], [-eps_k], commit=False)
        l_minus = loss_fn.per_example(self.replica.model, batch)
        g = (l_plus - l_minus) / (2.0 * self.hyper.eps)
        return [privatize(g)], float(0.5 * (l_plus + l_minus).mean())

    def _fzoo(self, loss_fn, batch, probes):
        clean = self.hyper.probe_baseline == "clean"
        if clean:
            self.replica._show()
            l0 = float(loss_fn(self.replica.model, batch))
        ls = [self._measure(loss_fn, batch, p, +1) for p in probes]
        mean = sum(ls) / len(ls)
        base = l0 if clean else mean
        sigma = math.sqrt(sum((x - mean) ** 2 for x in ls) / (len(ls) - 1))
        if not (math.isfinite(sigma) and math.isfinite(base)):
            raise ValueError(f"the loss is not finite (probes {ls}); the loss function returned inf/nan")
        # All probes equal (a flat region, or a loss blind to these weights): no direction.
        return [(x - base) / sigma if sigma > 0 else 0.0 for x in ls], base

    def _normalized(self, g: float) -> float:
        """g / running RMS of this node's projected gradients (g_normalize = "rms").

        The mean includes g itself, so |result| <= 1/sqrt(1 - beta): the quantizer range is known."""
        if self.hyper.g_normalize == "none" or not math.isfinite(g):
            return g
        beta = self.hyper.g_normalize_beta
        self._g2 = g * g if self._g2 is None else beta * self._g2 + (1.0 - beta) * g * g
        return g / math.sqrt(self._g2) if self._g2 > 0 else 0.0


def _probe(p) -> tuple[int, int, int]:
    """(seed, step[, vseed]) -> three ints."""
    if not isinstance(p, (tuple, list)) or len(p) not in (2, 3):
        raise ValueError(f"a probe is (seed, step[, vseed]), got {p!r}")
    from .replica import _check_update
    seed, _, step, vseed = _check_update((p[0], 0, p[1], p[2] if len(p) == 3 else 0))
    return seed, step, vseed
