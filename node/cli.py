"""`onebyte`: the command line (init, keygen, run, status, export, digest, demo).

Exit codes: 0 success; 1 the daemon failed at run time; 2 a user mistake (config,
genesis, key, model, data); 3 unusable state directory; 4 no daemon answering; 130
interrupted. User mistakes print one line, `onebyte: error: ...`, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from .config import load_config
from .errors import DaemonUnreachable, UserError

log = logging.getLogger("onebyte.node.cli")

DEFAULT_CONFIG = "node.toml"


def _setup_logging(level: str = "info") -> None:
    # Under systemd, journald timestamps each line; elsewhere we add the time ourselves.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr)


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("onebyte")
    except PackageNotFoundError:
        return "unknown (not installed)"


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

    from .genesis import SWARM_DEFAULTS, compute_swarm_id, dump_toml, parse_genesis

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
        from onebyte.model.load import num_layers
        from onebyte.model.scope import scope_preset
        try:
            hyper.update(scope_preset(args.scope, num_layers(args.model)))
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
    task = dict(spec, data=args.data, eval_data=args.eval_data or args.data)
    swarm = dict(SWARM_DEFAULTS, name=args.name, admission=args.admission, members=list(args.member),
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
    from .keys import write_key

    write_key(args.out, force=args.force)
    print(f"wrote {args.out} (mode 0600)")
    return cmd_pubkey(argparse.Namespace(key=args.out))


def cmd_pubkey(args) -> int:
    """The public key (for a genesis's members) and node id of a key file."""
    from onebyte.protocol.identity import node_id_of

    from .keys import public_of, read_key

    pub = public_of(read_key(args.key))
    print(f"public key {pub.hex()}\nnode id {node_id_of(pub).hex()}")
    return 0


def cmd_stop_producing(args) -> int:
    from .status import request

    ans = request(_socket_of(args), {"cmd": "stop_producing"}, timeout=args.timeout)
    if not ans.get("ok"):
        raise UserError(f"daemon: {ans.get('error')}")
    print(f"stopped producing after {ans.get('own_steps')} own steps; the node keeps replaying and serving")
    return 0


# --- run ---------------------------------------------------------------------------------

def cmd_run(args) -> int:
    import asyncio

    from .daemon import run_daemon

    cfg = load_config(args.config)
    _setup_logging(cfg.log_level)
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    return asyncio.run(run_daemon(cfg))


# --- status / digest / export ----------------------------------------------------------------

def _socket_of(args) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    return load_config(args.config).socket_path


def cmd_status(args) -> int:
    from .status import request

    st = request(_socket_of(args), {"cmd": "status"}, timeout=args.timeout)
    if not st.get("ok"):
        raise UserError(f"daemon: {st.get('error')}")
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(render_status(st))
    return 0


def render_status(st: dict) -> str:
    vv = st["version_vector"]
    ev = st.get("last_eval") or {}
    loss = st.get("loss_mean")
    lines = [
        f"node      {st['node_id']}  ({st['worker_state']}, up {st['uptime_s']:.0f}s, {st.get('listen')})",
        f"swarm     {st['swarm_id'][:16]}… {st.get('swarm_name') or ''}",
        f"steps     own {st['own_steps']}  applied own {st['applied_own']}  replayed {st['applied_replayed']}"
        f"  backlog {st['replay_backlog']}",
        f"rates     own {st['update_rate']['own_per_s']}/s  received {st['update_rate']['received_per_s']}/s",
        f"loss      {loss:.4f} (running mean)" if loss is not None else "loss      -",
        f"eval      step {ev.get('step')}: accuracy {ev.get('accuracy'):.4f} loss {ev.get('loss'):.4f}"
        if ev else "eval      -",
        f"state     {vv['updates']} updates from {vv['origins']} origins, digest {str(st['digest'])[:16]}…"
        + (f", {st['trainable_weights']:,} trainable weights" if st.get("trainable_weights") else ""),
        f"traffic   in {st['bytes_in']} B / {st['datagrams_in']} dgrams, out {st['bytes_out']} B / "
        f"{st['datagrams_out']} dgrams, drops {st['drops_total']}"
        + (f" {st['drops']}" if st['drops_total'] else ""),
        f"peers     {st['peers_alive']} alive of {len(st['peers'])}",
    ]
    trunk = st.get("trunk_cache")
    if trunk:
        done = (f"building {trunk.get('done')}/{trunk.get('total')} examples" if trunk.get("state") == "building"
                else f"{trunk.get('examples')} examples, {trunk.get('mb')} MB")
        lines.insert(5, f"trunk     layers >= {trunk['first_layer']} run per loss; cache {done}")
    for p in st["peers"]:
        rtt = f"{p['rtt_ms']:.1f} ms" if p.get("rtt_ms") is not None else "-"
        lines.append(f"  {p['node_id'][:16]}  {p['state']:<9} {p['addr'] or '-':<24} rtt {rtt}")
    return "\n".join(lines)


def cmd_digest(args) -> int:
    from .status import request

    if not args.offline:
        try:
            ans = request(_socket_of(args), {"cmd": "digest"}, timeout=args.timeout)
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


def cmd_export(args) -> int:
    from .export import check_out_dir, export_offline, export_snapshot
    from .status import request

    cfg = load_config(args.config)
    out = Path(args.out)
    check_out_dir(out, args.force)
    if not args.offline:
        try:
            ans = request(args.socket or cfg.socket_path, {"cmd": "snapshot"}, timeout=args.timeout)
        except DaemonUnreachable:
            ans = None
            log.info("no daemon answering; exporting from the state dir")
        if ans is not None:
            if not ans.get("ok"):
                raise UserError(f"daemon: {ans.get('error')}")
            meta = export_snapshot(cfg, ans, out, args.force)
            print(f"exported {meta['updates']} updates (digest {meta['digest'][:16]}…) to {out}")
            return 0
    meta = export_offline(cfg, out, args.force)
    print(f"exported {meta['updates']} updates (digest {meta['digest'][:16]}…) to {out} (offline)")
    return 0


# --- the parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onebyte", description="Peer-to-peer zeroth-order fine-tuning: "
                                "one seed id and one byte per update.")
    p.add_argument("--version", action="version", version=f"onebyte {_version()}")
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
    s.add_argument("--max-rate", type=float, default=50.0, help="max updates/s per origin (default 50)")
    s.add_argument("--updates-per-record", type=int, default=32)
    s.add_argument("--record-linger", type=float, default=0.25, help="seconds before a partial record is sealed")
    s.add_argument("--force", action="store_true", help="overwrite --out")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("keygen", help="write a node key (Ed25519, mode 0600)",
                       description="Write a new node key; prints its public key and node id.")
    s.add_argument("--out", default="node.key", help="key file (default node.key)")
    s.add_argument("--force", action="store_true", help="replace an existing key (a new node id)")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("pubkey", help="print the public key and node id of a key file",
                       description="Print the public key (for a genesis's members) and node id of an existing key.")
    s.add_argument("key", help="key file written by `onebyte keygen`")
    s.set_defaults(func=cmd_pubkey)

    s = sub.add_parser("stop-producing", help="a running node stops its own steps (keeps replaying, serving)",
                       description="Ask a running daemon to stop taking local steps until it restarts; it "
                       "keeps replaying peers' updates and serving them (status command stop_producing).")
    s.add_argument("--config", default=env_cfg, help="node config (finds the socket)")
    s.add_argument("--socket", default="", help="status socket path (instead of --config)")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the daemon")
    s.set_defaults(func=cmd_stop_producing)

    s = sub.add_parser("run", help="run the daemon", description="Run a node until SIGTERM "
                       "(graceful leave, exit 0). Config reference: docs/config.md.")
    s.add_argument("--config", default=env_cfg, help=f"node config TOML (default $ONEBYTE_CONFIG or {DEFAULT_CONFIG})")
    s.set_defaults(func=cmd_run)

    for name, func, helptext in (("status", cmd_status, "show a running daemon's status"),
                                 ("digest", cmd_digest, "print the state digest (daemon or state dir)"),
                                 ("export", cmd_export, "export the fine-tuned model as a transformers folder")):
        s = sub.add_parser(name, help=helptext, description=helptext + "; see docs/status.md.")
        s.add_argument("--config", default=env_cfg, help="node config (finds the socket and state dir)")
        s.add_argument("--socket", default="", help="status socket path (instead of --config)")
        s.add_argument("--timeout", type=float, default=600.0 if name == "export" else 30.0,
                       help="seconds to wait for the daemon")
        if name != "export":
            s.add_argument("--json", action="store_true", help="machine-readable output")
        if name != "status":
            s.add_argument("--offline", action="store_true", help="do not ask a daemon; rebuild from the state dir")
        if name == "export":
            s.add_argument("--out", required=True, help="output folder (new or empty)")
            s.add_argument("--force", action="store_true", help="replace a non-empty --out")
        s.set_defaults(func=func)

    # `onebyte demo` lives in node/demo.py (the demo's own module); registered when present.
    # A broken demo module must not take the daemon's CLI down: `onebyte demo` then explains.
    if importlib.util.find_spec("onebyte.node.demo") is not None:
        try:
            importlib.import_module("onebyte.node.demo").add_parser(sub)
        except Exception as exc:  # noqa: BLE001 (any failure of an optional command)
            reason = f"{type(exc).__name__}: {exc}"
            s = sub.add_parser("demo", help="(unavailable) run the demo", add_help=True)

            def unavailable(_args, reason=reason):
                raise UserError(f"onebyte demo is unavailable: {reason}")
            s.set_defaults(func=unavailable)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not isinstance(exc, (UserError,) + _model_errors()):
            raise
        print(f"onebyte: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
