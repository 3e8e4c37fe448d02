"""The node config (`node.toml`): where a daemon listens, whom it knows, where it keeps state.

Every field, its default and its meaning is in docs/config.md; this module is the
validator. Errors name the file, the field and the fix, in one line. Relative paths
resolve against the config file's directory; `$VARS` in paths are expanded (so a
systemd unit can point `key` at `$CREDENTIALS_DIRECTORY/node.key`).

Outside the unit (an operator's root shell running `onebyte status --config
/etc/onebyte/NAME.toml`), systemd's directory variables are unset: they resolve to where
the unit `onebyte@NAME` puts them (UNIT_DIRS), and a path that still names an unset
variable is a one-line error saying what to set.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

Addr = tuple[str, int]

# Where systemd/onebyte@.service puts its directories for instance NAME (the config file
# /etc/onebyte/NAME.toml): StateDirectory, RuntimeDirectory, and the key LoadCredential
# reads (node.key:/etc/onebyte/NAME.key, i.e. beside the config).
UNIT_DIRS = {"STATE_DIRECTORY": "/var/lib/onebyte-{name}", "RUNTIME_DIRECTORY": "/run/onebyte-{name}",
             "CREDENTIALS_DIRECTORY": None}


def _expand(v: str, where: str, config: Path | None) -> str:
    """`$VARS` and `~` expanded; systemd's directory variables, when unset, as the unit sets them."""
    for var, unit_dir in UNIT_DIRS.items():
        if f"${var}" not in v and f"${{{var}}}" not in v or os.environ.get(var):
            continue
        if config is None:
            raise ConfigError(f"{where}: {v!r} names ${var}, which is set only when systemd runs the "
                              f"node; set it in the environment (or use --config with the unit's file)")
        name = config.stem
        if unit_dir is None:   # $CREDENTIALS_DIRECTORY/node.key is /etc/onebyte/NAME.key
            v = v.replace(f"${{{var}}}/node.key", str(config.with_suffix(".key")))
            v = v.replace(f"${var}/node.key", str(config.with_suffix(".key")))
            if var in v:
                raise ConfigError(f"{where}: {v!r} names ${var}, which is set only when systemd runs the "
                                  "node; set it in the environment")
        else:
            v = v.replace(f"${{{var}}}", unit_dir.format(name=name)).replace(f"${var}", unit_dir.format(name=name))
    return os.path.expanduser(os.path.expandvars(v))

DEFAULT_PORT = 7470

