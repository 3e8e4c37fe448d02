"""`onebyte`: the command line. Daemon side: init, keygen, run, export, digest, demo; client
commands (status, members, top, stop-producing, leave, pubkey) live in node/client/client.py.

Exit codes: 0 success; 1 the daemon failed at run time; 2 a user mistake (config,
genesis, key, model, data); 3 unusable state directory; 4 no daemon answering; 130
interrupted. User mistakes print one line, `onebyte: error: ...`, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from .amend import add_parsers as add_amend_parsers
from .backup import add_parser as add_backup_parser
from .doctor import add_parser as add_doctor_parser
from .client import add_client_parsers, cmd_pubkey, socket_of
from ..config import load_config
from ..errors import DaemonUnreachable, UserError
from ..genesis import SWARM_DEFAULTS
from ..version import VERSION

log = logging.getLogger("onebyte.node.client.cli")

DEFAULT_CONFIG = "node.toml"


class JsonLines(logging.Formatter):
    """log_format = "json": one JSON object per line (time, level, logger, message, and the
    traceback if any), the same events as the text format, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        # Under systemd, journald timestamps each line; elsewhere we add the time ourselves.
        line = "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(line if os.environ.get("JOURNAL_STREAM") else "%(asctime)s " + line))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def _model_errors() -> tuple:
    """Model/data errors are user errors too (missing model file, bad data file). Looked up
    only once onebyte.model is loaded: importing it (torch) costs a second or more, which
    `onebyte status` must not pay, and a command that never loaded it cannot raise them."""
    if "onebyte.model" not in sys.modules:
        return ()
    from onebyte.model import HyperError
    from onebyte.model.data import DataError
    from onebyte.model.load import ModelLoadError
    return (DataError, ModelLoadError, HyperError)


# --- init / keygen -------------------------------------------------------------------------

def _parse_value(text: str, default):
    """--hyper k=v: a value of the same type as the field's default."""
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def cmd_init(args) -> int:
    from onebyte.model import Hyper
    from onebyte.model.data import TaskSpec
    from onebyte.model.load import model_hash
    from onebyte.model.tasks import builtin_spec, is_builtin

    from ..genesis import compute_swarm_id, dump_toml, parse_genesis

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite (a new genesis is a new swarm)")
    hyper = {}
    for f in dataclasses.fields(Hyper):
        if f.default is not dataclasses.MISSING:
            hyper[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            hyper[f.name] = f.default_factory()  # type: ignore[misc]
    # Every node applies every member's update: a closed swarm knows how many produce, and the
    # per-update lr is scaled for it (Hyper.swarm_nodes, lr_swarm_scaling); --hyper overrides.
    if args.admission == "closed" and args.member:
        hyper["swarm_nodes"] = len(args.member)
    if args.scope:
        from onebyte.model import HyperError, ModelLoadError
        from onebyte.model.load import model_layout
        from onebyte.model.scope import scope_preset
        try:
            hyper.update(scope_preset(args.scope, model_layout(args.model)))
        except (HyperError, ModelLoadError) as exc:
            raise UserError(f"--scope: {exc}") from None
    for item in args.hyper:
        key, sep, val = item.partition("=")
        if not sep or key not in hyper:
            raise UserError(f"--hyper {item!r}: expected NAME=VALUE with NAME one of {', '.join(hyper)}")
        try:
            hyper[key] = _parse_value(val, hyper[key])
        except ValueError as exc:
            raise UserError(f"--hyper {key}: {exc}") from None
    hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()}
    try:
        Hyper(**hyper)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--hyper: {exc}") from None

    if is_builtin(args.data):
        try:
            spec = builtin_spec(args.data)
        except KeyError as exc:
            raise UserError(str(exc).strip("'\"")) from None
    else:
        spec = TaskSpec(kind=args.kind, template=args.template or TaskSpec.template,
                        verbalizer=tuple(args.verbalizer.split(",")) if args.verbalizer else TaskSpec.verbalizer,
                        text_column=args.text_column, label_column=args.label_column).to_dict()
    for flag, name in (("--data", args.data), ("--eval-data", args.eval_data)):
        if name and not is_builtin(name) and not Path(name).expanduser().is_file():
            raise UserError(f"{flag} {name}: no such file (the genesis names the data every node reads by default; "
                            "give an existing .tsv, .csv or .jsonl file or a built-in task)")
    # A file's rows are training rows: without --eval-data nodes would score themselves on them.
    eval_data = args.eval_data or (args.data if is_builtin(args.data) else "")
    if not eval_data:
        print("note: no --eval-data: nodes evaluate only with [node] eval_data (held-out rows, not the "
              "training file)", file=sys.stderr)
    task = dict(spec, data=args.data, eval_data=eval_data)
    swarm = dict(SWARM_DEFAULTS, name=args.name, admission=args.admission, members=list(args.member),
                 authority=list(args.authority), authority_threshold=args.authority_threshold,
                 admission_work_bits=args.admission_work_bits,
                 max_updates_per_s_per_origin=args.max_rate, updates_per_record=args.updates_per_record,
                 record_linger_s=args.record_linger, base_model=args.model, base_model_hash=model_hash(args.model))
    parsed = {"swarm": swarm, "hyper": hyper, "task": task}
    parse_genesis(parsed, where="init")  # the same validation a node applies
    header = ("# onebyte genesis: the immutable definition of a swarm. Any change makes a new swarm id.\n"
              "# Fields: docs/config.md. Written by `onebyte init`.\n\n")
    notes = _field_comments(Hyper)
    comments = {f"hyper.{k}": notes.get(k, "") for k in hyper}
    out.write_text(header + dump_toml(parsed, comments))
    sid = compute_swarm_id(parsed)
    print(f"wrote {out}\nswarm id {sid.hex()}")
    return 0


