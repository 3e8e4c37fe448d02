"""Frozen-trunk cache: run only the layers a swarm trains.

When every trainable tensor lies at or above decoder layer k (the final norm counts as above
every layer), the hidden states entering layer k are a function of the frozen base alone.
They are computed once per example and kept (in memory, and on disk keyed by the base-model
hash, k and the tokenizer's ids of the example); every loss then runs layers k..L-1, the
final norm and the label logits only. Exact, not an approximation: the same function of the
same weights, up to float rounding of differently shaped matrix products (the tests compare
against the full forward).

Two shortcuts that are exact for classification at the prompt's last position:
- right padding with a plain causal mask: a real token never attends to the pads after it,
  so examples cached at their own lengths can be padded together in any batch;
- the top layer: only the last position's output is read, so its query, attention output,
  o_proj and MLP run for that one position; keys and values still cover every position.

Llama-family decoders only (TRUNK_ARCHS: SmolLM2 and the tiny model are Llama; Qwen2 and
Mistral compute a layer the same way, tests/model/test_trunk.py checks each against the full
forward): model.model.layers, rotary_emb and norm. Anything else (Gemma scales its
embeddings inside forward, Qwen3 normalises q and k, ...), or a trainable tensor below layer
1 (embeddings), means no cache: the full forward, exact and slower.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

log = logging.getLogger("onebyte.model.trunk")

FORMAT = "onebyte-trunk-v1"
TRUNK_ARCHS = frozenset({"llama", "mistral", "qwen2"})   # config.model_type the shortcuts are exact for
_LAYER = re.compile(r"(?:.*\.)?layers\.(\d+)\.")


def _key(base_hash: str, k: int, max_tokens: int, dtype: torch.dtype | None = None) -> str:
    """Which cache a file holds: the entries depend on the base, the layer, the truncation and
    the precision the trunk ran in (fp32 caches keep the key they always had)."""
    at = f"|dtype={str(dtype).removeprefix('torch.')}" if dtype not in (None, torch.float32) else ""
    return hashlib.blake2b(f"{FORMAT}|{base_hash}|k={k}|max_tokens={max_tokens}{at}".encode(),
                           digest_size=16).hexdigest()


def first_trainable_layer(model, names: Sequence[str]) -> int | None:
    """k such that every trainable tensor is in layers >= k or above the stack; None if no
    cache can help (not a Llama-shaped model, or embeddings/layer 0 trainable)."""
    if getattr(getattr(model, "config", None), "model_type", None) not in TRUNK_ARCHS:
        return None
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("layers", "rotary_emb", "norm", "embed_tokens")):
        return None
    n_layers = len(inner.layers)
    k = n_layers
    for name in names:
        m = _LAYER.match(name)
        if m:
            k = min(k, int(m.group(1)))
        elif not (name.startswith("model.norm.") or name.startswith("lm_head.")):
            return None  # embeddings (or anything unknown) feed every layer
    return k if k >= 1 else None


class TrunkCache:
    """Per-example inputs of layer k; logits of the verbalizer tokens through layers k.. only."""

    def __init__(self, model, tokenizer, k: int, base_hash: str = "", path: str | Path | None = None,
                 max_tokens: int = 128, dtype: torch.dtype | None = None):
        """dtype: a base held in half precision runs the trunk under autocast in it (None: as
        the weights are)."""
        self.model, self.tok, self.k = model, tokenizer, k
        self.inner = model.model
        self.max_tokens = max_tokens
        self.dtype = dtype
        self._base_hash = base_hash
        self.key = _key(base_hash, k, max_tokens, dtype)
        self.path = Path(path) if path else None
        # example id -> [T, H] on the CPU, fp32 (or the half precision the trunk ran in: the
        # values are that precise anyway, and a large pool's cache is half the memory)
        self.h: dict[str, torch.Tensor] = {}
        self._store = dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32
        self._encoded: dict[str, tuple[str, list[int]]] = {}  # text -> (example id, token ids)
        self._rope_cache: dict = {}   # (T, device) -> rotary cos, sin
        self.loaded = 0
        if self.path is not None:
            self._load()

    # --- building ----------------------------------------------------------------------
    def _example_id(self, ids: list[int]) -> str:
        return hashlib.blake2b(repr(ids).encode(), digest_size=12).hexdigest()

    def _encode(self, text: str) -> tuple[str, list[int]]:
        """Memoised: every step tokenises its batch twice (l+ and l-), and batches repeat."""
        hit = self._encoded.get(text)
        if hit is None:
            ids = self.tok(text)["input_ids"][-self.max_tokens:]
            hit = self._encoded[text] = (self._example_id(ids), ids)
        return hit

    @torch.inference_mode()
    def fill(self, texts: Sequence[str], batch_size: int = 16, progress: Callable[[int, int], None] | None = None,
             save: bool = True) -> int:
        """Compute the missing entries (and rewrite the file, with save); returns how many were added.
        progress(done, total) counts the missing examples only."""
        todo = self.missing(texts)
        order = sorted(todo, key=lambda e: len(todo[e]))  # similar lengths: little padding
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            lens = [len(todo[e]) for e in chunk]
            ids = torch.zeros((len(chunk), max(lens)), dtype=torch.long)
            for i, e in enumerate(chunk):
                ids[i, :lens[i]] = torch.tensor(todo[e])
            with self._autocast(device):
                h = self._run(self.inner.embed_tokens(ids.to(device)), 0, self.k)
            for i, e in enumerate(chunk):
                self.h[e] = h[i, :lens[i]].to(self._store).cpu().clone()
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
        if todo and save and self.path is not None:
            self.save()
        return len(todo)

    @torch.inference_mode()
    def fill_from(self, path: str | Path, texts: Sequence[str]) -> int:
        """Derive the missing entries of texts from the cache file of a lower layer j < k of the
        same base model: layers j..k-1 run on its entries, at each example's own length (no
        padding), instead of layers 0..k-1 from the embeddings. Returns how many were added;
        0 when the file is of no lower layer of this base (it is then left alone)."""
        todo = self.missing(texts)
        if not todo:
            return 0
        blob = torch.load(path, map_location="cpu", weights_only=True)
        keys = {_key(self._base_hash, j, self.max_tokens, self.dtype): j for j in range(1, self.k)}
        j = keys.get(blob.get("key")) if isinstance(blob, dict) else None
        if j is None:
            return 0
        device = next(self.model.parameters()).device
        added = 0
        for eid in todo:
            lower = blob["h"].get(eid)
            if lower is not None:
                with self._autocast(device):
                    self.h[eid] = self._run(lower[None].to(device), j, self.k)[0].to(self._store).cpu().clone()
                added += 1
        return added

    def missing(self, texts: Sequence[str]) -> dict[str, list[int]]:
        """{example id: token ids} of the texts not cached yet."""
        todo = {}
        for t in texts:
            eid, ids = self._encode(t)
            if eid not in self.h:
                todo[eid] = ids
        return todo

    def _autocast(self, device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype not in (None, torch.float32))

    # --- the layers above --------------------------------------------------------------
    def _rope(self, h: torch.Tensor):
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        return pos, self.inner.rotary_emb(h, position_ids=pos)

    def _run(self, h: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """Decoder layers [first, stop) over [B, T, H] with a causal mask (right padding)."""
        if stop <= first:
            return h
        pos, rope = self._rope(h)
        t = h.shape[1]
        mask = torch.full((t, t), float("-inf"), device=h.device, dtype=h.dtype).triu(1)[None, None]
        for layer in self.inner.layers[first:stop]:
            out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def _rope_tables(self, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, d] of positions 0..T-1: constant per length, so computed once per T."""
        key = (t, str(device))
        hit = self._rope_cache.get(key)
        if hit is None:
            probe = torch.zeros((1, t, 1), device=device, dtype=torch.float32)
            _, (cos, sin) = self._rope(probe)
            hit = self._rope_cache[key] = (cos[0], sin[0])
        return hit

    def _top_layer_at_last(self, layer, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Output of `layer` at each row's last real position only: [B, H]."""
        attn = layer.self_attn
        b, t, _ = h.shape
        rows = torch.arange(b, device=h.device)
        x = layer.input_layernorm(h)
        xl = x[rows, last]                                                  # [B, H]
        d = attn.head_dim
        kv = attn.k_proj.out_features // d                                  # key/value heads
        q = attn.q_proj(xl).view(b, kv, -1, d)                              # [B, nkv, groups, d]
        k = attn.k_proj(x).view(b, t, kv, d).transpose(1, 2)                # [B, nkv, T, d]
        v = attn.v_proj(x).view(b, t, kv, d).transpose(1, 2)
        cos, sin = self._rope_tables(t, h.device)                           # [T, d]
        q = _rotate(q, cos[last][:, None, None], sin[last][:, None, None])  # at each row's last position
        k = _rotate(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) * attn.scaling                   # [B, nkv, groups, T]
        after = torch.arange(t, device=h.device)[None, :] > last[:, None]   # [B, T]: after the last token
        scores = scores.masked_fill(after[:, None, None, :], float("-inf"))
        o = (scores.float().softmax(-1).to(v.dtype) @ v).reshape(b, -1)     # [B, nh * d], heads in order
        hl = h[rows, last] + attn.o_proj(o)
        return hl + layer.mlp(layer.post_attention_layernorm(hl))

    def last_hidden(self, texts: Sequence[str]) -> torch.Tensor:
        """Final-norm hidden state at each text's last position, through layers k.. only."""
        entries = [self._encode(t) for t in texts]
        missing = [t for t, (eid, _) in zip(texts, entries) if eid not in self.h]
        if missing:  # outside the built pool (e.g. a larger eval): computed, not written to disk per loss
            self.fill(missing, save=False)
        device = next(self.model.parameters()).device
        lens = [len(ids) for _, ids in entries]
        h = torch.zeros((len(texts), max(lens), self.h[entries[0][0]].shape[1]), dtype=torch.float32)
        for i, (eid, _) in enumerate(entries):
            h[i, :lens[i]] = self.h[eid]
        h = h.to(device)
        last = torch.tensor(lens, device=device) - 1
        n_layers = len(self.inner.layers)
        if self.k == n_layers:
            top = h[torch.arange(len(texts), device=device), last]
        else:
            h = self._run(h, self.k, n_layers - 1)
            top = self._top_layer_at_last(self.inner.layers[n_layers - 1], h, last)
        return self.inner.norm(top)

    # --- disk ----------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return
        except Exception as exc:  # a damaged or foreign file is rebuilt, never trusted
            log.warning("trunk cache %s unreadable (%s); rebuilding it", self.path, exc)
            return
        if not isinstance(blob, dict) or blob.get("key") != self.key:
            log.info("trunk cache %s is for another base model or scope; rebuilding it", self.path)
            return
        self.h = dict(blob["h"])
        self.loaded = len(self.h)

    def save(self, path: str | Path | None = None, texts: Sequence[str] | None = None) -> None:
        """Write the cache (to its own path by default); texts: only these examples' entries
        (e.g. one node's shard of a pool cached once)."""
        path = Path(path) if path is not None else self.path
        h = self.h if texts is None else {e: self.h[e] for e in (self._encode(t)[0] for t in texts) if e in self.h}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": self.key, "h": h, "saved": time.time()}, tmp)
        os.replace(tmp, path)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.h.values())


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (Llama's rotate_half convention): one tensor, no copy of
    the other argument that transformers' apply_rotary_pos_emb also rotates."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
