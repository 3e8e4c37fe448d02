"""Terminal live view of a running swarm, fed by `onebyte status --json` dicts.

The view knows nothing about daemons or sockets: the demo and `onebyte top` poll
each node's status socket and hand the parsed dicts to `LiveView.update`. That keeps the
renderer testable on fake status dicts and reusable by anyone who can produce
the status JSON (docs/status.md).

Two output modes:
- TTY: a block of lines redrawn in place with plain ANSI escapes (cursor up,
  clear line), so no extra dependency is needed.
- not a TTY (CI logs, `| tee`): one compact progress line every `line_every_s`
  seconds; escapes would only garble a log file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Sequence

# ANSI: move the cursor up n lines / clear the current line.
_UP = "\x1b[{n}F"
_CLEAR = "\x1b[2K"


def _num(d: Mapping[str, Any] | None, key: str, default: float = 0.0) -> float:
    """A numeric status field, tolerant of absent keys and nulls (a node that
    just started has no loss yet)."""
    if not d:
        return default
    v = d.get(key)
    if isinstance(v, bool) or v is None:
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _opt(d: Mapping[str, Any] | None, key: str) -> float | None:
    if not d:
        return None
    v = d.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'. Binary units, as the wire counters are raw bytes."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def bar(fraction: float, width: int = 30) -> str:
    """A text progress bar; the fraction is clamped so a late poll never
    draws past 100%."""
    f = min(1.0, max(0.0, fraction))
    full = int(round(f * width))
    return "[" + "#" * full + "-" * (width - full) + f"] {f * 100:5.1f}%"


@dataclass
class NodeRow:
    """The few numbers per node the view shows, pulled out of a status dict."""

    name: str
    up: bool
    own_steps: int = 0
    applied: int = 0  # own + replayed updates applied to this replica
    backlog: int = 0
    peers: int = 0
    loss: float | None = None
    accuracy: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    drops: int = 0
    digest: str = ""
    phase: str = "ready"   # a starting daemon: "loading model", "replaying log 10 of 99"...

    @classmethod
    def from_status(cls, name: str, st: Mapping[str, Any] | None) -> "NodeRow":
        if not st:
            return cls(name=name, up=False)
        phase = st.get("phase") or {}
        if phase.get("name", "ready") != "ready":
            done = f" {phase['done']} of {phase['total']}" if phase.get("total") else ""
            return cls(name=name, up=True, phase=f"{phase['name']}{done}")
        ev = st.get("last_eval") or {}
        drops = st.get("drops") or {}
        return cls(
            name=name,
            up=True,
            own_steps=int(_num(st, "own_steps")),
            # applied_total covers the whole state (a restarted node's per-run counters start at 0)
            applied=int(_num(st, "applied_total")),
            backlog=int(_num(st, "replay_backlog")),
            peers=len(st.get("peers") or []),
            loss=_opt(st, "loss_mean"),
            accuracy=_opt(ev, "accuracy"),
            bytes_in=int(_num(st, "bytes_in")),
            bytes_out=int(_num(st, "bytes_out")),
            drops=int(sum(v for v in drops.values() if isinstance(v, (int, float)))) if isinstance(drops, Mapping) else 0,
            digest=str(st.get("digest") or ""),
        )


@dataclass
class SwarmTotals:
    """Whole-swarm sums for the header and the summary line."""

    own_steps: int
    bytes_out: int
    bytes_in: int
    loss: float | None  # mean of the nodes' running losses that exist
    up: int

    @classmethod
    def of(cls, rows: Sequence[NodeRow]) -> "SwarmTotals":
        losses = [r.loss for r in rows if r.loss is not None]
        return cls(
            own_steps=sum(r.own_steps for r in rows),
            bytes_out=sum(r.bytes_out for r in rows),
            bytes_in=sum(r.bytes_in for r in rows),
            loss=(sum(losses) / len(losses)) if losses else None,
            up=sum(1 for r in rows if r.up),
        )


def _fmt_opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render_table(rows: Sequence[NodeRow]) -> list[str]:
    """Fixed-width per-node lines (no colour: they must read well in logs)."""
    head = f"{'node':<8} {'steps':>6} {'applied':>8} {'backlog':>7} {'peers':>5} {'loss':>7} {'acc':>6} {'sent':>10} {'recv':>10} {'drops':>5}  digest"
    out = [head]
    for r in rows:
        if not r.up:
            out.append(f"{r.name:<8} (no status yet)")
            continue
        if r.phase != "ready":
            out.append(f"{r.name:<8} (starting: {r.phase})")
            continue
        acc = "-" if r.accuracy is None else f"{r.accuracy * 100:5.1f}%"
        out.append(
            f"{r.name:<8} {r.own_steps:>6} {r.applied:>8} {r.backlog:>7} {r.peers:>5} "
            f"{_fmt_opt(r.loss, '7.4f'):>7} {acc:>6} {human_bytes(r.bytes_out):>10} "
            f"{human_bytes(r.bytes_in):>10} {r.drops:>5}  {r.digest[:12]}"
        )
    return out


@dataclass
class LiveView:
    """Render the swarm's progress to `stream` on each `update` call.

    `duration_s` drives the progress bar (the demo is time-boxed); the caller
    passes `elapsed_s` explicitly so tests need no clock.
    """

    stream: IO[str]
    duration_s: float
    is_tty: bool
    line_every_s: float = 5.0
    title: str = "onebyte swarm"
    _drawn: int = 0
    _last_line_at: float | None = None
    last_rows: list[NodeRow] = field(default_factory=list)

    def update(self, statuses: Mapping[str, Mapping[str, Any] | None], elapsed_s: float, note: str = "") -> None:
        rows = [NodeRow.from_status(name, st) for name, st in statuses.items()]
        self.last_rows = rows
        tot = SwarmTotals.of(rows)
        frac = elapsed_s / self.duration_s if self.duration_s > 0 else 1.0
        if self.is_tty:
            self._draw_block(rows, tot, frac, elapsed_s, note)
        else:
            self._print_line(tot, frac, elapsed_s, note)

    def _header(self, tot: SwarmTotals, frac: float, elapsed_s: float) -> str:
        # duration_s <= 0: an open-ended phase (waiting for something), no progress bar.
        clock = f"{bar(frac)}  {elapsed_s:5.0f}s/{self.duration_s:.0f}s" if self.duration_s > 0 else f"{elapsed_s:5.0f}s"
        return (
            f"{self.title}  {clock}  updates {tot.own_steps}  loss {_fmt_opt(tot.loss, '.4f')}  "
            f"wire {human_bytes(tot.bytes_out)}"
        )

    def _draw_block(self, rows, tot, frac, elapsed_s, note) -> None:
        lines = [self._header(tot, frac, elapsed_s), *render_table(rows)]
        if note:
            lines.append(note)
        buf = []
        if self._drawn:
            buf.append(_UP.format(n=self._drawn))
        for ln in lines:
            buf.append(_CLEAR + ln + "\n")
        # If the block shrank (a note disappeared), blank the leftover lines so
        # stale text does not linger below the view.
        for _ in range(self._drawn - len(lines)):
            buf.append(_CLEAR + "\n")
        self.stream.write("".join(buf))
        self.stream.flush()
        self._drawn = max(len(lines), self._drawn)

    def _print_line(self, tot, frac, elapsed_s, note) -> None:
        # Rate-limit by the caller's clock (elapsed_s), not time.time(), so
        # behaviour is deterministic under test.
        if self._last_line_at is not None and elapsed_s - self._last_line_at < self.line_every_s:
            return
        self._last_line_at = elapsed_s
        per_node = " ".join(
            f"{r.name}:{r.own_steps}" + ("" if r.up else "(down)") for r in self.last_rows
        )
        pct = f" {frac * 100:5.1f}%" if self.duration_s > 0 else ""
        line = (
            f"[{elapsed_s:5.0f}s]{pct} updates={tot.own_steps} ({per_node}) "
            f"loss={_fmt_opt(tot.loss, '.4f')} sent={human_bytes(tot.bytes_out)}"
        )
        if note:
            line += f" | {note}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def detach(self) -> None:
        """Leave the drawn block where it is: whatever is printed next goes below it,
        and a later update draws a fresh block instead of moving up over that text."""
        self._drawn = 0


@dataclass
class Sample:
    """One poll of one node, kept for the plot."""

    t: float
    node: str
    own_steps: int
    loss: float | None
    eval_step: int | None
    accuracy: float | None


@dataclass
class History:
    """Time series gathered from the polls, for plot.py and the summary."""

    samples: list[Sample] = field(default_factory=list)

    def record(self, statuses: Mapping[str, Mapping[str, Any] | None], t: float) -> None:
        for name, st in statuses.items():
            if not st:
                continue
            ev = st.get("last_eval") or {}
            step = ev.get("step")
            self.samples.append(
                Sample(
                    t=t,
                    node=name,
                    own_steps=int(_num(st, "own_steps")),
                    loss=_opt(st, "loss_mean"),
                    eval_step=int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None,
                    accuracy=_opt(ev, "accuracy"),
                )
            )

    def nodes(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.samples:
            seen.setdefault(s.node)
        return list(seen)

    def loss_series(self, node: str) -> tuple[list[float], list[float]]:
        pts = [(s.t, s.loss) for s in self.samples if s.node == node and s.loss is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def accuracy_series(self, node: str) -> tuple[list[float], list[float]]:
        """Accuracy points, one per distinct evaluation (a node repeats its
        last_eval in every status until it evaluates again)."""
        xs: list[float] = []
        ys: list[float] = []
        last_step: int | None = None
        for s in self.samples:
            if s.node != node or s.accuracy is None:
                continue
            if s.eval_step is not None and s.eval_step == last_step:
                continue
            last_step = s.eval_step
            xs.append(s.t)
            ys.append(s.accuracy)
        return xs, ys


def fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def render_summary(s: dict) -> str:
    """The demo's closing summary, from the dict it also writes as summary.json."""
    gain = (s["accuracy_after"] - s["accuracy_before"]) * 100
    per_update = s["bytes_sent"] / s["updates"] if s["updates"] else 0.0

    def times(b: float) -> str:
        if not s["bytes_sent"]:
            return "-"
        r = b / s["bytes_sent"]
        return f"{r:,.0f}x more" if r >= 10 else f"{r:.2f}x as much"

    rate = s["updates"] / s["train_seconds"] if s["train_seconds"] else 0.0
    lines = [
        "",
        "== onebyte demo: summary ==",
        f"model      {s['model']}: {s['params'] / 1e6:.1f}M parameters, {s['trainable']:,} trainable; "
        f"task {s['data']}",
        f"swarm      {s['nodes']} nodes, {fmt_seconds(s['train_seconds'])} of training, {s['updates']} updates "
        f"({', '.join(f'{k} {v}' for k, v in s['own_steps'].items())}), {rate:.2f} updates/s",
        f"accuracy   zero-shot {s['accuracy_before'] * 100:.1f}% -> fine-tuned {s['accuracy_after'] * 100:.1f}% "
        f"({gain:+.1f} points, {s['eval_examples']} held-out examples)",
        "digests    " + "  ".join(f"{k} {d[:16]}" for k, d in s["digests"].items())
        + ("  (identical)" if s["digests_identical"] else "  (DIFFERENT)"),
        f"wire       {human_bytes(s['bytes_sent'])} sent in total, {per_update:.0f} B per update: one byte of "
        "payload, the rest record headers, signatures, membership and anti-entropy",
        f"fp32 grads {human_bytes(s['fp32_gradient_bytes'])} for the same updates, each to {s['nodes'] - 1} peers "
        f"({s['params']:,} params x 4 B): {times(s['fp32_gradient_bytes'])}",
    ]
    if s["trainable"] != s["params"]:
        lines.append(f"           gradients of the {s['trainable']:,} trainable weights only: "
                     f"{human_bytes(s['fp32_trainable_gradient_bytes'])} ({times(s['fp32_trainable_gradient_bytes'])})")
    lines += [
        f"plot       {s['plot'] or '- (matplotlib not installed)'}",
        f"export     {s['export_command']}   (the fine-tuned model as a transformers folder)",
        f"took       {fmt_seconds(s['total_seconds'])} in all; run dir {s['run_dir']}",
    ]
    return "\n".join(lines)
