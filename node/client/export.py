"""Export the fine-tuned weights as a plain transformers folder, and offline state reads.

    onebyte export --out DIR      # asks the running daemon for a consistent snapshot,
                                  # or, with no daemon, rebuilds the state from the state dir

The folder holds config.json, model.safetensors, the tokenizer files and
onebyte.json (swarm id, digest, updates): `AutoModelForCausalLM.from_pretrained(DIR)`
loads it with no onebyte installed. A swarm that trains LoRA adapters exports the merged
model there and the adapter alone, in PEFT's format, in DIR/adapter:
`PeftModel.from_pretrained(base_model, DIR/adapter)`. It is written to a temporary
sibling and renamed into place, so DIR is never half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..config import NodeConfig
from ..storage.durable import atomic_write_bytes
from ..errors import StateError, UserError
from ..genesis import Genesis, load_genesis
from ..storage.state import StateDir, build_replica, restore

log = logging.getLogger("onebyte.node.client.export")


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"--out {out} exists and is not empty; choose a new folder or pass --force")


def plain_copy(model):
    """A plain transformers model holding the replica's current weights.

    The live model cannot be saved as is: a GGUF-loaded model carries a gguf quantizer that
    save_pretrained refuses (and its config would make loaders expect GGUF), and the
    replica's trainable weights are views into one flat buffer, which save_pretrained would
    take for tied tensors. So: same class, config without quantization, weights copied.
    """
    import copy

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = type(model)(config)
    # LoRA layers (peft) hold the base weight as `<module>.base_layer.weight`; the adapters
    # themselves are exported separately (lora_adapter_and_merged)
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    fresh.load_state_dict({k: v.detach().to("cpu", copy=True) for k, v in state.items()}, strict=False)
    missing = [k for k in fresh.state_dict() if k not in state]
    if missing:
        raise StateError(f"export: the model has no weights for {missing[:3]}")
    fresh.tie_weights()
    return fresh.eval()


def save_folder(replica, tokenizer, out: Path, meta: dict, force: bool = False, adapter_only: bool = False) -> Path:
    """The transformers folder (and, for a LoRA swarm, the adapter in DIR/adapter); with
    adapter_only, the adapter alone at DIR itself (what `PeftModel.from_pretrained` and the Hub
    take for an adapter repository), with the tokenizer, model card and onebyte.json."""
    out = Path(out)
    check_out_dir(out, force)
    if adapter_only and not replica.hyper.lora_rank:
        raise UserError("--adapter-only: this swarm trains no LoRA adapters (genesis lora_rank = 0); "
                        "export the whole model instead")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("writing the transformers folder %s", out)
    model = plain_copy(replica.model)
    try:
        if adapter_only:
            _save_adapter(replica, model, tmp, meta)
        elif replica.hyper.lora_rank:
            model = _save_adapter(replica, model, tmp / "adapter", meta)
        if not adapter_only:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    (tmp / "onebyte.json").write_text(json.dumps(meta, indent=1) + "\n")
    (tmp / "README.md").write_text(model_card(meta, replica, adapter_only))
    for p in tmp.rglob("*"):  # readable by whoever the folder is handed to (safetensors writes 0600)
        p.chmod(0o755 if p.is_dir() else 0o644)
    tmp.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _save_adapter(replica, base, where: Path, meta: dict):
    """Write the adapters in PEFT's format (through peft itself) and return the merged model."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from onebyte.model.scope import lora_config
    cfg = lora_config(replica.hyper)
    cfg.base_model_name_or_path = hub_model_id(meta.get("base_model", "")) or meta.get("base_model", "")
    # the replica's adapters live in the model itself (peft.inject_adapter_in_model); a PeftModel
    # wraps the same modules under "base_model.model."
    adapters = {"base_model.model." + k: v.detach().to("cpu", copy=True)
                for k, v in get_peft_model_state_dict(replica.model).items()}
    peft_model = get_peft_model(base, cfg)
    result = set_peft_model_state_dict(peft_model, adapters)
    if getattr(result, "unexpected_keys", None):
        raise StateError(f"export: adapter weights did not fit the base model ({result.unexpected_keys[:3]})")
    peft_model.save_pretrained(where, safe_serialization=True)
    return peft_model.merge_and_unload().eval()


