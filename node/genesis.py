"""The genesis: the immutable swarm definition, and the swarm id derived from it.

A genesis is a TOML file with three tables:

    [swarm]  name, protocol_version, admission, members, rate caps, record size,
             base_model (spec string) and base_model_hash
    [hyper]  the fields of onebyte.model.Hyper (every one written out by `onebyte init`)
    [task]   the task spec handed to onebyte.model's task loader

The swarm id is blake2b-256 over the *canonical bytes* of the parsed genesis: JSON
with sorted keys, no whitespace, ASCII only. Parsing first means comments, key
order and TOML formatting do not change the id; any change of a value does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onebyte.protocol.config import ProtocolConfig

from .config import read_toml
from .errors import ConfigError

GENESIS_TABLES = ("swarm", "hyper", "task")

# [swarm] fields and their defaults. Rate caps and record sizes are swarm-wide (every
# receiver enforces them), so they live here and not in the per-node config; their
# defaults are ProtocolConfig's own (one source), read without constructing one.
_PROTOCOL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ProtocolConfig)}
GENESIS_PROTOCOL_FIELDS = ("protocol_version", "admission", "max_updates_per_s_per_origin",
                           "updates_per_record", "record_linger_s", "influence_window",
                           "influence_max_abs", "influence_max_sum", "records_per_signature",
                           "authority_threshold", "admission_work_bits")
SWARM_DEFAULTS: dict[str, Any] = {
    "name": "onebyte",
    "members": [],                 # hex Ed25519 public keys (closed admission)
    "authority": [],               # hex keys whose signed amendments admit, revoke, rotate members
    **{k: _PROTOCOL_DEFAULTS[k] for k in GENESIS_PROTOCOL_FIELDS},
    "base_model": "tiny",          # model spec (see docs/config.md)
    "base_model_hash": "",         # blake2b-256 of the base weights, hex
}
_SWARM_REQUIRED = ("base_model", "base_model_hash")


def canonical_bytes(parsed: dict) -> bytes:
    """The bytes the swarm id hashes: sorted-key compact JSON of the parsed genesis."""
    try:
        return json.dumps(parsed, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:  # datetimes, NaN: not allowed in a genesis
        raise ConfigError(f"genesis: value not allowed in a genesis ({exc}); use strings, "
                          "numbers, booleans, lists and tables only") from None


def compute_swarm_id(parsed: dict) -> bytes:
    return hashlib.blake2b(canonical_bytes(parsed), digest_size=32).digest()


@dataclass(frozen=True)
class Genesis:
    swarm: dict
    hyper: dict
    task: dict
    swarm_id: bytes
    path: Path | None = None

    @property
    def parsed(self) -> dict:
        return {"swarm": self.swarm, "hyper": self.hyper, "task": self.task}

    def to_toml(self) -> str:
        return dump_toml(self.parsed)

    def base_model_spec(self) -> str:
        """[swarm] base_model; a path (a .gguf file or a folder: it has a '/' or ends in .gguf)
        is relative to the genesis file's folder, $VARS and ~ expanded (docs/config.md)."""
        spec = self.swarm["base_model"]
        if self.path is None or not ("/" in spec or spec.endswith(".gguf")):
            return spec
        p = Path(os.path.expandvars(spec)).expanduser()
        return str(p if p.is_absolute() else Path(self.path).parent / p)

    def seeder(self):
        """onebyte.model.Seeder of this swarm: (origin, step, q) -> the update a replica applies."""
        from onebyte.model import Seeder
        return Seeder.for_hyper(self.swarm_id, self.make_hyper())

    def make_hyper(self):
        """onebyte.model.Hyper from [hyper]; unknown fields are a config error."""
        from onebyte.model import Hyper  # imported late: torch is heavy
        known = {f.name for f in dataclasses.fields(Hyper)}
        unknown = sorted(set(self.hyper) - known)
        if unknown:
            raise ConfigError(f"genesis [hyper]: unknown field(s) {', '.join(unknown)}; "
                              f"known fields: {', '.join(sorted(known))}")
        try:
            return Hyper(**self.hyper)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"genesis [hyper]: {exc}") from None

    def setting(self, name: str):
        """A [swarm] field, or its documented default when the genesis leaves it out."""
        return self.swarm.get(name, SWARM_DEFAULTS[name])

    def member_keys(self) -> frozenset[bytes]:
        return frozenset(bytes.fromhex(m) for m in self.swarm.get("members", []))

    def authority_keys(self) -> frozenset[bytes]:
        return frozenset(bytes.fromhex(m) for m in self.swarm.get("authority", []))


