"""Trainable scopes: which weights a swarm trains, as a pure function of the genesis.

Two kinds, combined freely through Hyper:

- `trainable`: a regex (re.fullmatch) over parameter names (after adapters are added);
- LoRA adapters (`lora_rank` > 0): peft adds low-rank adapters A [r, in] and B [out, r] to the
  linear modules whose names match `lora_targets` (regex, re.fullmatch, peft's own matching);
  the layer computes base(x) + (alpha / r) * B A x. The base weights stay as they were.

peft initialises A from torch's RNG, whose streams differ between devices and versions, so
A is overwritten here from onebyte-rng-v1 uniforms keyed by the tensor's name (the same
bits on every node), and B is zero: the adapted model starts as the base model. Dropout is
0: SPSA needs l+ and l- measured on the same deterministic function.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from .hyper import Hyper, HyperError

LORA_DOMAIN = int.from_bytes(b"ob-lora\0", "little")
LORA_PATTERN = r".*\.lora_[AB]\..*"   # `trainable` for "train only the adapters"


def lora_config(hyper: Hyper):
    """The peft LoraConfig of a Hyper (the same on every node)."""
    from peft import LoraConfig
    return LoraConfig(r=hyper.lora_rank, lora_alpha=hyper.lora_alpha, target_modules=hyper.lora_targets,
                      lora_dropout=0.0, bias="none", init_lora_weights=True)


def apply_scope(model: torch.nn.Module, hyper: Hyper) -> torch.nn.Module:
    """Add the genesis's adapters to `model` in place (no-op without LoRA); returns the model."""
    if hyper.lora_rank == 0:
        return model
    from peft import inject_adapter_in_model
    try:
        inject_adapter_in_model(lora_config(hyper), model)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise HyperError(f"lora_targets={hyper.lora_targets!r} matches no linear module of the model ({exc})") \
            from None
    portable_lora_init_(model)
    model.eval()
    return model