# field -> (default, description). The single source for validation and docs/config.md.
NODE_FIELDS: dict[str, tuple[Any, str]] = {
    "listen": ("0.0.0.0:7470", 'UDP address to bind, "host:port" or "[v6]:port"; port 0 picks a free port'),
    "peers": ([], 'bootstrap peers, a list of "host:port"'),
    "genesis": (None, "path to the genesis TOML (required)"),
    "key": (None, "path to the node key written by `onebyte keygen` (required)"),
    "state_dir": (None, "directory for the update log and snapshots (required)"),
    "status_socket": ("", "Unix socket path; default $RUNTIME_DIRECTORY/status.sock, else <state_dir>/status.sock"),
    "model": ("", "model spec overriding the genesis base_model (e.g. a local copy); must hash to base_model_hash"),
    "initial_snapshot": ("", "a fresh node starts from this snapshot (weights written by the status socket's snapshot command, with its .json beside) instead of the base model"),
    "device": ("cpu", 'torch device of the worker: "cpu", "cuda" or "cuda:N"'),
    "dtype": ("fp32", 'precision of the frozen base model: "fp32", "bf16" or "fp16" (fp16: CUDA only); the trainable scope is fp32 on its grid whatever this is, and forwards run under autocast in this precision; replicas stay identical across dtypes (docs/operations.md, GPU nodes)'),
    "data": ("", "training data (file or built-in task name); default: the genesis [task] data"),
    "batch_size": (8, "examples per local step (per loss evaluation)"),
    "max_steps": (0, "stop producing own updates after this many own steps (0 = unlimited); the node keeps replaying"),
    "step_interval_s": (0.0, "minimum seconds between own steps (also capped by the genesis rate cap)"),
    "eval_every": (0, "evaluate every N own steps (0 = never)"),
    "privacy_epsilon": (0.0, "differential privacy for this node's training rows (docs/privacy.md): the epsilon budget; each own step is clipped and noised before quantization, and the node stops producing when the next step would pass it; 0 = off"),
    "privacy_delta": (1e-5, "the delta of the privacy guarantee (below 1 / training rows)"),
    "privacy_clip": (1.0, "private steps: the bound C on one example's projected gradient"),
    "privacy_clip_quantile": (0.0, "private steps: > 0 adapts C each step toward this quantile of the examples' |projected gradient| (e.g. 0.5: the median), starting at privacy_clip, from a noised count inside the same budget (docs/privacy.md); 0 = C stays privacy_clip"),
    "privacy_noise_multiplier": (0.0, "private steps: the noise's standard deviation in units of privacy_clip; 0 = the smallest that lets max_steps steps fit the budget"),
    "audit_interval_s": (2.0, "measure one peer's updates since its last audit on this node's own data this often (a classification task's label margin, else its loss) and flag origins whose q disagrees with it (docs/security.md, Poisoning); 0 = never"),
    "eval_data": ("", "evaluation data (file or task name); default: the genesis [task] eval data"),
    "eval_examples": (256, "examples of eval_data used per evaluation"),
    "snapshot_every": (2000, "write a snapshot after this many newly applied updates (0 = only at shutdown)"),
    "snapshot_join": (True, "at start, join from a peer's attested snapshot (then replay only the tail) when peers hold at least snapshot_join_min_updates more updates than the log, or compacted what the log lacks"),
    "snapshot_join_min_updates": (10000, "a snapshot join is worth it from this many updates behind the peers' snapshot"),
    "snapshot_attest": (2, "members (the serving one included) that must report the same weights digest at the snapshot's version vector before it is used"),
    "snapshot_serve": (True, "serve this node's snapshot to joining peers over TCP on the UDP listen port number"),
    "snapshot_serve_bytes_per_s": (64 << 20, "rate limit of snapshot serving, all connections together (bytes/s)"),
    "snapshot_attest_max_updates": (4096, "attest a joiner's snapshot digest by undoing at most this many of the applied updates (worker time)"),
    "compact_delay_s": (600.0, "compact only up to a snapshot written at least this long ago (a joiner that took a newer one still finds the records after it)"),
    "compact_interval_s": (60.0, "compact the update log this often: drop what the newest snapshot holds once every live member has passed it (0 = never)"),
    "trunk_cache": (True, "cache what the frozen layers below the trainable scope compute for each training and eval example (<state_dir>/trunk.pt) and run only the layers above it (classification tasks)"),
    "fsync": (True, "fsync the update log before applying or publishing (false: faster, may lose the tail on power loss)"),
    "seed": (0, "seed of the local batch sampler (mixed with the node id)"),
    "threads": (0, "torch intra-op threads for the worker (0 = torch default)"),
    "max_backlog": (1_000_000, "replay backlog bound: above it the loop stops taking updates from the engine (back-pressure); also the most updates one fused replay call applies"),
    "log_level": ("info", "debug, info, warning or error"),
    "log_format": ("text", 'text (one line per event) or json (one JSON object per line, for log shippers)'),
    "metrics_listen": ("", 'serve Prometheus metrics over HTTP at "host:port" (e.g. "127.0.0.1:9470"); empty = off'),
}
REQUIRED = ("genesis", "key", "state_dir")


@dataclass(frozen=True)
class NodeConfig:
    """A validated node config. Built only by parse_config, which fills every field: the
    defaults live in NODE_FIELDS alone."""
    genesis: Path
    key: Path
    state_dir: Path
    listen: Addr
    peers: tuple[Addr, ...]
    status_socket: Path | None
    model: str
    initial_snapshot: Path | None
    device: str
    dtype: str
    data: str
    batch_size: int
    max_steps: int
    step_interval_s: float
    eval_every: int
    audit_interval_s: float
    privacy_epsilon: float
    privacy_delta: float
    privacy_clip: float
    privacy_clip_quantile: float
    privacy_noise_multiplier: float
    eval_data: str
    eval_examples: int
    snapshot_every: int
    snapshot_join: bool
    snapshot_join_min_updates: int
    snapshot_attest: int
    snapshot_serve: bool
    snapshot_serve_bytes_per_s: int
    snapshot_attest_max_updates: int
    compact_interval_s: float
    compact_delay_s: float
    trunk_cache: bool
    fsync: bool
    seed: int
    threads: int
    max_backlog: int
    log_level: str
    log_format: str
    metrics_listen: Addr | None
    protocol: dict = field(default_factory=dict)  # [protocol] overrides of ProtocolConfig tuning
    labels: dict = field(default_factory=dict)    # [labels] node id (hex prefix) -> name, for members
    path: Path | None = None

    @property
    def socket_path(self) -> Path:
        if self.status_socket is not None:
            return self.status_socket
        rt = os.environ.get("RUNTIME_DIRECTORY")
        if rt:
            return Path(rt.split(":")[0]) / "status.sock"
        if self.path is not None:   # outside the unit: where `onebyte@NAME` has its socket, if there
            unit = Path(UNIT_DIRS["RUNTIME_DIRECTORY"].format(name=self.path.stem)) / "status.sock"
            if unit.exists():
                return unit
        return self.state_dir / "status.sock"


