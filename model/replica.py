"""Replica: a model whose trainable weights are a pure function of (base, set of applied updates).

At construction the trainable parameters (Hyper.trainable, floating point, tied weights once)
are moved into one flat fp32 buffer in index order (sorted names) and the parameters become
views of it, so the noise index of a weight is its position in the buffer (docs/rng.md).

The replica's state is one int64 per trainable weight: the weight in quanta of its tensor's
grid (model/grid.py). The fp32 buffer the model reads always shows float32(state) * quantum,
or, while the local step measures a loss, state plus a perturbation that the state never
holds. Every change goes through one function, `_apply`: the per-weight kernels (numba on
CPU, Triton on CUDA) for Rademacher and sparse noise, the exact integer GEMM of
model/lowrank.py for the matrices of low-rank noise.
"""
import hashlib
import json
import re
from typing import Callable, Sequence

import numpy as np
import torch

from .grid import Grid, GridError, build_grid, plan_batches, to_state, update_coefficients_many
from .hyper import Hyper, HyperError
from .noise import Noise
from .quantize import Q_MAX
from .rng import RNG_ID

SNAPSHOT_FORMAT = "onebyte-replica-v2"   # v2: the int64 state (v1 held fp32 weights)
# Low-rank replay costs per (origin, window) in a batch, not per update (model/lowrank.py):
# fuse this many updates per pass whatever hyper.max_fused says (it sizes the per-weight passes).
LOWRANK_FUSED = 4096