def _field_comments(cls) -> dict[str, str]:
    """The trailing comment of each field in a dataclass's source: the documented meaning
    of each default, copied into the genesis so the file explains itself."""
    import inspect
    import re
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]*=[^#\n]*#\s*(.+)$", src, re.M):
        out.setdefault(m.group(1), m.group(2).strip())
    return out


def cmd_keygen(args) -> int:
    from ..keys import write_key

    private = None
    if args.genesis:   # an open swarm that asks for admission work: a key that carries it
        import time

        from onebyte.protocol.identity import mine_identity
        from ..genesis import load_genesis
        genesis = load_genesis(args.genesis)
        bits = genesis.setting("admission_work_bits")
        if bits and genesis.setting("admission") == "open":
            print(f"finding a key with {bits} bits of admission work for swarm {genesis.swarm_id.hex()[:16]} "
                  f"(about {2 ** bits:,} tries)...", flush=True)
            t0 = time.monotonic()
            ident, tries = mine_identity(genesis.swarm_id, bits, progress=lambda n: print(
                f"  {n:,} tries, {time.monotonic() - t0:.0f} s", flush=True))
            private = ident.private_bytes()
            print(f"found after {tries:,} tries in {time.monotonic() - t0:.1f} s")
    write_key(args.out, force=args.force, private=private)
    print(f"wrote {args.out} (mode 0600)")
    return cmd_pubkey(argparse.Namespace(key=args.out))


# --- run ---------------------------------------------------------------------------------

def cmd_check_config(args) -> int:
    """Validate a node config and everything it names, as `run` would, without starting: the
    genesis and its protocol fields, the key (and, in a closed swarm, its membership), the
    data files, the base model's file, the state dir's swarm. One line per check; the first
    failure is the usual one-line error (exit 2, or 3 for the state dir)."""
    from onebyte.protocol import Identity
    from ..genesis import load_genesis, own_key_work_problem, protocol_config
    from ..keys import loose_permissions, read_key
    from ..storage.state import StateDir
    from ..train.training import task_sources

    cfg = load_config(args.config)
    print(f"ok    config {cfg.path}")
    genesis = load_genesis(cfg.genesis)
    protocol_config(genesis, cfg.protocol)
    print(f"ok    genesis {cfg.genesis}: swarm {genesis.swarm_id.hex()[:16]}, "
          f"admission {genesis.setting('admission')}")
    identity = Identity.from_private_bytes(read_key(cfg.key))
    pub = identity.public_bytes()
    work_problem = own_key_work_problem(genesis, pub, cfg.key)
    if work_problem:
        raise UserError(work_problem)
    if genesis.setting("admission") == "closed" and pub not in genesis.member_keys():
        if genesis.authority_keys():
            print(f"note  key {cfg.key} is not in the genesis members: peers refuse it until an amendment "
                  "admits it (`onebyte admit`)")
        else:
            raise UserError(f"key {cfg.key} is not a member of this closed swarm (its public key {pub.hex()} "
                            "is not in the genesis [swarm] members)")
    print(f"ok    key {cfg.key}: node {identity.node_id.hex()}"
          + ("  (warning: readable by others; chmod 600 it)" if loose_permissions(cfg.key) else ""))
    spec, train, evals = task_sources(genesis.task, cfg.data, cfg.eval_data,
                                      genesis.path.parent if genesis.path else None)
    for what, name in (("data", train), ("eval_data", evals)):
        if name and not name.startswith("builtin:") and not Path(name).exists():
            raise UserError(f"{what} {name} does not exist")
        print(f"ok    {what} {name or '(none: ' + ('replay only' if what == 'data' else 'no evaluation') + ')'}")
    model = cfg.model or genesis.base_model_spec()
    if ("/" in model or model.endswith(".gguf")) and not Path(model).exists():
        raise UserError(f"base model {model} does not exist")
    print(f"ok    model {model}")
    sd = StateDir(cfg.state_dir)
    if sd.path.exists():
        sd.check_genesis(genesis, write=False)
        print(f"ok    state_dir {sd.path}: this swarm's" if sd.genesis_copy.exists() else
              f"ok    state_dir {sd.path}: empty, a new node")
    else:
        print(f"ok    state_dir {sd.path}: will be created")
    print("config is valid")
    return 0


def cmd_run(args) -> int:
    import asyncio

    from ..daemon import run_daemon

    cfg = load_config(args.config)
    _setup_logging(cfg.log_level, cfg.log_format)
    if cfg.threads:
        # numba's kernels run a thread pool of their own (one thread per core by default, and
        # idle workers spin): several daemons on one machine then fight over the cores. It is
        # sized once, when numba is first imported, which has not happened yet.
        os.environ.setdefault("NUMBA_NUM_THREADS", str(cfg.threads))
        import torch
        torch.set_num_threads(cfg.threads)
    return asyncio.run(run_daemon(cfg))


# --- status / digest / export ----------------------------------------------------------------

def cmd_digest(args) -> int:
    from ..ops.status import request

    if not args.offline:
        try:
            ans = request(socket_of(args), {"cmd": "digest"}, timeout=args.timeout)
            if not ans.get("ok"):
                raise UserError(f"daemon: {ans.get('error')}")
            print(json.dumps(ans) if args.json else ans["digest"])
            return 0
        except DaemonUnreachable:
            if args.socket:
                raise
            log.info("no daemon answering; computing the digest from the state dir")
    from .export import offline_state

    replica, _tok, vv, _g = offline_state(load_config(args.config))
    digest = replica.digest()
    print(json.dumps({"digest": digest, "updates": sum(vv.values()),
                      "vv": {o.hex(): n for o, n in sorted(vv.items())}}) if args.json else digest)
    return 0


def cmd_eval(args) -> int:
    """Score a model offline on a labelled data file: this node's state dir (snapshot + log,
    read-only: safe while the daemon runs), a snapshot file (--snapshot), the swarm's base
    model before any update (--base), or an exported folder (--model, with the task its
    onebyte.json records), with the task's template and verbalizer. Prints accuracy, loss and
    the rows scored; --record writes the result into the exported folder's model card."""
    from onebyte.model import evaluate, load_task
    from onebyte.model.data import DataError

    if sum(map(bool, (args.snapshot, args.base, args.model))) > 1:
        raise UserError("give one of --snapshot, --base and --model")
    if args.record and not args.model:
        raise UserError("--record writes into an exported folder: give --model DIR")
    _setup_logging("info")   # a model load and a replay take a while: progress on stderr
    if args.model:
        model, tokenizer, spec, data, source, digest = _exported(args)
    else:
        model, tokenizer, spec, data, source, digest = _node_model(args)
    try:
        task = load_task(data, spec, split="eval")
    except DataError as exc:
        raise UserError(f"data: {exc}") from None
    examples = task.examples[:args.n] if args.n else task.examples
    r = evaluate(model, tokenizer, task, examples)
    out = {"accuracy": r["accuracy"], "loss": r["loss"], "n": r["n"], "data": data, "source": source,
           "digest": digest}
    if args.record:
        from .export import record_eval
        record_eval(Path(args.model), out)
    print(json.dumps(out) if args.json else
          f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  on {r['n']} rows of {data} ({source})")
    return 0


def _node_model(args):
    """(model, tokenizer, task spec, data, source, digest) of this node: its state dir, a
    snapshot, or the base, with the genesis' task."""
    from .export import offline_state
    from ..genesis import load_genesis
    from ..storage.state import build_replica
    from ..train.training import task_sources

    cfg = load_config(args.config)
    genesis = load_genesis(cfg.genesis)
    spec, _, genesis_eval = task_sources(genesis.task, cfg.data, cfg.eval_data,
                                         genesis.path.parent if genesis.path else None)
    data = args.data or genesis_eval
    if not data:
        raise UserError("give --data FILE (no eval data in the config or the genesis)")
    if args.base:
        replica, tokenizer = build_replica(genesis, cfg.model, "cpu")
        source = "base"
    elif args.snapshot:
        if not Path(args.snapshot).exists():
            raise UserError(f"snapshot {args.snapshot} does not exist")
        replica, tokenizer = build_replica(genesis, cfg.model, "cpu")
        replica.load(Path(args.snapshot))
        source = args.snapshot
    else:
        replica, tokenizer, _vv, _ = offline_state(cfg, genesis)
        source = str(cfg.state_dir)
    return replica.model, tokenizer, spec, data, source, replica.digest()


def _exported(args):
    """(model, tokenizer, task spec, data, source, digest) of a folder `onebyte export` wrote."""
    from onebyte.model.load import ModelLoadError, load_model

    folder = Path(args.model)
    meta_path = folder / "onebyte.json"
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a folder `onebyte export` wrote (no onebyte.json)")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} holds a LoRA adapter alone (--adapter-only): score the whole export, "
                        f"or load it with peft's AutoPeftModelForCausalLM")
    if not args.data:
        raise UserError("give --data FILE: an exported folder names no data")
    meta = json.loads(meta_path.read_text())
    try:
        model, tokenizer = load_model(str(folder))
    except ModelLoadError as exc:
        raise UserError(f"--model: {exc}") from None
    return model, tokenizer, meta.get("task") or None, args.data, str(folder), meta.get("digest")


def cmd_export(args) -> int:
    from .export import check_out_dir, export_offline, export_snapshot
    from ..ops.status import request

    cfg = load_config(args.config)
    _setup_logging("info")   # export takes a while (model load, save): progress on stderr
    out = Path(args.out)
    check_out_dir(out, args.force)
    if not args.offline:
        try:
            log.info("asking the daemon for a consistent snapshot")
            ans = request(args.socket or cfg.socket_path, {"cmd": "snapshot"}, timeout=args.timeout)
        except DaemonUnreachable:
            ans = None
            log.info("no daemon answering; exporting from the state dir")
        if ans is not None:
            if not ans.get("ok"):
                raise UserError(f"daemon: {ans.get('error')}")
            meta = export_snapshot(cfg, ans, out, args.force, args.adapter_only)
            _name_datasets(out, args.dataset)
            print(f"exported {meta['updates']} updates (digest {meta['digest'][:16]}…) to {out}")
            return 0
    meta = export_offline(cfg, out, args.force, args.adapter_only)
    _name_datasets(out, args.dataset)
    print(f"exported {meta['updates']} updates (digest {meta['digest'][:16]}…) to {out} (offline)")
    return 0


def _name_datasets(out: Path, datasets: list[str]) -> None:
    if datasets:
        from .export import update_meta
        update_meta(out, datasets=list(datasets))


# --- the parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onebyte", description="Peer-to-peer zeroth-order fine-tuning: "
                                "one seed id and one byte per update.")
    p.add_argument("--version", action="version", version=f"onebyte {VERSION}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    env_cfg = os.environ.get("ONEBYTE_CONFIG", DEFAULT_CONFIG)

    s = sub.add_parser("init", help="write a genesis (swarm definition) and print the swarm id",
                       description="Write a genesis TOML for a base model and data set, with every "
                       "hyper-parameter at its documented default (docs/config.md).")
    s.add_argument("--model", default="tiny", help="base model spec: folder, .gguf, smollm2, tiny[:seed] (default tiny)")
    s.add_argument("--data", default="builtin:sentiment", help="default training data: file or built-in task")
    s.add_argument("--eval-data", default="", help="default eval data (default: --data)")
    s.add_argument("--name", default="onebyte", help="swarm name shown in status")
    s.add_argument("--out", default="genesis.toml", help="where to write (default genesis.toml)")
    s.add_argument("--hyper", action="append", default=[], metavar="NAME=VALUE", help="override a hyper-parameter")
    s.add_argument("--scope", default="", help="trainable scope preset: norm, topN (every weight of the top N layers "
                   "and the final norm) or lora-topN (rank-16 LoRA on the top N layers); sets trainable and the "
                   "lora_* fields, which --hyper can still override (docs/config.md)")
    s.add_argument("--kind", default="classification", choices=["classification", "lm"], help="task kind (files)")
    s.add_argument("--template", default="", help="prompt template over the columns, e.g. '{sentence} It was'")
    s.add_argument("--verbalizer", default="", help="comma-separated label words, e.g. ' terrible, great'")
    s.add_argument("--text-column", default="text")
    s.add_argument("--label-column", default="label")
    s.add_argument("--admission", default="open", choices=["open", "closed"])
    s.add_argument("--member", action="append", default=[], metavar="PUBKEY", help="member public key (closed)")
    s.add_argument("--admission-work-bits", type=int, default=SWARM_DEFAULTS["admission_work_bits"],
                   help="open swarm: each key must carry this many bits of work (`onebyte keygen --genesis`: "
                   "about 2^bits key generations; 0 = none; default %(default)s)")
    s.add_argument("--authority", action="append", default=[], metavar="PUBKEY",
                   help="authority public key (repeatable): its signed amendments admit, revoke and rotate members")
    s.add_argument("--authority-threshold", type=int, default=SWARM_DEFAULTS["authority_threshold"],
                   help="authority signatures an amendment needs (k of the n --authority keys; default %(default)s)")
    s.add_argument("--max-rate", type=float, default=SWARM_DEFAULTS["max_updates_per_s_per_origin"],
                   help="max updates/s per origin (default %(default)s)")
    s.add_argument("--updates-per-record", type=int, default=SWARM_DEFAULTS["updates_per_record"],
                   help="updates sealed into one signed record (default %(default)s)")
    s.add_argument("--record-linger", type=float, default=SWARM_DEFAULTS["record_linger_s"],
                   help="seconds before a partial record is sealed (default %(default)s)")
    s.add_argument("--force", action="store_true", help="overwrite --out")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("keygen", help="write a node key (Ed25519, mode 0600)",
                       description="Write a new node key; prints its public key and node id.")
    s.add_argument("--out", default="node.key", help="key file (default node.key)")
    s.add_argument("--force", action="store_true", help="replace an existing key (a new node id)")
    s.add_argument("--genesis", default="", help="the swarm's genesis: for an open swarm with admission_work_bits, "
                   "find a key that carries that work (about 2^bits tries)")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("run", help="run the daemon", description="Run a node until SIGTERM "
                       "(graceful leave, exit 0). Config reference: docs/config.md.")
    s.add_argument("--config", default=env_cfg, help=f"node config TOML (default $ONEBYTE_CONFIG or {DEFAULT_CONFIG})")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check-config", help="validate a node config and what it names, without starting",
                       description="Check the node config, its genesis, key, data, model and state dir "
                       "as `run` would, without starting (exit 0: valid).")
    s.add_argument("--config", default=env_cfg, help=f"node config TOML (default $ONEBYTE_CONFIG or {DEFAULT_CONFIG})")
    s.set_defaults(func=cmd_check_config)

    add_client_parsers(sub, env_cfg)
    add_amend_parsers(sub, env_cfg)
    add_backup_parser(sub, env_cfg)
    add_doctor_parser(sub, env_cfg)
    for name, func, helptext in (("digest", cmd_digest, "print the state digest (daemon or state dir)"),
                                 ("export", cmd_export, "export the fine-tuned model as a transformers folder")):
        s = sub.add_parser(name, help=helptext, description=helptext + "; see docs/status.md.")
        s.add_argument("--config", default=env_cfg, help="node config (finds the socket and state dir)")
        s.add_argument("--socket", default="", help="status socket path (instead of --config)")
        s.add_argument("--timeout", type=float, default=600.0 if name == "export" else 30.0,
                       help="seconds to wait for the daemon")
        if name != "export":
            s.add_argument("--json", action="store_true", help="machine-readable output")
        s.add_argument("--offline", action="store_true", help="do not ask a daemon; rebuild from the state dir")
        if name == "export":
            s.add_argument("--out", required=True, help="output folder (new or empty)")
            s.add_argument("--force", action="store_true", help="replace a non-empty --out")
            s.add_argument("--dataset", action="append", default=[], metavar="ID",
                           help="the Hub dataset the swarm trained on (e.g. stanfordnlp/sst2), for the model "
                           "card's front matter; repeatable")
            s.add_argument("--adapter-only", action="store_true", help="a LoRA swarm: write the adapter alone "
                           "(PEFT format, loads with peft's AutoPeftModelForCausalLM), no merged model")
        s.set_defaults(func=func)

    s = sub.add_parser("eval", help="score the model offline on a labelled data file",
                       description="Score this node's model (its state dir, --snapshot, or --base) or an exported "
                       "folder (--model) on a labelled data file with the swarm's task, offline (read-only: "
                       "safe while the daemon runs).")
    s.add_argument("--config", default=env_cfg, help="node config (genesis, state dir)")
    s.add_argument("--data", default="", help="labelled .tsv/.csv/.jsonl (default: the eval data of config or genesis)")
    s.add_argument("--snapshot", default="", help="score this snapshot (weights file) instead of the state dir")
    s.add_argument("--base", action="store_true",
                   help="score the swarm's base model (before any update) instead of the state dir")
    s.add_argument("--model", default="", metavar="DIR",
                   help="score a folder `onebyte export` wrote (its task from onebyte.json; needs --data)")
    s.add_argument("--record", action="store_true",
                   help="with --model: write the result into the folder's onebyte.json and model card")
    s.add_argument("--n", type=int, default=0, help="score only the first N rows")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_eval)

    # `onebyte demo` (node/client/demo/): its heavy imports (torch, matplotlib) happen when it runs.
    from .demo import add_parser as add_demo_parser
    add_demo_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`onebyte status | head`): normal for a pipe, not an error.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if not isinstance(exc, (UserError,) + _model_errors()):
            raise
        print(f"onebyte: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