def parse_addr(text: Any, where: str, allow_port0: bool) -> Addr:
    """"host:port" or "[v6]:port" -> (host, port). Hostnames are kept (resolved at start)."""
    hint = f'{where}: expected "host:port" or "[ipv6]:port" (e.g. "127.0.0.1:{DEFAULT_PORT}"), got {text!r}'
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(hint)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ConfigError(hint)
        host, port_s = text[1:end], text[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    else:
        host, _, port_s = text.rpartition(":")
        if ":" in host:
            raise ConfigError(f"{where}: put IPv6 addresses in brackets, e.g. \"[{host}]:{port_s}\"")
    if not host or not port_s.isdigit():
        raise ConfigError(hint)
    port = int(port_s)
    lo = 0 if allow_port0 else 1
    if not lo <= port <= 65535:
        raise ConfigError(f"{where}: port must be in {lo}..65535, got {port}")
    return host, port


def format_addr(addr: Addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _path(v: Any, where: str, base: Path, config: Path | None = None) -> Path:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: expected a non-empty path string, got {v!r}")
    p = Path(_expand(v, where, config))
    return p if p.is_absolute() else base / p


def parse_config(data: dict, path: Path | None = None) -> NodeConfig:
    where = f"config {path}" if path else "config"
    base = path.parent if path else Path.cwd()
    extra = set(data) - {"node", "protocol", "labels"}
    if extra:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(sorted(extra))}; "
                          "a node config has [node] and optionally [protocol] and [labels]")
    node = data.get("node")
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: missing [node] table (see docs/config.md or systemd/node.example.toml)")
    for k in node:
        if k not in NODE_FIELDS:
            raise ConfigError(f"{where}: unknown field [node] {k}; known: {', '.join(NODE_FIELDS)}")
    for k in REQUIRED:
        if k not in node:
            raise ConfigError(f"{where}: missing required field [node] {k} ({NODE_FIELDS[k][1]})")

    def get(k: str, typ: type | tuple):
        v = node.get(k, NODE_FIELDS[k][0])
        ok = isinstance(v, typ) and not (isinstance(v, bool) and typ is not bool)
        if not ok:
            want = typ.__name__ if isinstance(typ, type) else "number"
            raise ConfigError(f"{where}: [node] {k} must be a {want}, got {v!r}")
        return v

    def nonneg(k: str, typ=int):
        v = get(k, typ)
        if v < 0:
            raise ConfigError(f"{where}: [node] {k} must be >= 0, got {v}")
        return v

    listen = parse_addr(get("listen", str), f"{where}: [node] listen", allow_port0=True)
    peers_raw = get("peers", list)
    peers = tuple(parse_addr(p, f"{where}: [node] peers[{i}]", allow_port0=False)
                  for i, p in enumerate(peers_raw))
    device = get("device", str)
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f'{where}: [node] device must be "cpu", "cuda" or "cuda:N", got {device!r}')
    dtype = get("dtype", str).lower()
    if dtype not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f'{where}: [node] dtype must be "fp32", "bf16" or "fp16", got {dtype!r}')
    if dtype == "fp16" and not device.startswith("cuda"):
        raise ConfigError(f'{where}: [node] dtype = "fp16" needs device = "cuda" (on a CPU use "bf16")')
    batch_size = get("batch_size", int)
    if batch_size < 1:
        raise ConfigError(f"{where}: [node] batch_size must be >= 1, got {batch_size}")
    level = get("log_level", str).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where}: [node] log_level must be debug, info, warning or error, got {level!r}")
    log_format = get("log_format", str).lower()
    if log_format not in ("text", "json"):
        raise ConfigError(f'{where}: [node] log_format must be "text" or "json", got {log_format!r}')
    sock = get("status_socket", str)
    protocol = data.get("protocol", {})
    if not isinstance(protocol, dict):
        raise ConfigError(f"{where}: [protocol] must be a table")
    labels = _labels(data.get("labels", {}), where)
    metrics = get("metrics_listen", str)
    return NodeConfig(
        genesis=_path(node["genesis"], f"{where}: [node] genesis", base, path),
        key=_path(node["key"], f"{where}: [node] key", base, path),
        state_dir=_path(node["state_dir"], f"{where}: [node] state_dir", base, path),
        listen=listen,
        peers=peers,
        status_socket=_path(sock, f"{where}: [node] status_socket", base, path) if sock else None,
        model=get("model", str),
        initial_snapshot=(_path(get("initial_snapshot", str), f"{where}: [node] initial_snapshot", base, path)
                          if get("initial_snapshot", str) else None),
        device=device,
        dtype=dtype,
        data=_maybe_path(get("data", str), base),
        batch_size=batch_size,
        max_steps=nonneg("max_steps"),
        step_interval_s=float(nonneg("step_interval_s", (int, float))),
        eval_every=nonneg("eval_every"),
        audit_interval_s=float(nonneg("audit_interval_s", (int, float))),
        privacy_epsilon=float(nonneg("privacy_epsilon", (int, float))),
        privacy_delta=_open_unit(float(nonneg("privacy_delta", (int, float))), f"{where}: [node] privacy_delta"),
        privacy_clip=_positive(float(nonneg("privacy_clip", (int, float))), f"{where}: [node] privacy_clip"),
        privacy_clip_quantile=_unit_or_zero(float(nonneg("privacy_clip_quantile", (int, float))),
                                            f"{where}: [node] privacy_clip_quantile"),
        privacy_noise_multiplier=float(nonneg("privacy_noise_multiplier", (int, float))),
        eval_data=_maybe_path(get("eval_data", str), base),
        eval_examples=max(1, nonneg("eval_examples")),
        snapshot_every=nonneg("snapshot_every"),
        snapshot_join=get("snapshot_join", bool),
        snapshot_join_min_updates=nonneg("snapshot_join_min_updates"),
        snapshot_attest=max(1, nonneg("snapshot_attest")),
        snapshot_serve=get("snapshot_serve", bool),
        snapshot_serve_bytes_per_s=max(1, nonneg("snapshot_serve_bytes_per_s")),
        snapshot_attest_max_updates=nonneg("snapshot_attest_max_updates"),
        compact_interval_s=float(nonneg("compact_interval_s", (int, float))),
        compact_delay_s=float(nonneg("compact_delay_s", (int, float))),
        trunk_cache=get("trunk_cache", bool),
        fsync=get("fsync", bool),
        seed=get("seed", int),
        threads=nonneg("threads"),
        max_backlog=max(1, nonneg("max_backlog")),
        log_level=level,
        log_format=log_format,
        metrics_listen=parse_addr(metrics, f"{where}: [node] metrics_listen", allow_port0=True) if metrics else None,
        protocol=dict(protocol),
        labels=labels,
        path=path,
    )


