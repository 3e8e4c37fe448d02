"""Hyper: the genesis hyper-parameters model/ needs. Immutable, plain types (TOML-serialisable).

Every node of a swarm must hold the same Hyper: the update coefficients, the grid and the
noise are pure functions of (base weights, Hyper, seed, q, step).
"""
import dataclasses
import math
import re
from dataclasses import dataclass

from .rng import RNG_ID


PERTURBATIONS = ("rademacher", "lowrank", "sparse")


class HyperError(ValueError):
    """A hyper-parameter is invalid; the message names the field and the allowed values."""


@dataclass(frozen=True)
class Hyper:
    lr: float = 1e-6                 # learning rate: update = -lr(step) * q * q_scale * z (MeZO range 1e-7..1e-5)
    lr_schedule: str = "constant"    # "constant" or "linear": lr * max(0, 1 - step / lr_decay_steps)
    lr_decay_steps: int = 0          # origin steps until a linear schedule reaches 0 (needed only for "linear")
    eps: float = 1e-3                # SPSA perturbation scale (MeZO default); snapped per tensor onto the grid
    q_scale: float = 0.5             # quantizer step: q = round_stochastic(g / q_scale) in [-127, 127], so
                                     # |g| <= 63.5 is represented without clipping (docs/numerics.md)
    perturbation: str = "rademacher" # noise kind (docs/rng.md): "rademacher" (a sign per weight), "lowrank"
                                     # (U V^T of +-1 factors per matrix) or "sparse" (signs on a mask of the base)
    lowrank_rank: int = 1            # "lowrank": columns of U and V (noise entries in [-rank, rank])
    lowrank_window: int = 64         # "lowrank": an origin's steps that share one V (steps 1..64, 65..128, ...)
    sparse_fraction: float = 0.25    # "sparse": fraction of each tensor perturbed, its smallest base weights
    probes: int = 1                  # 1: two-sided SPSA (MeZO); N >= 2: N one-sided probes, each its own
                                     # update, g normalised by the probes' loss spread (FZOO)
    probe_baseline: str = "clean"    # probes >= 2: g_j = (l_j - b) / std: b = "clean" (one more forward pass,
                                     # FZOO) or "mean" (the mean of the probes: N passes, sum of g_j = 0)
    rng: str = RNG_ID                # noise generator id (docs/rng.md); guards against silent spec changes
    headroom_bits: int = 2           # quantum = 2**(ceil_log2(max|w|) + headroom - 24): steps of 2**-22 of the largest
                                     # base weight (the int64 state bounds nothing; docs/numerics.md)
    grid_min_exp: int = -6           # bound exponent never below this, so tiny/zero tensors can still move
    trainable: str = ".*"            # regex (re.fullmatch) on parameter names: which tensors are perturbed
    max_fused: int = 128             # updates applied per pass over the weights (keeps int32 sums small)
    swarm_nodes: int = 1             # producing nodes (closed swarm: its members); each update's lr is lr / f(n)
    lr_swarm_scaling: str = "sqrt"   # f(n): "none" 1, "sqrt" sqrt(n) (a round has one node's noise), "linear" n
    horizon_updates: int = 0         # > 0: swarm-wide updates the grid must absorb (wider bounds, docs/numerics.md)
    g_normalize: str = "none"        # "rms": divide g by a running RMS of this node's recent g (local, no wire change)
    g_normalize_beta: float = 0.99   # decay of that running mean of g**2; |g / rms| <= 1/sqrt(1-beta)
    steering_window: int = 1024      # steering rule (docs/security.md): an origin's steps 1..W, W+1..2W, ... are
                                     # checked as one run each; 0: no rule
    steering_k2: int = 100           # a run breaches if some weight's sum q * noise exceeds sqrt(k2) = 10 sigma
    steering_checkpoints: int = 3    # a run is also judged on its first W/2, W/4, ... W/2^c steps (c of them), so
                                     # an origin that stops early is judged on what it published
    lora_rank: int = 0               # > 0: add LoRA adapters of this rank (model/scope.py); 0: none
    lora_alpha: float = 16.0         # LoRA scaling alpha / rank
    lora_targets: str = ""           # regex (re.fullmatch) on module names that get adapters

    def __post_init__(self):
        _finite_positive("lr", self.lr, allow_zero=True)
        if self.lr_schedule not in ("constant", "linear"):
            raise HyperError(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        _int_in("lr_decay_steps", self.lr_decay_steps, 0, 1 << 62)
        if self.lr_schedule == "linear" and self.lr_decay_steps < 1:
            raise HyperError("lr_schedule 'linear' needs lr_decay_steps >= 1")
        _finite_positive("eps", self.eps)
        _finite_positive("q_scale", self.q_scale)
        if self.perturbation not in PERTURBATIONS:
            raise HyperError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {self.perturbation!r}")
        _int_in("lowrank_rank", self.lowrank_rank, 1, 64)
        _int_in("lowrank_window", self.lowrank_window, 1, 1 << 30)
        if isinstance(self.sparse_fraction, bool) or not isinstance(self.sparse_fraction, (int, float)) \
                or not 0.0 < self.sparse_fraction <= 1.0:
            raise HyperError(f"sparse_fraction must be a number in (0, 1], got {self.sparse_fraction!r}")
        _int_in("probes", self.probes, 1, 64)
        _int_in("steering_window", self.steering_window, 0, 1 << 20)
        _int_in("steering_k2", self.steering_k2, 1, 1 << 40)
        _int_in("steering_checkpoints", self.steering_checkpoints, 0, 16)
        if self.probe_baseline not in ("clean", "mean"):
            raise HyperError(f"probe_baseline must be 'clean' or 'mean', got {self.probe_baseline!r}")
        if self.rng != RNG_ID:
            raise HyperError(f"rng must be {RNG_ID!r} (the only generator this build implements), got {self.rng!r}")
        _int_in("headroom_bits", self.headroom_bits, 1, 8)
        _int_in("grid_min_exp", self.grid_min_exp, -60, 60)
        # The +-eps perturbation must fit inside the smallest possible grid bound.
        if self.eps >= 2.0 ** (self.grid_min_exp + self.headroom_bits - 1):
            raise HyperError(f"eps={self.eps} is too large for grid_min_exp={self.grid_min_exp} "
                             f"and headroom_bits={self.headroom_bits}")
        if not isinstance(self.trainable, str):
            raise HyperError(f"trainable must be a regex string, got {self.trainable!r}")
        try:
            re.compile(self.trainable)
        except re.error as e:
            raise HyperError(f"trainable is not a valid regex ({e}): {self.trainable!r}") from None
        _int_in("max_fused", self.max_fused, 1, 1 << 16)
        _int_in("swarm_nodes", self.swarm_nodes, 1, 1 << 20)
        if self.lr_swarm_scaling not in ("none", "sqrt", "linear"):
            raise HyperError(f"lr_swarm_scaling must be 'none', 'sqrt' or 'linear', got {self.lr_swarm_scaling!r}")
        _int_in("horizon_updates", self.horizon_updates, 0, 1 << 40)
        if self.g_normalize not in ("none", "rms"):
            raise HyperError(f"g_normalize must be 'none' or 'rms', got {self.g_normalize!r}")
        if isinstance(self.g_normalize_beta, bool) or not isinstance(self.g_normalize_beta, (int, float)) \
                or not 0.0 <= self.g_normalize_beta < 1.0:
            raise HyperError(f"g_normalize_beta must be a number in [0, 1), got {self.g_normalize_beta!r}")
        _int_in("lora_rank", self.lora_rank, 0, 1 << 12)
        _finite_positive("lora_alpha", self.lora_alpha)
        if not isinstance(self.lora_targets, str):
            raise HyperError(f"lora_targets must be a regex string, got {self.lora_targets!r}")
        if self.lora_rank and not self.lora_targets:
            raise HyperError("lora_rank > 0 needs lora_targets (a regex of module names, e.g. "
                             r"'model\.layers\.2[6-9]\..*_proj')")
        try:
            re.compile(self.lora_targets)
        except re.error as e:
            raise HyperError(f"lora_targets is not a valid regex ({e}): {self.lora_targets!r}") from None

    def lr_at(self, step: int) -> float:
        """Learning rate of one update of an origin's step (>= 1), in float64: deterministic on
        every machine (IEEE double arithmetic, math.sqrt is correctly rounded)."""
        lr = float(self.lr) / self.swarm_divisor()
        if self.lr_schedule == "constant":
            return lr
        return lr * max(0.0, 1.0 - step / self.lr_decay_steps)

    def swarm_divisor(self) -> float:
        """Every node applies every member's update: a round of n updates moves n times as far
        as one node's. Dividing each update by sqrt(n) keeps the noise of a round at one
        node's level (the gradient signal still adds up: sqrt(n) times one node's); "linear"
        makes a round move like one node with n times the batch."""
        return {"none": 1.0, "sqrt": math.sqrt(self.swarm_nodes), "linear": float(self.swarm_nodes)}[
            self.lr_swarm_scaling]

    def max_step(self) -> float:
        """The largest change one update can make to one weight (q saturates at 127)."""
        return float(self.lr) / self.swarm_divisor() * 127 * self.q_scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Hyper":
        """Build from a parsed TOML table; unknown keys are an error (a typo must not be ignored)."""
        if not isinstance(d, dict):
            raise HyperError(f"hyper must be a table, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HyperError(f"unknown hyper field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)


def _finite_positive(name, v, allow_zero=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise HyperError(f"{name} must be a finite number, got {v!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise HyperError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def _int_in(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int):
        raise HyperError(f"{name} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise HyperError(f"{name} must be in [{lo}, {hi}], got {v}")