def own_key_work_problem(genesis: Genesis, pub: bytes, key_path) -> str | None:
    """Why this node's key would be refused by an open swarm that asks for admission work."""
    from onebyte.protocol.identity import key_work
    bits = genesis.setting("admission_work_bits")
    if genesis.setting("admission") != "open" or not bits or key_work(genesis.swarm_id, pub) >= bits:
        return None
    return (f"key {key_path} carries {key_work(genesis.swarm_id, pub)} of the {bits} bits of admission work this "
            f"open swarm asks for: peers would ignore it; make a key with `onebyte keygen --genesis GENESIS "
            f"--out {key_path} --force` (about 2^{bits} tries)")


def protocol_config(genesis: Genesis, overrides: dict):
    """The engine's ProtocolConfig: the swarm-wide fields from the genesis, node tuning from
    the node config's [protocol] table (which may not touch swarm-wide fields)."""
    known = {f.name for f in dataclasses.fields(ProtocolConfig)} - {"swarm_id", "members", "authority"}
    for k, v in overrides.items():
        if k in GENESIS_PROTOCOL_FIELDS:
            raise ConfigError(f"[protocol] {k} is fixed by the genesis ([swarm] {k}); remove it from the node config")
        if k not in known:
            raise ConfigError(f"[protocol] unknown field {k}; known: {', '.join(sorted(known))}")
        want = type(_PROTOCOL_DEFAULTS[k])
        if want in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                     or (want is int and not isinstance(v, int))):
            raise ConfigError(f"[protocol] {k} must be {'an integer' if want is int else 'a number'}, got {v!r}")
    # A genesis may leave a field out: it then means the documented default (SWARM_DEFAULTS,
    # which is ProtocolConfig's own; a test pins both against docs/config.md).
    fields = {k: genesis.setting(k) for k in GENESIS_PROTOCOL_FIELDS}
    try:
        return ProtocolConfig(swarm_id=genesis.swarm_id, members=genesis.member_keys(),
                              authority=genesis.authority_keys(), **fields, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"protocol settings: {exc}") from None


