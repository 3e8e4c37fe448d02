"""One-byte quantizer of the projected gradient: unbiased stochastic rounding keyed by the seed.

    q = clamp(floor(g / q_scale) + [u < frac(g / q_scale)], -127, 127),  u = uniform(seed, QUANT_DOMAIN, 0)

For |g| <= 127 * q_scale, E_u[q * q_scale] = g exactly (the rounding is unbiased); beyond that
range q saturates at +-127 (biased towards 0: benches report the clipped fraction). -128 is never used so the
byte is symmetric. See docs/numerics.md.
"""
import math

from .rng import QUANT_DOMAIN, uniform

Q_MAX = 127


def quantize(g: float, seed: int, q_scale: float) -> int:
    """Projected gradient g (float) -> q in [-127, 127]. Deterministic in (g, seed, q_scale)."""
    if not math.isfinite(g):
        raise ValueError(f"projected gradient is not finite ({g}); the loss function returned inf/nan")
    x = g / q_scale
    if x >= Q_MAX:
        return Q_MAX
    if x <= -Q_MAX:
        return -Q_MAX
    f = math.floor(x)
    return int(f) + (1 if uniform(seed, QUANT_DOMAIN, 0) < x - f else 0)