@torch.no_grad()
def portable_lora_init_(model: torch.nn.Module) -> None:
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) from onebyte-rng-v1 keyed by name, B = 0; both fp32 (peft
    makes them in the base layer's dtype: a base held in bf16 would round A)."""
    from .grid import uniforms
    for name, p in model.named_parameters():
        if ".lora_" in name and p.dtype != torch.float32:
            p.data = p.data.float()
        if ".lora_B." in name:
            p.zero_()
        elif ".lora_A." in name:
            key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
            u = uniforms(np.array([key ^ LORA_DOMAIN], dtype=np.uint64), LORA_DOMAIN, p.numel())[0]
            bound = 1.0 / math.sqrt(p.shape[1])
            v = ((u * 2.0 - 1.0) * bound).astype(np.float32)  # float64 -> float32: same rounding everywhere
            p.copy_(torch.from_numpy(v).view(p.shape).to(p.device, p.dtype))


# The step measured best for topN on SST-2 and the built-in task (bench/scope_probe.py on held-out
# training rows, docs/results.md): four one-sided probes per step, mean baseline, lr 1e-3.
TOP_STEP = {"probes": 4, "probe_baseline": "mean", "q_scale": 0.03125, "lr": 1e-3}


@dataclass(frozen=True)
class Layout:
    """Where a causal LM keeps what the named scopes address, by parameter name.

    layers: the prefix of its decoder layer list ("model.layers" for Llama, Qwen2, Mistral,
    Gemma, SmolLM; "transformer.h" for GPT-2; "model.decoder.layers" for OPT); n_layers of
    them; final_norm: the norm after the last layer ("model.norm"), if any; projections: the
    names of the linear maps inside a layer ("self_attn.q_proj", ...), what LoRA adapts."""
    layers: str
    n_layers: int
    final_norm: str | None
    projections: tuple[str, ...]

    @classmethod
    def llama(cls, n_layers: int) -> "Layout":
        """The Llama-family names (SmolLM2, the tiny model)."""
        return cls("model.layers", n_layers, "model.norm", ("self_attn.q_proj", "self_attn.k_proj",
                   "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))


_NORM_CLASS = re.compile(r".*(Norm|LayerNorm)\w*")


def layout_of(model: torch.nn.Module, n_layers: int) -> Layout:
    """The Layout of a model (real or built on the meta device from its config): its decoder
    layers are the module list of n_layers blocks, its final norm the norm module beside that
    list, its projections the linear maps (nn.Linear, or GPT-2's Conv1D) of the first layer.
    HyperError when no such list exists: the named scopes cannot address the model."""
    stack = next((name for name, m in model.named_modules()
                  if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers and n_layers > 0), None)
    if stack is None:
        raise HyperError(f"cannot find the {n_layers} decoder layers of this {type(model).__name__}: the named "
                         "scopes (topN, lora-topN) cannot address it; set --hyper trainable=REGEX instead")
    # the final norm: a norm beside the layer list (same parent); of several (an embedding norm
    # too), the last one registered after the list, else the last one (OPT registers it first)
    parent = stack.rpartition(".")[0]
    beside, after, seen = [], [], False
    for name, m in model.named_modules():
        seen |= name == stack
        if name.rpartition(".")[0] == parent and name != stack and _NORM_CLASS.fullmatch(type(m).__name__) \
                and isinstance(getattr(m, "weight", None), torch.Tensor):
            (after if seen else beside).append(name)
    norm = (after or beside or [None])[-1]
    first = f"{stack}.0."
    projections = tuple(name[len(first):] for name, m in model.named_modules()
                        if name.startswith(first) and (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"))
    return Layout(stack, n_layers, norm, projections)


def scope_preset(name: str, layout: Layout | int) -> dict:
    """Hyper fields of a named scope for a model's Layout (an int: a Llama-named decoder of that
    many layers); what `onebyte init --scope` writes.

    norm:       the final norm's gain only (576 weights on SmolLM2);
    topN:       every weight of the top N decoder layers and the final norm (N=1: 3.54M on SmolLM2),
                with the step measured best for it (TOP_STEP);
    lora-topN:  rank-16 LoRA adapters on every projection of the top N layers (N=4: 0.65M), with
                grid_min_exp -3: B starts at 0, so its grid bound comes from that floor (2**-1).
    All of them lie above a frozen trunk, so a node caches it where it can (model/trunk.py).
    The regexes of a Llama-named model are the ones written since the first genesis (the
    swarm id depends on them)."""
    lay = Layout.llama(layout) if isinstance(layout, int) else layout
    norm = re.escape(f"{lay.final_norm}.weight") if lay.final_norm else None
    stack = re.escape(lay.layers)
    if name == "norm":
        if norm is None:
            raise HyperError("scope norm: the model has no final norm after its layers")
        return {"trainable": norm}
    for prefix, lora in (("lora-top", True), ("top", False)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            n = int(name[len(prefix):])
            if not 1 <= n <= lay.n_layers:
                raise HyperError(f"scope {name}: the model has {lay.n_layers} layers")
            layers = "|".join(str(i) for i in range(lay.n_layers - n, lay.n_layers))
            if lora:
                if not lay.projections:
                    raise HyperError(f"scope {name}: the model's layers have no linear maps LoRA can adapt")
                if all(re.fullmatch(r"(self_attn|mlp)\.[a-z_]+_proj", p) for p in lay.projections):
                    maps = r"(self_attn|mlp)\.[a-z_]+_proj"
                else:
                    maps = "(" + "|".join(re.escape(p) for p in lay.projections) + ")"
                return {"trainable": LORA_PATTERN, "lora_rank": 16, "lora_alpha": 16.0, "grid_min_exp": -3,
                        "lora_targets": rf"{stack}\.({layers})\.{maps}"}
            top = rf"{stack}\.({layers})\..*" + (f"|{norm}" if norm else "")
            return {"trainable": top, **TOP_STEP}
    raise HyperError(f"unknown scope {name!r}: use norm, topN or lora-topN (N = number of top layers)")