def _labels(table, where: str) -> dict[str, str]:
    """[labels]: "<node id or a prefix of it, hex>" = "name", shown by `onebyte members`."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [labels] must be a table of \"<node id hex prefix>\" = \"name\"")
    for k, v in table.items():
        if not k or any(c not in "0123456789abcdefABCDEF" for c in k) or len(k) > 32:
            raise ConfigError(f"{where}: [labels] key {k!r} is not a node id or a prefix of one (hex)")
        if not isinstance(v, str):
            raise ConfigError(f"{where}: [labels] {k} must be a string, got {v!r}")
    return {k.lower(): v for k, v in table.items()}


def _maybe_path(v: str, base: Path) -> str:
    """Data may be a built-in task name or a file; resolve it only if it names a file."""
    if not v:
        return v
    p = Path(os.path.expanduser(os.path.expandvars(v)))
    if not p.is_absolute() and (base / p).exists():
        return str(base / p)
    return str(p) if p.exists() else v


def read_toml(path: Path, what: str, missing_hint: str) -> dict:
    """Parse a TOML file, or raise one clear ConfigError line naming `what` it is."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found{missing_hint}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def _open_unit(v: float, what: str) -> float:
    if not 0 < v < 1:
        raise ConfigError(f"{what} must be between 0 and 1 (exclusive), got {v}")
    return v


def _unit_or_zero(v: float, what: str) -> float:
    if not (v == 0 or 0 < v < 1):
        raise ConfigError(f"{what} must be 0 (off) or between 0 and 1 (exclusive), got {v}")
    return v


def _positive(v: float, what: str) -> float:
    if not v > 0:
        raise ConfigError(f"{what} must be > 0, got {v}")
    return v


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    data = read_toml(path, "config file", " (see systemd/node.example.toml)")
    return parse_config(data, path.resolve())
