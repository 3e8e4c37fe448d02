"""Replica: a model whose trainable weights are a pure function of (base, set of applied updates).

At construction the trainable parameters (Hyper.trainable, floating point, tied weights once)
are moved into one flat fp32 buffer in index order (sorted names) and the parameters become
views of it, so the noise index of a weight is its position in the buffer (docs/rng.md).
The buffer is snapped onto the fixed-point grid (model/grid.py). After that, every change
(+-eps perturbations, own and peers' updates) goes through one function, `_apply`, which
runs the fused kernel: numba on CPU, Triton on CUDA.
"""
import hashlib
import json
import math
import re
from typing import Callable, Sequence

import numpy as np
import torch

from .grid import (Grid, GridError, GridOverflowError, build_grid, check_on_grid, plan_batches,
                   snap_, update_coefficients, update_coefficients_many)
from .hyper import Hyper, HyperError
from .quantize import Q_MAX, quantize
from .rng import RNG_ID

SNAPSHOT_FORMAT = "onebyte-replica-v1"


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
        self.poisoned = None  # set to a message once exactness is lost (grid overflow)
        self._g2 = None       # running mean of g**2 (g_normalize = "rms"); local, never on the wire
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
            snap_(self.flat, self.grid)
        if self.device.type == "cuda":
            from .replay_triton import TritonReplay
            self._triton = TritonReplay(self.grid, self.device)
        else:
            from .replay_cpu import make_items
            self._items = make_items(self.grid.offsets, self.grid.sizes)
            self._np = self.flat.numpy()  # shares memory with self.flat

    @property
    def names(self) -> list:
        return self.grid.names

    @property
    def n_trainable(self) -> int:
        return self.grid.total

    # -- the one path that changes weights ---------------------------------------------------
    def _apply(self, seeds: Sequence[int], coefs, check: bool = True) -> None:
        """Add sum_u coefs[u][t] * quantum[t] * z(seeds[u], i) to every trainable weight, exactly.

        On CUDA the overflow counts stay on the device until a call with check=True reads them:
        the local step defers its check to the last of its three passes, so a step waits for
        the GPU only where its loss function already does."""
        if self.poisoned:
            raise GridOverflowError(self.poisoned)
        for keys, coef_t in plan_batches(self.grid, seeds, coefs, self.hyper.max_fused):
            if self.device.type == "cpu":
                from .replay_cpu import replay_cpu
                self._poison_if(replay_cpu(self._np, keys, coef_t, self._items, self.grid.quantum, self.grid.bound))
            else:
                self._triton.launch(self.flat, keys, coef_t)
        if check and self.device.type == "cuda":
            self._poison_if(self._triton.take_bad_tensors())

    def _poison_if(self, bad) -> None:
        if len(bad):
            names = ", ".join(self.grid.names[int(t)] for t in bad[:5])
            self.poisoned = (f"grid overflow: weights of {names} reached their bound 2**e; the replica is "
                             f"no longer exact (restore a snapshot; raise headroom_bits or lower lr)")
            raise GridOverflowError(self.poisoned)

    def replay(self, updates: Sequence[tuple]) -> None:
        """Apply updates [(seed, q, step), ...] in one fused pass; any order gives the same bits."""
        checked = [_check_update(up) for up in updates]
        if checked:
            seeds, qs, steps = zip(*checked)
            self._apply(seeds, update_coefficients_many(self.grid, self.hyper, seeds, qs, steps))

    def undo(self, updates: Sequence[tuple]) -> None:
        """Remove updates [(seed, q, step), ...] that are in the weights, in one fused pass.

        On the grid an update is an integer multiple of each tensor's quantum, so adding the
        opposite coefficients restores the exact bits the weights would have without it (any
        order, any mix with replay): an equivocating origin's steps are taken out this way,
        and so is an own step the node could not log."""
        checked = [_check_update(up) for up in updates]
        if checked:
            seeds, qs, steps = zip(*checked)
            self._apply(seeds, -update_coefficients_many(self.grid, self.hyper, seeds, qs, steps))

    def local_step(self, loss_fn: Callable, batch, seed: int, step: int) -> tuple[int, float]:
        """One SPSA step: returns (q, mean of l+ and l-), with the own update applied.

        Weights go w -> w + eps z -> w - eps z -> w + c z (restore and update fused in one pass;
        the integer sum eps + c gives the same bits as restoring then replaying (seed, q, step))."""
        seed, _, step = _check_update((seed, 0, step))
        eps_k = self.grid.eps_k
        live = 0  # which multiple of eps*z is on the weights right now
        try:
            self._apply([seed], [eps_k], check=False)
            live = 1
            with torch.no_grad():
                l_plus = float(loss_fn(self.model, batch))
            self._apply([seed], [-2 * eps_k], check=False)
            live = -1
            with torch.no_grad():
                l_minus = float(loss_fn(self.model, batch))
            g = (l_plus - l_minus) / (2.0 * self.hyper.eps)  # projected gradient along z
            q = quantize(self._normalized(g), seed, self.hyper.q_scale)
            c = update_coefficients(self.grid, self.hyper, seed, q, step)
        except BaseException:
            if live and not self.poisoned:  # a failing loss_fn must not leave the weights perturbed
                self._apply([seed], [-live * eps_k])
            raise
        self._apply([seed], [eps_k + c])
        return q, 0.5 * (l_plus + l_minus)

    def _normalized(self, g: float) -> float:
        """g / running RMS of this node's projected gradients (FZOO-style step normalisation).

        Only q travels, so this is a local choice of step size: peers replay q as always. The
        mean includes g itself, so |result| <= 1/sqrt(1 - beta): the quantizer range is known."""
        if self.hyper.g_normalize == "none" or not math.isfinite(g):
            return g
        beta = self.hyper.g_normalize_beta
        self._g2 = g * g if self._g2 is None else beta * self._g2 + (1.0 - beta) * g * g
        return g / math.sqrt(self._g2) if self._g2 > 0 else 0.0

    # -- state ------------------------------------------------------------------------------
    def digest(self) -> str:
        """blake2b-256 hex of the trainable weights: little-endian fp32 bytes in index order."""
        h = hashlib.blake2b(digest_size=32)
        # Hash the buffer in place: a tobytes() copy would double the weights in memory for
        # a moment, and nodes take digests often (status, snapshots). On CUDA the one host
        # copy is unavoidable; astype is a no-op on little-endian hosts.
        h.update(memoryview(self.flat.detach().cpu().numpy().astype("<f4", copy=False)))
        return h.hexdigest()

    def metadata(self) -> dict:
        return {"format": SNAPSHOT_FORMAT, "rng": RNG_ID, "hyper": json.dumps(self.hyper.to_dict(), sort_keys=True),
                "grid_exps": json.dumps([int(e) for e in self.grid.exps])}

    def save(self, path) -> None:
        """safetensors snapshot of the trainable weights (the rest of the model is the base, unchanged)."""
        from safetensors.torch import save_file
        tensors = {n: p.detach().cpu().contiguous() for n, p in zip(self.grid.names, self.params)}
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
        new = torch.empty_like(self.flat)
        for n, o, size, shape in zip(self.grid.names, self.grid.offsets.tolist(), self.grid.sizes.tolist(),
                                     self.grid.shapes):
            t = tensors[n]
            if tuple(t.shape) != shape or t.dtype != torch.float32:
                raise GridError(f"snapshot tensor {n} has shape {tuple(t.shape)} {t.dtype}, expected {shape} float32")
            new[o:o + size].copy_(t.reshape(-1))
        check_on_grid(new, self.grid)
        with torch.no_grad():
            self.flat.copy_(new)
        self.poisoned = None


def _check_update(up):
    try:
        seed, q, step = up
    except (TypeError, ValueError):
        raise ValueError(f"an update is (seed, q, step), got {up!r}") from None
    for name, v, lo, hi in (("seed", seed, 0, (1 << 64) - 1), ("q", q, -Q_MAX, Q_MAX), ("step", step, 1, 1 << 62)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise ValueError(f"update {name} must be an int in [{lo}, {hi}], got {v!r}")
    return int(seed), int(q), int(step)
