"""onebyte-rng-v1: portable, counter-based noise keyed by (seed, element index).

Everything here is integer arithmetic modulo 2**64 (splitmix64's finaliser), so the
same bits come out of Python ints, numba uint64, Triton uint64 and torch int64
(the oracle in tests/model/oracle.py) on any device and any torch version.
docs/rng.md is the specification; its test vectors are checked by tests/model/test_rng.py.

    key(seed)      = mix64(seed ^ NOISE_DOMAIN)
    word(seed, w)  = mix64(key(seed) + w * GAMMA)              # one 64-bit word per 64 indices
    bit(seed, i)   = (word(seed, i >> 6) >> (i & 63)) & 1
    z(seed, i)     = +1 if bit == 0 else -1                    # Rademacher

Uniforms for stochastic rounding come from the same mixer under other domains, so
they are independent of the noise bits of the same seed.

Low-rank noise (Hyper.perturbation = "lowrank") reads the same sign stream twice per
matrix: U from the update's seed, V from a window seed that an origin's consecutive steps
share (`window_seed`), so every node derives both from (swarm, origin, step) alone.
"""
import hashlib

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15  # golden-ratio increment of splitmix64
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
# Domain separators (ASCII tags read as little-endian u64), so noise, quantizer and
# coefficient rounding draw unrelated streams from one seed.
NOISE_DOMAIN = int.from_bytes(b"ob-noise", "little")
QUANT_DOMAIN = int.from_bytes(b"ob-quant", "little")
COEF_DOMAIN = int.from_bytes(b"ob-coeff", "little")
RNG_ID = "onebyte-rng-v1"


def mix64(z: int) -> int:
    """splitmix64 finaliser on a Python int (mod 2**64): a bijection with full avalanche."""
    z &= M64
    z = ((z ^ (z >> 30)) * MIX1) & M64
    z = ((z ^ (z >> 27)) * MIX2) & M64
    return z ^ (z >> 31)


def noise_key(seed: int) -> int:
    """Per-update key; computed once per update, so kernels only pay for word()."""
    return mix64(seed ^ NOISE_DOMAIN)


def noise_word(seed: int, w: int) -> int:
    """The 64 noise bits of element indices [64 w, 64 w + 64): bit b belongs to index 64 w + b."""
    return mix64(noise_key(seed) + w * GAMMA)


def noise_signs(seed: int, indices) -> list[int]:
    """Reference (slow, pure Python) Rademacher signs z in {+1, -1} for the given indices."""
    out = []
    for i in indices:
        bit = (noise_word(seed, i >> 6) >> (i & 63)) & 1
        out.append(1 - 2 * bit)
    return out


def uniform(seed: int, domain: int, j: int) -> float:
    """A uniform in [0, 1) with 53 random bits: exact in float64, identical everywhere."""
    h = mix64(mix64(seed ^ domain) + j * GAMMA)
    return (h >> 11) * (1.0 / (1 << 53))


def window_seed(swarm_id: bytes, origin: bytes, step: int, window: int) -> int:
    """Seed of the low-rank V factor of update (origin, step): one per `window` consecutive
    steps of the origin (steps 1..window share window 0), a pure function of its own sequence."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not isinstance(step, int) or isinstance(step, bool) or not 1 <= step < 1 << 64:
        raise ValueError(f"update step must be an int in [1, 2**64), got {step!r}")
    h = hashlib.blake2b(b"onebyte-vseed-v1" + bytes(swarm_id) + bytes(origin)
                        + ((step - 1) // window).to_bytes(8, "little"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


class Seeder:
    """The noise of a swarm's updates: (origin, step, q) -> the (seed, q, step, vseed) a
    Replica applies. vseed is 0 unless the genesis asks for low-rank noise (window > 0)."""

    def __init__(self, swarm_id: bytes, window: int = 0):
        self.swarm_id, self.window = bytes(swarm_id), int(window)
        self._last = (None, -1, 0)   # (origin, window index, vseed): consecutive steps share it

    @classmethod
    def for_hyper(cls, swarm_id: bytes, hyper) -> "Seeder":
        return cls(swarm_id, hyper.lowrank_window if hyper.perturbation == "lowrank" else 0)

    def seeds(self, origin: bytes, step: int) -> tuple[int, int]:
        """(seed, vseed) of update (origin, step)."""
        seed = update_seed(self.swarm_id, origin, step)
        if not self.window:
            return seed, 0
        o, w, v = self._last
        if o != origin or w != (step - 1) // self.window:
            v = window_seed(self.swarm_id, origin, step, self.window)
            self._last = (origin, (step - 1) // self.window, v)
        return seed, v

    def probes(self, origin: bytes, first: int, n: int) -> list[tuple[int, int, int]]:
        """[(seed, step, vseed)] of the origin's steps first .. first + n - 1: one local step's probes."""
        return [(seed, step, vseed) for step in range(first, first + n) for seed, vseed in [self.seeds(origin, step)]]

    def update(self, origin: bytes, step: int, q: int) -> tuple[int, int, int, int]:
        seed, vseed = self.seeds(origin, step)
        return seed, q, step, vseed


def update_seed(swarm_id: bytes, origin: bytes, step: int) -> int:
    """Seed (uint64) of update (origin, step) in a swarm; see contracts: blake2b-64 of the ids."""
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 1 << 64:
        raise ValueError(f"update step must be an int in [0, 2**64), got {step!r}")
    h = hashlib.blake2b(b"onebyte-seed-v1" + bytes(swarm_id) + bytes(origin)
                        + step.to_bytes(8, "little"), digest_size=8)
    return int.from_bytes(h.digest(), "little")
