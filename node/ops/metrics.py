"""Prometheus exposition (`metrics_listen = "127.0.0.1:9470"` in node.toml; off by default).

prometheus_client serves HTTP from its own thread. The numbers live on the loop thread
(engine counters, worker stats), so a scrape asks the loop for one status snapshot
(the daemon's status(), the same dict the status socket answers) and turns it into metric
families: one source of truth, no second set of counters to keep in step. The one
exception is the step-time histogram, which needs every observation: the loop feeds
it as own updates arrive (prometheus_client's Histogram is thread-safe).
"""

from __future__ import annotations

import asyncio
import logging

import json
import socket
from typing import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from ..config import format_addr
from ..errors import ConfigError
from .webpage import PAGE, page_status

log = logging.getLogger("onebyte.node.ops.metrics")

SCRAPE_TIMEOUT_S = 5.0
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PEER_STATES = ("alive", "suspect", "dead", "left")
# docs/status.md, worker_state: every value is exported (1 for the current one), so an alert
# can say `onebyte_worker_state{state="failed"} == 1`
WORKER_STATES = ("starting", "preparing", "producing", "replaying", "done", "idle", "disk_full",
                 "learning_history", "failed", "stopped")
NAT_KINDS = ("open", "nat", "symmetric")


class MetricsServer:
    """Prometheus metrics and the node's page at `listen`, from the daemon's status() (run on
    its `loop`, once ready()), its `history` of loss and accuracy, and step_seconds() (the
    worker's total local-step time)."""

    def __init__(self, listen, *, ready: Callable[[], bool], status: Callable[[], dict], loop, history,
                 step_seconds: Callable[[], float]):
        self.listen, self.ready, self.history, self.step_seconds_total = listen, ready, history, step_seconds
        self.snapshot = lambda: status_snapshot(status, loop) if ready() else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.step_seconds = Histogram("onebyte_local_step_seconds", "Wall time of one local SPSA step "
                                      "(two forward passes and the update)", buckets=STEP_BUCKETS,
                                      registry=self.registry)
        self.registry.register(_Collector(ready, self.snapshot))
        self._metrics = make_wsgi_app(self.registry)
        self._server = None
        self._last_step_seconds = 0.0

    def start(self) -> None:
        import threading
        host, port = self.listen
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(host, port, self._app, server_class=server_class, handler_class=_Quiet)
        except OSError as exc:
            raise ConfigError(f"[node] metrics_listen {format_addr(self.listen)}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()
        log.info("Prometheus metrics on http://%s/metrics, the node's page on http://%s/",
                 format_addr(self.address), format_addr(self.address))

    def _app(self, environ, start_response):
        """/metrics (Prometheus), / (the page, node/ops/webpage.py) and /status.json (what it draws)."""
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path in ("/", "/index.html"):
            body, kind = PAGE.encode(), "text/html; charset=utf-8"
        elif path == "/status.json":
            st = self.snapshot()
            if st is None:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"starting\n"]
            body, kind = json.dumps(page_status(st, self.history)).encode(), "application/json"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /metrics, / and /status.json are served\n"]
        start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    @property
    def address(self) -> tuple:
        a = self._server.server_address
        return (a[0], a[1])

    def observe_step(self, _own_update) -> None:
        """After each own update (loop thread): the step's duration from the worker's total."""
        total = self.step_seconds_total()
        self.step_seconds.observe(max(0.0, total - self._last_step_seconds))
        self._last_step_seconds = total

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:   # scrapes every few seconds: not worth a log line each
        pass


class _Collector:
    """Reads one status snapshot per scrape, on the loop thread."""

    def __init__(self, ready: Callable[[], bool], snapshot: Callable[[], dict | None]):
        self.ready, self.snapshot = ready, snapshot

    def collect(self):
        if not self.ready():
            yield GaugeMetricFamily("onebyte_ready", "1 once the node serves (model loaded, log replayed)", value=0)
            return

        st = self.snapshot()
        if st is not None:
            yield from _families(st)


def status_snapshot(status: Callable[[], dict], loop) -> dict | None:
    """One status snapshot built on the loop thread, from the HTTP thread; None if the loop is
    stopping or too busy (an empty scrape or a 503, not an error)."""
    async def snapshot():
        return status()
    try:
        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(SCRAPE_TIMEOUT_S)
    except Exception as exc:
        log.debug("status snapshot for HTTP failed: %s", exc)
        return None