class Replica:
    def __init__(self, model: torch.nn.Module, hyper: Hyper, device="cpu"):
        if not isinstance(hyper, Hyper):
            raise HyperError(f"hyper must be a onebyte.model.Hyper, got {type(hyper).__name__}")
        self.hyper = hyper
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            self.device = None
        if self.device is None or self.device.type not in ("cpu", "cuda"):
            raise HyperError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
        from .scope import apply_scope
        self.model = apply_scope(model, hyper).to(self.device)  # LoRA adapters, if the genesis has them
        pattern = re.compile(hyper.trainable)
        # A tied tensor (lm_head tied to the embeddings) is one tensor under several names: it is
        # counted once, under its first name, and is trainable if any of its names matches.
        first, params = {}, {}
        for n, p in self.model.named_parameters(remove_duplicate=False):
            canon = first.setdefault(id(p), n)
            if p.is_floating_point() and pattern.fullmatch(n):
                params[canon] = p
        if not params:
            raise HyperError(f"trainable={hyper.trainable!r} matches no floating-point parameter of the model")
        names = sorted(params)
        self.params = [params[n] for n in names]
        with torch.no_grad():
            self.grid: Grid = build_grid(names, [p.detach() for p in self.params], hyper)
            self.flat = torch.empty(self.grid.total, dtype=torch.float32, device=self.device)
            for p, o, n in zip(self.params, self.grid.offsets.tolist(), self.grid.sizes.tolist()):
                self.flat[o:o + n].copy_(p.detach().reshape(-1))
                p.data = self.flat[o:o + n].view(p.shape)  # the model now reads the flat buffer
            self.state = to_state(self.flat, self.grid)  # int64 quanta: the snapped base
        self.noise = Noise(self.grid, hyper, self.state)
        if self.noise.lowrank:
            from .lowrank import LowRank
            self._lowrank = LowRank(self.grid, self.noise.lowrank, hyper.lowrank_rank, self.device)
        pw = self.noise.per_weight
        if self.device.type == "cuda":
            from .replay_triton import TritonReplay
            self._triton = TritonReplay(self.grid, self.device, pw, self.noise.mask_words)
        else:
            from .replay_cpu import make_items
            self._items = make_items(self.grid.offsets[pw], self.grid.sizes[pw])  # tensor ids index pw
            self._quantum_pw = np.ascontiguousarray(self.grid.quantum[pw])
        self._show()  # the snapped base
        from .step import LocalStep
        self._step = LocalStep(self)
        self._scratch = None   # (state, flat) for the steering statistic, made on first use

    @property
    def names(self) -> list:
        return self.grid.names

    @property
    def n_trainable(self) -> int:
        return self.grid.total

    # -- the one path that changes weights ---------------------------------------------------
    def _apply(self, seeds: Sequence[int], vseeds: Sequence[int], coefs, commit: bool, into=None) -> None:
        """Show state + sum_u coefs[u][t] * noise_u on the weights; with commit, into the state too.

        commit=False is a probe of the local step (one update): the weights show a
        perturbation the state does not hold, until the next call of either kind, which
        writes every weight again. No number of updates is too many: the state is int64
        (docs/numerics.md). into: (state, flat) buffers to use instead of the replica's own
        (the steering statistic sums noise into a scratch pair)."""
        state, flat = into if into is not None else (self.state, self.flat)
        coefs = np.asarray(coefs, dtype=np.int64).reshape(len(seeds), len(self.grid.names))
        pw = self.noise.per_weight
        fused = max(self.hyper.max_fused, LOWRANK_FUSED) if self.noise.lowrank else self.hyper.max_fused
        batches = plan_batches(self.grid, seeds, coefs, fused)
        if not commit and len(batches) > 1:
            raise ValueError("a probe (commit=False) must fit one fused batch")
        for start, keys, coef_t in batches:
            if pw:
                part = np.ascontiguousarray(coef_t[pw])
                if self.device.type == "cpu":
                    from .replay_cpu import replay_cpu
                    replay_cpu(state.numpy(), flat.numpy(), keys, part, self._items, self._quantum_pw,
                               self.noise.mask_words, commit)
                else:
                    self._triton.launch(state, flat, keys, part, commit)
            if self.noise.lowrank:
                end = start + len(keys)
                self._lowrank.apply(state, flat, seeds[start:end], vseeds[start:end], coefs[start:end], commit)

    @torch.no_grad()
    def _show(self) -> None:
        """The weights show the state: float32(k) * quantum, tensor by tensor."""
        for o, n, qt in zip(self.grid.offsets.tolist(), self.grid.sizes.tolist(), self.grid.quantum.tolist()):
            self.flat[o:o + n] = self.state[o:o + n].to(torch.float32) * qt

    def _updates(self, updates):
        checked = [_check_update(up) for up in updates]
        if not checked:
            return None
        seeds, qs, steps, vseeds = zip(*checked)
        return seeds, vseeds, update_coefficients_many(self.grid, self.hyper, seeds, qs, steps)

    def replay(self, updates: Sequence[tuple]) -> None:
        """Apply updates [(seed, q, step[, vseed]), ...] in fused passes; any order gives the same bits.

        vseed (rng.Seeder) names the V factor of low-rank noise; other kinds ignore it."""
        batch = self._updates(updates)
        if batch is not None:
            seeds, vseeds, coefs = batch
            self._apply(seeds, vseeds, coefs, commit=True)

    def undo(self, updates: Sequence[tuple]) -> None:
        """Remove updates [(seed, q, step[, vseed]), ...] that are in the state, exactly.

        An update is an integer number of quanta per weight, so adding its opposite restores
        the exact state (any order, any mix with replay): an equivocating or revoked origin's
        steps are taken out this way, and so is an own step the node could not log."""
        batch = self._updates(updates)
        if batch is not None:
            seeds, vseeds, coefs = batch
            self._apply(seeds, vseeds, -coefs, commit=True)

    def local_step(self, loss_fn: Callable, batch, probes: Sequence[tuple],
                   privatize: Callable | None = None) -> tuple[list[int], float]:
        """One zeroth-order step on `batch` (model/step.py): probes are the own updates it
        measures, [(seed, step[, vseed])] on consecutive own steps, hyper.probes of them.
        Returns their q and the step's loss; the updates are in the state when it returns,
        exactly as a peer replays them. privatize: the private step (model/privacy.py)."""
        return self._step(loss_fn, batch, probes, privatize)

    def steering(self, updates: Sequence[tuple], k2: int) -> tuple[bool, float]:
        """Does one origin's run of updates steer single weights? (breach, largest ratio)

        S = sum_u q_u noise_u, per weight (integers, summed exactly into a scratch state), is
        a random walk of variance Q = sum_u q_u^2 * r_t (r_t: the noise's variance per entry,
        1 or the low-rank rank) when q ignores the noise at that weight, which an honest q
        does up to the gradient's share there. An origin that picks q's sign to follow one
        weight's noise makes S grow like sum |q| there. Breach: some weight with
        S_i^2 > k2 * Q, compared in integers, so every node decides alike. The ratio
        max S_i^2 / Q is for reports only. docs/security.md, "Steering"."""
        checked = [_check_update(up) for up in updates]
        if not checked:
            return False, 0.0
        seeds, qs, _, vseeds = zip(*checked)
        q2 = sum(q * q for q in qs)
        if q2 == 0:
            return False, 0.0
        if self._scratch is None:
            self._scratch = (torch.empty_like(self.state), torch.empty_like(self.flat))
        s, _ = self._scratch
        s.zero_()
        coefs = np.repeat(np.array(qs, dtype=np.int64)[:, None], len(self.grid.names), axis=1)
        self._apply(seeds, vseeds, coefs, commit=True, into=self._scratch)
        breach, ratio = False, 0.0
        low = set(self.noise.lowrank)
        for t, (o, n) in enumerate(zip(self.grid.offsets.tolist(), self.grid.sizes.tolist())):
            if n == 0:
                continue
            top = int(s[o:o + n].abs().max())
            r = self.hyper.lowrank_rank if t in low else 1
            breach |= top * top > k2 * q2 * r
            ratio = max(ratio, top * top / (q2 * r))
        return breach, ratio

    def directional(self, loss_fn: Callable, batch, updates: Sequence[tuple], held: bool = True) -> float:
        """The two-sided projected gradient of loss_fn on batch along sum_t sign(q_t) n_t, the
        noises of updates [(seed, q, step[, vseed]), ...], at the weights without them (held:
        the state holds them) or at the current weights; nothing is applied (model/step.py)."""
        return self._step.directional(loss_fn, batch, updates, held)

    # -- state ------------------------------------------------------------------------------
    def digest(self) -> str:
        """blake2b-256 hex of the state: little-endian int64 quanta in index order.

        Equal states show equal weights (float32(k) * quantum is a function of k)."""
        h = hashlib.blake2b(digest_size=32)
        # Hash the buffer in place (a tobytes() copy would double it in memory for a moment);
        # on CUDA the one host copy is unavoidable; astype is a no-op on little-endian hosts.
        h.update(memoryview(self.state.detach().cpu().numpy().astype("<i8", copy=False)))
        return h.hexdigest()

    def metadata(self) -> dict:
        return {"format": SNAPSHOT_FORMAT, "rng": RNG_ID, "hyper": json.dumps(self.hyper.to_dict(), sort_keys=True),
                "grid_exps": json.dumps([int(e) for e in self.grid.exps])}

    def save(self, path) -> None:
        """safetensors snapshot of the state (int64 quanta per trainable tensor; the rest of the
        model is the base, unchanged). `onebyte export` writes the fp32 weights instead."""
        from safetensors.torch import save_file
        tensors = {n: self.state[o:o + s].view(shape).cpu().contiguous()
                   for n, o, s, shape in zip(self.grid.names, self.grid.offsets.tolist(),
                                             self.grid.sizes.tolist(), self.grid.shapes)}
        save_file(tensors, str(path), metadata=self.metadata())

    def load(self, path) -> None:
        """Restore a snapshot written by save() for the same base model and Hyper."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as e:  # corrupt/missing file: one clear line for the caller
            raise GridError(f"cannot read snapshot {path}: {e}") from None
        mine = self.metadata()
        for k in ("format", "rng", "grid_exps"):
            if meta.get(k) != mine[k]:
                raise GridError(f"snapshot {path} does not match this replica ({k} differs)")
        if sorted(tensors) != self.grid.names:
            raise GridError(f"snapshot {path} holds different tensors than this replica's trainable set")
        new = torch.empty_like(self.state)
        for n, o, size, shape in zip(self.grid.names, self.grid.offsets.tolist(), self.grid.sizes.tolist(),
                                     self.grid.shapes):
            t = tensors[n]
            if tuple(t.shape) != shape or t.dtype != torch.int64:
                raise GridError(f"snapshot tensor {n} has shape {tuple(t.shape)} {t.dtype}, expected {shape} int64")
            new[o:o + size].copy_(t.reshape(-1))
        with torch.no_grad():
            self.state.copy_(new)
        self._show()


def _check_update(up):
    """(seed, q, step[, vseed]) -> four ints, or ValueError naming what is wrong."""
    if not isinstance(up, (tuple, list)) or len(up) not in (3, 4):
        raise ValueError(f"an update is (seed, q, step[, vseed]), got {up!r}")
    seed, q, step = up[:3]
    vseed = up[3] if len(up) == 4 else 0
    for name, v, lo, hi in (("seed", seed, 0, (1 << 64) - 1), ("q", q, -Q_MAX, Q_MAX), ("step", step, 1, 1 << 62),
                            ("vseed", vseed, 0, (1 << 64) - 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise ValueError(f"update {name} must be an int in [{lo}, {hi}], got {v!r}")
    return int(seed), int(q), int(step), int(vseed)