def offline_state(cfg: NodeConfig, genesis: Genesis | None = None):
    """(replica, tokenizer, applied_vv, genesis) rebuilt from the state dir: snapshot + log.

    Read-only: safe while a daemon runs (a torn tail is skipped, not truncated)."""
    genesis = genesis or load_genesis(cfg.genesis)
    sd = StateDir(cfg.state_dir)
    if not sd.path.is_dir():
        raise StateError(f"state_dir {sd.path} does not exist (has this node ever run?)")
    sd.check_genesis(genesis, write=False)
    ulog = sd.open_log(readonly=True)
    log.info("rebuilding the state of %s: base model %s, newest snapshot, then the log", sd.path,
             cfg.model or genesis.swarm["base_model"])
    r = restore(genesis, cfg.model, "cpu", sd, ulog)
    return r.replica, r.tokenizer, r.applied_vv, genesis


def export_offline(cfg: NodeConfig, out: Path, force: bool = False, adapter_only: bool = False) -> dict:
    check_out_dir(out, force)
    replica, tokenizer, vv, genesis = offline_state(cfg)
    digest = replica.digest()
    meta = _meta(genesis, digest, vv, source="state_dir")
    save_folder(replica, tokenizer, out, meta, force, adapter_only)
    return meta


def export_snapshot(cfg: NodeConfig, snapshot: dict, out: Path, force: bool = False, adapter_only: bool = False) -> dict:
    """Build the folder from a snapshot the daemon wrote (weights + .json beside them)."""
    genesis = load_genesis(cfg.genesis)
    log.info("loading the base model %s to apply the snapshot %s", cfg.model or genesis.swarm["base_model"],
             snapshot["path"])
    replica, tokenizer = build_replica(genesis, cfg.model, "cpu")
    replica.load(Path(snapshot["path"]))
    digest = replica.digest()
    if digest != snapshot["digest"]:
        raise StateError(f"snapshot {snapshot['path']} does not match the digest the daemon reported")
    meta_path = Path(snapshot["meta"])
    vv = {bytes.fromhex(o): n for o, n in json.loads(meta_path.read_text())["vv"].items()}
    meta = _meta(genesis, digest, vv, source="daemon")
    save_folder(replica, tokenizer, out, meta, force, adapter_only)
    for p in (Path(snapshot["path"]), meta_path):
        p.unlink(missing_ok=True)
    return meta


def _meta(genesis: Genesis, digest: str, vv: dict, source: str) -> dict:
    task = {k: v for k, v in genesis.task.items() if k not in ("data", "eval_data")}
    return {"swarm_id": genesis.swarm_id.hex(), "base_model": genesis.swarm["base_model"],
            "base_model_hash": genesis.swarm["base_model_hash"], "digest": digest,
            "updates": sum(vv.values()), "origins": len(vv), "source": source,
            # how to use the classifier: the prompt template and the label words it was trained with
            "task": task, "hyper": dict(genesis.hyper)}


# Model specs onebyte knows by name -> (model id on the Hugging Face Hub, license).
HUB_IDS = {"smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


def hub_model_id(spec: str) -> str | None:
    """The Hub id of a base model spec: a known name, or a folder whose config names one
    (`_name_or_path` of the form owner/name); None for a GGUF file or the tiny test model."""
    if spec in HUB_IDS:
        return HUB_IDS[spec][0]
    config = Path(spec) / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text()).get("_name_or_path", "")
        except (OSError, ValueError):
            return None
        if isinstance(name, str) and name.count("/") == 1 and not Path(name).exists():
            return name
    return None


def front_matter(meta: dict) -> list[str]:
    """The model card's YAML metadata, as the Hub reads it: base model, library, tags, license,
    and the measured result (model-index) once `onebyte eval --model DIR --record` scored it."""
    base = hub_model_id(meta.get("base_model", ""))
    lines = ["---"]
    if base:
        lines.append(f"base_model: {base}")
    lines.append(f"library_name: {'peft' if (meta.get('hyper') or {}).get('lora_rank') else 'transformers'}")
    task = meta.get("task") or {}
    pipeline = ("text-classification" if task.get("kind", "classification") == "classification" and "template" in task
                else "text-generation")
    lines.append("pipeline_tag: " + pipeline)
    lines += ["tags:", "- onebyte", "- zeroth-order", "- mezo", "- decentralized-training"]
    license_ = HUB_IDS.get(meta.get("base_model", ""), (None, None))[1]
    if license_:
        lines.append(f"license: {license_}")
    datasets = meta.get("datasets") or []
    if datasets:
        lines += ["datasets:"] + [f"- {json.dumps(d)}" for d in datasets]   # a JSON string is a YAML string
    ev = meta.get("eval")
    if ev:
        data = json.dumps(ev["data"])
        name = json.dumps(f"accuracy on {ev['n']} rows")
        lines += ["model-index:", f"- name: {json.dumps(meta.get('name') or 'onebyte-fine-tune')}", "  results:",
                  "  - task:", f"      type: {pipeline}", "    dataset:", f"      name: {data}",
                  f"      type: {json.dumps(datasets[0]) if datasets else data}", "    metrics:",
                  "    - type: accuracy", f"      value: {ev['accuracy']:.4f}", f"      name: {name}"]
    return lines + ["---", ""]