def parse_genesis(data: dict, where: str = "genesis") -> Genesis:
    """Validate a parsed genesis dict; every problem names the field."""
    for table in data:
        if table not in GENESIS_TABLES:
            raise ConfigError(f"{where}: unknown table [{table}]; a genesis has "
                              f"[swarm], [hyper] and [task]")
    swarm = data.get("swarm")
    if not isinstance(swarm, dict):
        raise ConfigError(f"{where}: missing [swarm] table; create one with `onebyte init`")
    for key in swarm:
        if key not in SWARM_DEFAULTS:
            raise ConfigError(f"{where}: unknown field [swarm] {key}; known fields: "
                              f"{', '.join(SWARM_DEFAULTS)}")
    for key in _SWARM_REQUIRED:
        if key not in swarm:
            raise ConfigError(f"{where}: missing [swarm] {key}; `onebyte init` writes it")
    _check_type(where, "swarm", swarm, "name", str)
    _check_type(where, "swarm", swarm, "protocol_version", int)
    _check_type(where, "swarm", swarm, "base_model", str)
    _check_type(where, "swarm", swarm, "base_model_hash", str)
    _check_type(where, "swarm", swarm, "updates_per_record", int)
    _check_type(where, "swarm", swarm, "records_per_signature", int)
    if not 1 <= swarm.get("records_per_signature", 1) <= 16:
        raise ConfigError(f"{where}: [swarm] records_per_signature must be in 1..16")
    for f in ("max_updates_per_s_per_origin", "record_linger_s"):
        _check_type(where, "swarm", swarm, f, (int, float))
        if f in swarm and not (math.isfinite(swarm[f]) and swarm[f] > 0):
            raise ConfigError(f"{where}: [swarm] {f} must be a positive number")
    if swarm.get("admission", "open") not in ("open", "closed"):
        raise ConfigError(f'{where}: [swarm] admission must be "open" or "closed", '
                          f"got {swarm.get('admission')!r}")
    members = swarm.get("members", [])
    if not isinstance(members, list) or not all(_is_hex_key(m) for m in members):
        raise ConfigError(f"{where}: [swarm] members must be a list of hex Ed25519 public "
                          "keys (64 hex digits each; `onebyte keygen` prints one)")
    if swarm.get("admission") == "closed" and not members:
        raise ConfigError(f'{where}: [swarm] admission = "closed" needs at least one member key')
    _check_member_keys(where, members)
    authority = swarm.get("authority", [])
    if not isinstance(authority, list) or not all(_is_hex_key(m) for m in authority):
        raise ConfigError(f"{where}: [swarm] authority must be a list of hex Ed25519 public keys "
                          "(64 hex digits each; `onebyte keygen` prints one)")
    _check_member_keys(where, authority, "authority")
    _check_type(where, "swarm", swarm, "authority_threshold", int)
    _check_type(where, "swarm", swarm, "admission_work_bits", int)
    h = swarm["base_model_hash"]
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise ConfigError(f"{where}: [swarm] base_model_hash must be 64 lowercase hex digits "
                          "(blake2b-256); `onebyte init` computes it")
    hyper = data.get("hyper", {})
    task = data.get("task", {})
    if not isinstance(hyper, dict) or not isinstance(task, dict):
        raise ConfigError(f"{where}: [hyper] and [task] must be tables")
    parsed = {"swarm": swarm, "hyper": hyper, "task": task}
    g = Genesis(swarm=swarm, hyper=hyper, task=task, swarm_id=compute_swarm_id(parsed))
    try:   # every swarm-wide protocol field in range, as the engine will need it
        protocol_config(g, {})
    except ConfigError as exc:
        raise ConfigError(f"{where}: [swarm] {str(exc).removeprefix('protocol settings: ')}") from None
    return g


def load_genesis(path: str | Path) -> Genesis:
    path = Path(path)
    data = read_toml(path, "genesis file", "; create one with `onebyte init`")
    g = parse_genesis(data, where=f"genesis {path}")
    return dataclasses.replace(g, path=path)


def _check_member_keys(where: str, members: list, field: str = "members") -> None:
    """The signature rule (docs/security.md) refuses small-order, mixed-order and
    non-canonical keys: a genesis listing one would admit a member that can never sign
    (or, under a laxer library, one that "signs" every message)."""
    from onebyte.protocol.identity import public_key_problem
    for i, m in enumerate(members):
        problem = public_key_problem(bytes.fromhex(m))
        if problem is not None:
            raise ConfigError(f"{where}: [swarm] {field}[{i}] = {m} is not an acceptable Ed25519 public "
                              f"key ({problem.replace('_', ' ')}); use the key `onebyte keygen` printed")


def _is_hex_key(m: Any) -> bool:
    return isinstance(m, str) and len(m) == 64 and all(c in "0123456789abcdef" for c in m)


def _check_type(where: str, table: str, d: dict, key: str, typ) -> None:
    if key in d and (not isinstance(d[key], typ) or isinstance(d[key], bool)):
        want = typ.__name__ if isinstance(typ, type) else "number"
        raise ConfigError(f"{where}: [{table}] {key} must be a {want}, got {d[key]!r}")


# --- a small TOML writer (genesis and example configs only hold plain values) --------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"cannot write non-finite number {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    if k and all(c.isalnum() or c in "_-" for c in k):
        return k
    return json.dumps(k)


def dump_toml(tables: dict[str, dict], comments: dict[str, str] | None = None) -> str:
    """Write {table: {key: value}} as TOML; `comments` maps "table.key" to a trailing note."""
    comments = comments or {}
    out = []
    for table, fields in tables.items():
        out.append(f"[{table}]")
        for k, v in fields.items():
            line = f"{_toml_key(k)} = {_toml_value(v)}"
            note = comments.get(f"{table}.{k}")
            out.append(f"{line}  # {note}" if note else line)
        out.append("")
    return "\n".join(out)