def _families(st: dict):
    yield InfoMetricFamily("onebyte_build", "Version, node and swarm of this daemon",
                           value={"version": st["version"], "node_id": st["node_id"], "swarm_id": st["swarm_id"]})
    yield GaugeMetricFamily("onebyte_ready", "1 once the node serves (model loaded, log replayed)", value=1)
    yield CounterMetricFamily("onebyte_updates_produced", "Own updates published by this run",
                              value=st["own_steps_this_run"])
    applied = CounterMetricFamily("onebyte_updates_applied", "Updates applied to the weights by this run",
                                  labels=["origin"])
    applied.add_metric(["own"], st["applied_own"])
    applied.add_metric(["peers"], st["applied_replayed"])
    yield applied
    yield CounterMetricFamily("onebyte_records_accepted", "Signed update records accepted from peers",
                              value=st["counters"].get("records_accepted", 0))
    yield _by_direction("onebyte_network_bytes", "UDP payload bytes", st["bytes_in"], st["bytes_out"])
    yield _by_direction("onebyte_network_datagrams", "UDP datagrams", st["datagrams_in"], st["datagrams_out"])
    kinds = st.get("bytes_by_kind") or {}
    if kinds:
        by_kind = CounterMetricFamily("onebyte_network_message_bytes", "UDP payload bytes by message type",
                                      labels=["direction", "kind"])
        for direction in ("in", "out"):
            for kind, n in sorted(kinds.get(direction, {}).items()):
                by_kind.add_metric([direction, kind], n)
        yield by_kind
    drops = CounterMetricFamily("onebyte_datagrams_dropped", "Datagrams dropped, by reason", labels=["reason"])
    for reason, n in sorted(st["drops"].items()):
        drops.add_metric([reason], n)
    yield drops
    peers = GaugeMetricFamily("onebyte_peers", "Peers in the membership table, by state", labels=["state"])
    for state in PEER_STATES:
        peers.add_metric([state], sum(1 for p in st["peers"] if p["state"] == state))
    yield peers
    yield GaugeMetricFamily("onebyte_replay_backlog_updates", "Updates logged but not yet applied",
                            value=st["replay_backlog"])
    yield CounterMetricFamily("onebyte_replay_seconds", "Time spent in fused replay", value=st["replay_seconds"])
    yield CounterMetricFamily("onebyte_replay_calls", "Fused replay calls", value=st["replay_calls"])
    yield GaugeMetricFamily("onebyte_applied_updates_per_second", "Updates applied per second (30 s window)",
                            value=st["update_rate"]["applied_per_s"])
    yield CounterMetricFamily("onebyte_equivocations", "Conflicting signed records seen",
                              value=st["equivocations"])
    audit = st.get("audit") or {}
    if audit.get("origins"):
        z = GaugeMetricFamily("onebyte_audit_z", "Per origin: agreement of its q with this node's own measurement "
                              "(binomial z; <= -4 flags it)", labels=["origin"])
        for origin, a in audit["origins"].items():
            z.add_metric([origin], a["z"])
        yield z
        zw = GaugeMetricFamily("onebyte_audit_z_weighted", "Per origin: the same agreement, each audit weighted "
                               "by |q g| (<= -4 flags it)", labels=["origin"])
        for origin, a in audit["origins"].items():
            zw.add_metric([origin], a["z_weighted"])
        yield zw
    yield GaugeMetricFamily("onebyte_audit_flagged_origins", "Origins whose q this node's data contradicts",
                            value=len(audit.get("flagged", [])))
    yield GaugeMetricFamily("onebyte_disk_full", "1 while the update log's disk has no room (no local steps)",
                            value=int(bool(st.get("disk_full"))))
    yield from _alarms(st)
    privacy = st.get("privacy")
    if privacy:
        yield GaugeMetricFamily("onebyte_privacy_epsilon_spent", "Differential privacy spent by this node's own "
                                "steps (docs/privacy.md)", value=privacy["epsilon_spent"])
        yield GaugeMetricFamily("onebyte_privacy_epsilon_budget", "The node's epsilon budget",
                                value=privacy["epsilon_budget"])
        if "clipped_fraction" in privacy:
            yield GaugeMetricFamily("onebyte_privacy_clipped_fraction", "Fraction of the recent examples whose "
                                    "projected gradient the clip C cut (tune C with it)",
                                    value=privacy["clipped_fraction"])
    if st.get("loss_mean") is not None:
        yield GaugeMetricFamily("onebyte_loss", "Running mean of the local training loss", value=st["loss_mean"])
    ev = st.get("last_eval") or {}
    if ev.get("accuracy") is not None:
        yield GaugeMetricFamily("onebyte_eval_accuracy", "Held-out accuracy at the last evaluation",
                                value=ev["accuracy"])


def _alarms(st: dict):
    """What monitoring/onebyte-alerts.yml alerts on: divergence, exclusions, the worker's state,
    send errors, configured peers that never answered, and how this node is reached."""
    yield CounterMetricFamily("onebyte_weights_diverged", "Peers that held our version vector with other weights "
                              "(invariant: never silent)", value=st.get("weights_diverged", 0))
    excluded = GaugeMetricFamily("onebyte_origins_excluded", "Origins excluded, by reason (influence budget, "
                                 "equivocation, steering, revoked, rotated)", labels=["reason"])
    reasons: dict = {}
    for v in (st.get("excluded_origins") or {}).values():
        reasons[v["reason"]] = reasons.get(v["reason"], 0) + 1
    for reason, n in sorted(reasons.items()):
        excluded.add_metric([reason], n)
    yield excluded
    state = GaugeMetricFamily("onebyte_worker_state", "1 for the worker's current state (docs/status.md)",
                              labels=["state"])
    for s in WORKER_STATES:
        state.add_metric([s], int(st.get("worker_state") == s))
    yield state
    yield CounterMetricFamily("onebyte_send_errors", "UDP sends that failed (an unroutable peer address)",
                              value=st.get("send_errors", 0))
    yield GaugeMetricFamily("onebyte_bootstrap_silent_peers", "Configured peers never heard from",
                            value=len(st.get("bootstrap_silent") or []))
    nat = st.get("nat") or {}
    kind = GaugeMetricFamily("onebyte_nat_kind", "1 for how peers see this node (open, nat, symmetric)",
                             labels=["kind"])
    for k in NAT_KINDS:
        kind.add_metric([k], int(nat.get("kind", "open") == k))
    yield kind
    yield GaugeMetricFamily("onebyte_relayed_peers", "Peers reached through a relay", value=nat.get("relayed", 0))


def _by_direction(name: str, doc: str, n_in: int, n_out: int) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=["direction"])
    fam.add_metric(["in"], n_in)
    fam.add_metric(["out"], n_out)
    return fam