def record_eval(folder: Path, result: dict) -> None:
    """Write a score of an exported folder into its onebyte.json ("eval") and its model card's
    front matter (model-index)."""
    update_meta(folder, name=folder.resolve().name,
                eval={"accuracy": round(result["accuracy"], 4), "loss": round(result["loss"], 4),
                      "n": result["n"], "data": Path(result["data"]).name})


def update_meta(folder: Path, **fields) -> None:
    """Set fields of an exported folder's onebyte.json (e.g. `datasets`, named by
    `export --dataset ID`: the genesis knows only file paths) and rewrite the card's front
    matter from it, each file atomically; the card's body stays as export wrote it."""
    meta_path, card_path = folder / "onebyte.json", folder / "README.md"
    meta = {**json.loads(meta_path.read_text()), **fields}
    card = card_path.read_text() if card_path.exists() else ""
    if card.startswith("---\n") and "\n---\n" in card[4:]:
        card = card[card.index("\n---\n", 4) + 5:].lstrip("\n")   # the body after the old front matter
    atomic_write_bytes(meta_path, (json.dumps(meta, indent=1) + "\n").encode(), mode=0o644)
    atomic_write_bytes(card_path, ("\n".join(front_matter(meta)) + "\n" + card).encode(), mode=0o644)


def model_card(meta: dict, replica, adapter_only: bool = False) -> str:
    """README.md of an exported folder: what it is and how to use it, from the genesis; its
    YAML front matter is the metadata the Hugging Face Hub reads (front_matter)."""
    task = meta.get("task") or {}
    lines = front_matter(meta) + [f"# onebyte fine-tune of {meta.get('base_model')}", "",
             f"Fine-tuned by a onebyte swarm ({meta.get('swarm_id', '')[:16]}…) with zeroth-order updates of "
             f"one byte each: {meta.get('updates')} updates from {meta.get('origins')} node(s); "
             f"{replica.n_trainable:,} weights trained; weights digest {meta.get('digest')}.", ""]
    if task.get("kind", "classification") == "classification" and "template" in task:
        words = task.get("verbalizer", [])
        import string
        field = next((f for _, f, _, _ in string.Formatter().parse(task["template"]) if f), "text")
        lines += ["## Use", "",
                  f"Prompt: `{task['template']}`; answer: the label word with the highest next-token logit "
                  f"at the prompt's last position, among {', '.join(repr(w) for w in words)} "
                  f"(label i = word i).", "",
                  "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  *(["from peft import AutoPeftModelForCausalLM  # the base model named in adapter_config.json"]
                    if adapter_only else []),
                  'tok = AutoTokenizer.from_pretrained("THIS_FOLDER")',
                  (f'model = {"AutoPeftModelForCausalLM" if adapter_only else "AutoModelForCausalLM"}'
                   '.from_pretrained("THIS_FOLDER").eval()'),
                  f"words = {list(words)!r}",
                  "ids = [tok(w)['input_ids'][0] for w in words]",
                  f"prompt = {task['template']!r}.format({field}='a fine film')",
                  "logits = model(**tok(prompt, return_tensors='pt')).logits[0, -1, ids]",
                  "print(words[int(logits.argmax())])",
                  "```", ""]
    if adapter_only:
        lines += ["This folder is the LoRA adapter alone, in PEFT's format (no merged model).", ""]
    elif replica.hyper.lora_rank:
        lines += ["The LoRA adapter alone, in PEFT's format, is in `adapter/`.", ""]
    lines += ["`onebyte.json` holds the swarm id, digest, update count, task spec and hyper-parameters.", ""]
    return "\n".join(lines)
