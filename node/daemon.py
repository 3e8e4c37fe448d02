"""The daemon: one asyncio loop owns the engine and the UDP socket, one worker thread
owns the model. Lifecycle in the manner of aiohttp's runner:

    d = Daemon(cfg); await d.setup(); await d.serve(); await d.shutdown()

- setup: validate config, genesis, key and state dir; open the status socket at once
  (it answers "starting" with the phase and its progress from the first second); load
  the model and restore the replica off the loop; wire the training data; open UDP,
  start the engine and the worker; tell systemd READY=1.
- serve: wait for SIGTERM/SIGINT (or a fatal worker error).
- shutdown: STOPPING=1, engine.leave (peers learn it at once), stop the worker (it
  replays what is logged and writes a final snapshot), sync and close the log.

The engine is driven by one re-armed timer (loop.call_at at engine.get_timer()),
by datagrams, and by the worker's own updates; after each input `_pump` drains the
engine's events and outgoing datagrams. Status commands are routed by node/ops/control.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import signal
import time

from onebyte.protocol import events as ev
from onebyte.protocol.amendments import describe as describe_amendment

from .config import NodeConfig, format_addr, load_config
from .errors import ConfigError, DiskFull, ResolveError, UserError
from .genesis import load_genesis, own_key_work_problem, protocol_config
from .keys import loose_permissions, read_key
from .transport import UdpTransport, open_udp, resolve_peer
from .version import VERSION
from .train.audit import BATCH_MAX as AUDIT_BATCH_MAX, Audit
from .train.steering import Steered
from .train.training import Training, load_training
from .train.worker import Digested, Failed, OwnUpdate, Replayed, Worker, WorkerSetup
from .storage.snapshot import write_snapshot
from .storage.state import StateDir, restore
from .ops.control import Control
from .ops.members import Bootstrap, PeerBook, build_amendments, build_members
from .ops.notify import Notifier
from .ops.stats import Phase, Rates, build_status
from .ops.status import StatusServer
from .ops.webpage import History

log = logging.getLogger("onebyte.node.daemon")

RELOADABLE = frozenset({"peers", "labels", "log_level", "metrics_listen"})   # node config fields SIGHUP applies
RESOLVE_RETRY_S = (5.0, 300.0)   # back-off of an unresolvable bootstrap name: first, longest
DISK_RETRY_S = 1.0               # while the disk is full: retry the log's held entries this often
# A node with peers configured produces only once it knows its own earlier steps (a key
# restarted from an empty state dir must not reuse a step number): peers answer within an
# anti-entropy round or two; with no answer this long, the key counts as new.
OWN_HISTORY_WAIT_S = 15.0


class Daemon:
    def __init__(self, cfg: NodeConfig, notifier: Notifier | None = None):
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.started = time.time()
        self.exit_code = 0
        self.phase = Phase()
        self.ready = False
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._to_replay: list = []
        self._tasks: set[asyncio.Task] = set()
        self.udp: UdpTransport | None = None
        self.status_server: StatusServer | None = None
        self.snapshot_server = None   # node/join/snapshot_service.py
        self.compactor = None         # node/storage/compaction.py
        self.joined = None            # node/join/snapshot_join.py Joined, if this start joined from a snapshot
        self.metrics = None
        self.history = History()   # loss and accuracy over time, for the node's web page
        self.worker: Worker | None = None
        self.engine = None
        self.update_log = None
        self.sd: StateDir | None = None
        self.training = Training()
        self.peers = PeerBook(cfg.labels)
        self.rates = Rates()
        self.events_seen: dict[str, int] = {}
        self.equivocations = 0
        self.weights_diverged = 0       # peers at our version vector with other weights
        self.last_divergence: dict | None = None
        self._release_pending = False     # production waits for the learned steps' flush
        self.paused = False   # event intake paused by back-pressure (see _pump)
        self.pauses = 0
        self._disk_retry_at = 0.0

    @property
    def trunk_info(self) -> dict | None:
        return self.training.trunk_info

    # --- setup ---------------------------------------------------------------------------

    async def setup(self) -> None:
        from onebyte.protocol import Identity
        from onebyte.protocol.identity import node_id_of

        cfg = self.cfg
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        # From here on SIGTERM is a graceful stop, also while the model loads.
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        genesis = self.genesis = load_genesis(cfg.genesis)
        private = read_key(cfg.key)
        if loose_permissions(cfg.key):
            log.warning("key file %s is readable by others; chmod 600 it", cfg.key)
        self.identity = Identity.from_private_bytes(private)
        self.node_id = self.identity.node_id
        self.node_id_of = node_id_of
        self.pconfig = protocol_config(genesis, cfg.protocol)
        self._check_membership()

        sd = self.sd = StateDir(cfg.state_dir)
        sd.create()
        sd.lock()
        sd.check_genesis(genesis, write=False)
        if cfg.initial_snapshot is not None:
            sd.import_snapshot(cfg.initial_snapshot)
        self.update_log = sd.open_log(fsync=cfg.fsync)
        # The status socket answers from here on: "starting", with the phase and its progress.
        self.control = Control(ready=lambda: self.ready, starting=self.phase.describe, status=self.status,
                               members=self.members, amend=self.amend, exports=sd.exports,
                               worker=lambda: self.worker, stop=self.request_stop)
        self.status_server = StatusServer(cfg.socket_path, self.control.handle)
        await self.status_server.start()
        joined = await self._snapshot_join()
        await self._restore(joined)
        await self._start_swarm()

    def _check_membership(self) -> None:
        work_problem = own_key_work_problem(self.genesis, self.identity.public_bytes(), self.cfg.key)
        if work_problem:
            raise UserError(work_problem)
        members = self.genesis.member_keys()
        if self.genesis.setting("admission") == "closed" and self.identity.public_bytes() not in members:
            if self.genesis.authority_keys():   # an amendment may admit it (protocol/amendments.py)
                log.warning("key %s is not in the genesis members: peers refuse this node until a signed "
                            "amendment admits its public key %s (`onebyte admit`)", self.cfg.key,
                            self.identity.public_bytes().hex())
                return
            raise UserError(f"key {self.cfg.key} is not a member of this closed swarm (its public key "
                            f"{self.identity.public_bytes().hex()} is not in the genesis [swarm] members); "
                            "peers would ignore every datagram it sends")

    async def _snapshot_join(self):
        """A node with peers joins from an attested snapshot when that saves a long replay
        (node/join/snapshot_join.py); None: restore from the state dir alone."""
        if not (self.cfg.peers and self.cfg.snapshot_join):
            return None
        from .join.snapshot_join import join
        self.joined = await join(self.cfg, self.genesis, self.sd, self.update_log, self.phase.set)
        return self.joined

    async def _restore(self, joined=None) -> None:
        cfg, sd = self.cfg, self.sd
        log.info("loading model %s (frozen base in %s, on %s) and restoring state from %s",
                 cfg.model or self.genesis.swarm["base_model"], cfg.dtype, cfg.device, cfg.state_dir)
        self.notifier.status("loading model and restoring state")
        # Loading a model takes seconds: off the loop, so a SIGTERM meanwhile is still seen.
        p = self.pconfig
        restored = await asyncio.to_thread(restore, self.genesis, cfg.model, cfg.device, sd, self.update_log,
                                           self.node_id, self.phase.set,
                                           (p.influence_window, p.influence_max_abs, p.influence_max_sum),
                                           (joined.replica, joined.tokenizer, joined.digest) if joined else None,
                                           cfg.dtype)
        self.replica, self.tokenizer = restored.replica, restored.tokenizer
        # Pin the state dir to this swarm only once the model matched the genesis.
        sd.check_genesis(self.genesis, write=True)
        self.restored = restored
        self.phase.set("loading data", 0, 0)
        self.training = await asyncio.to_thread(load_training, cfg, self.genesis, self.replica, self.tokenizer,
                                                self.node_id, sd.path)

    async def _start_swarm(self) -> None:
        from onebyte.protocol import Engine

        cfg, sd = self.cfg, self.sd
        self.phase.set("joining", 0, 0)
        now = self.loop.time()
        self.udp = await open_udp(cfg.listen, self._on_datagram)
        if cfg.snapshot_serve:   # TCP, same host and port number as the UDP socket
            from .join.snapshot_service import SnapshotServer
            self.snapshot_server = SnapshotServer(
                self.genesis, self.node_id, self.sd.snapshots, self.update_log, self.live_peers,
                lambda: self.worker, cfg.snapshot_serve_bytes_per_s, cfg.snapshot_attest_max_updates)
            await self.snapshot_server.start(*self.udp.local_addr[:2])
        bootstrap = await self._resolve_bootstrap()
        own_logged = self.update_log.updates_vv().get(self.node_id, 0)
        # No configured peers: this node seeds the swarm and has nobody to ask (docs/operations.md).
        wait = max(OWN_HISTORY_WAIT_S, 10 * self.pconfig.anti_entropy_interval_s) if cfg.peers else None
        self.engine = Engine(self.identity, self.pconfig, rng=random.Random(), now=now, store=self.update_log,
                             bootstrap=bootstrap, own_last_step=own_logged, generation=sd.next_generation(),
                             own_history_wait_s=wait,
                             bound_addr=self.udp.local_addr,   # vs observed: behind a NAT?
                             software=f"onebyte {VERSION}")
        self._republish_journal(now)
        for origin, step in (self.restored.steered or {}).items():   # found while replaying the log
            self.engine.exclude(origin, step, "steering")

        rate_cap = float(self.genesis.setting("max_updates_per_s_per_origin"))
        self.worker = Worker(WorkerSetup(
            replica=self.replica, node_id=self.node_id, swarm_id=self.genesis.swarm_id,
            update_log=self.update_log, applied_vv=self.restored.applied_vv, training=self.training,
            snapshot=self._snapshot_writer(), post=self._post_from_worker, seeder=self.genesis.seeder(),
            steering=self.restored.steering,
            audit=(Audit(cfg.audit_interval_s, skip=self.node_id,
                         batch_max=min(AUDIT_BATCH_MAX, self.replica.hyper.max_fused))   # one fused probe
                   if self.training.loss_fn is not None else None),
            max_steps=cfg.max_steps, min_step_interval_s=max(cfg.step_interval_s, 1.0 / rate_cap),
            eval_every=cfg.eval_every, snapshot_every=cfg.snapshot_every, max_backlog=cfg.max_backlog,
            on_digest=self._post_from_worker))
        if not self.engine.own_history_settled:
            self.worker.hold_production()
            log.info("asking peers for this key's earlier steps before producing (up to %.0fs if none answer)",
                     wait)
        self.worker.start()
        if cfg.compact_interval_s > 0:
            from .storage.compaction import Compactor
            self.compactor = Compactor(self.sd.snapshots, self.update_log, self.genesis.swarm_id.hex(),
                                       self.live_peers, cfg.compact_interval_s, cfg.compact_delay_s)
            self._spawn(self.compactor.run())
        if cfg.metrics_listen is not None:
            self.metrics = self._metrics_server(cfg.metrics_listen)
            self.metrics.start()
        self._pump()
        self.ready = True
        self.phase.set("ready", 0, 0)
        where = format_addr(self.udp.local_addr)
        log.info("node %s of swarm %s listening on %s (status socket %s)", self.node_id.hex(),
                 self.genesis.swarm_id.hex()[:16], where, cfg.socket_path)
        self.notifier.ready(f"serving on {where}, {len(bootstrap)} bootstrap peer(s)")
        self._arm_watchdog()  # systemd's watchdog runs from READY=1 on

    async def _resolve_bootstrap(self) -> list:
        """Resolved bootstrap addresses; a name that does not resolve now (a DNS blip at boot)
        is retried in the background with back-off, never fatal."""
        resolved = []
        for spec in self.cfg.peers:
            b = Bootstrap(format_addr(spec))
            self.peers.bootstrap.append(b)
            try:
                b.addr = await resolve_peer(spec, self.udp.family)
                resolved.append(b.addr)
            except ResolveError as exc:
                b.error = str(exc)
                log.warning("bootstrap peer %s: %s; retrying in the background", b.spec, exc)
                self._spawn(self._retry_resolve(spec, b))
        return resolved

    def reload(self) -> None:
        """SIGHUP: read the node config again and apply what can change while the node runs
        (RELOADABLE: peers, labels, log level, metrics) without leaving the swarm; any other field that
        changed takes effect at the next start, as the log says. A config that no longer parses
        changes nothing."""
        if self.cfg.path is None:
            log.error("reload: this node was started without a config file; nothing to read")
            return
        try:
            new = load_config(self.cfg.path)
        except UserError as exc:
            log.error("reload: %s; the running config stays", exc)
            return
        changed = [f.name for f in dataclasses.fields(new) if getattr(new, f.name) != getattr(self.cfg, f.name)]
        now = [name for name in changed if name in RELOADABLE]
        later = [name for name in changed if name not in RELOADABLE]
        if "log_level" in now:
            logging.getLogger().setLevel(new.log_level.upper())
        if "labels" in now:
            self.peers.labels = dict(new.labels)
        if "peers" in now:
            self._reload_peers(new.peers)
        if "metrics_listen" in now and not self._reload_metrics(new.metrics_listen):
            now.remove("metrics_listen")
        self.cfg = dataclasses.replace(self.cfg, **{name: getattr(new, name) for name in now})
        log.info("reloaded %s: %s%s", self.cfg.path, ", ".join(now) or "nothing changed",
                 f"; changed but applied only at the next start: {', '.join(later)}" if later else "")

    def _reload_metrics(self, listen) -> bool:
        """Serve metrics (and the page) at the new address, or stop serving them; the new
        server listens before the old one closes, so a refused address changes nothing."""
        fresh = None
        if listen is not None:
            fresh = self._metrics_server(listen)
            try:
                fresh.start()
            except ConfigError as exc:
                log.error("reload: %s; metrics stay where they are", exc)
                return False
        if self.metrics is not None:
            self.metrics.close()
        self.metrics = fresh
        return True

    def _reload_peers(self, peers: list) -> None:
        """New bootstrap peers are joined now; removed ones are no longer re-joined (a live
        member stays a member: the swarm, not this list, says who is in it)."""
        for spec in self.cfg.peers:
            if spec not in peers:
                gone = [b for b in self.peers.bootstrap if b.spec == format_addr(spec)]
                for b in gone:
                    self.peers.bootstrap.remove(b)
                    if b.addr is not None and self.engine is not None:
                        self.engine.remove_bootstrap(b.addr)
        for spec in peers:
            if spec not in self.cfg.peers:
                b = Bootstrap(format_addr(spec))
                self.peers.bootstrap.append(b)
                self._spawn(self._join_peer(spec, b))

    async def _join_peer(self, spec, b: Bootstrap) -> None:
        try:
            b.addr = await resolve_peer(spec, self.udp.family)
        except ResolveError as exc:
            b.error = str(exc)
            log.warning("bootstrap peer %s: %s; retrying in the background", b.spec, exc)
            await self._retry_resolve(spec, b)
            return
        if self.engine is not None and not self._stopping:
            self.engine.add_bootstrap(b.addr, self.loop.time())
            self._pump()

    async def _retry_resolve(self, spec, b: Bootstrap) -> None:
        delay, longest = RESOLVE_RETRY_S
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                b.addr = await resolve_peer(spec, self.udp.family)
            except ResolveError as exc:
                b.error = str(exc)
                delay = min(longest, delay * 2)
                continue
            b.error = None
            log.info("bootstrap peer %s resolved to %s", b.spec, format_addr(b.addr))
            if self.engine is not None:
                self.engine.add_bootstrap(b.addr, self.loop.time())
                self._pump()
            return

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _republish_journal(self, now: float) -> None:
        """Own updates logged before a crash but never sealed into a stored record: publish
        them again (same steps, same q), so peers get them and step numbers stay unique."""
        steps = self.engine.own_steps_to_republish
        if len(steps):
            qs = self.update_log.qs_of(self.node_id, steps.start, steps.stop - 1)
            for step, q in zip(steps, qs):
                self.engine.publish(step, q, now)
            log.info("re-published own steps %d..%d logged before the last stop", steps.start, steps.stop - 1)

    def _snapshot_writer(self):
        directory = self.sd.snapshots

        def write(replica, vv, digest):  # runs in the worker thread (the replica's writer)
            info = write_snapshot(directory, replica, vv, digest)
            log.info("snapshot: %d updates, digest %s", info.updates, digest[:16])
            return info
        return write

    # --- serving -------------------------------------------------------------------------

    async def serve(self) -> None:
        await self._stop_event.wait()

    def _metrics_server(self, listen):
        from .ops.metrics import MetricsServer
        return MetricsServer(listen, ready=lambda: self.ready, status=self.status, loop=self.loop,
                             history=self.history, step_seconds=lambda: self.worker.stats.step_seconds)

    def live_peers(self) -> list[tuple[bytes, tuple]]:
        """[(node_id, addr)] of the members the engine holds alive at a known address."""
        if self.engine is None:
            return []
        return [(p.node_id, p.addr) for p in self.engine.peers() if p.state == "alive" and p.addr]

    # --- what the status socket asks (node/ops/control.py) -----------------------------------

    def status(self) -> dict:
        """The status answer's fields: composed of each component's status() once ready, the
        start-up phase before (docs/status.md)."""
        return build_status(self) if self.ready else self.phase.status(self)

    def members(self) -> dict:
        return {"members": build_members(self), "amendments": build_amendments(self)}

    def amend(self, amendment) -> tuple[list, list]:
        """A signed amendment from the status socket, fed to the engine as a peer's would be
        (ProtocolError says why not): what took effect, and the numbers in effect."""
        took = self.engine.amend(amendment, self.loop.time())
        self._pump()
        return took, self.engine.amendments.applied

    def request_stop(self) -> None:
        if not self._stopping:
            log.info("stop requested: leaving the swarm")
            self._stopping = True
            self._stop_event.set()

    def _post_from_worker(self, message) -> None:
        """Called in the worker thread; hops onto the loop."""
        try:
            self.loop.call_soon_threadsafe(self._from_worker, message)
        except RuntimeError:  # loop already closed at shutdown
            pass

    def _from_worker(self, message) -> None:
        match message:
            case OwnUpdate(step=step, qs=qs):
                if self.engine is not None and not self._stopping:
                    for s, q in enumerate(qs, step):
                        self.engine.publish(s, q, self.loop.time())
                    self.rates.own.add(len(qs))
                    if self.metrics is not None:
                        self.metrics.observe_step(message)
                    self._pump()
            case Replayed():
                if self.paused and self.engine is not None:
                    self._pump()   # the worker caught up: take the engine's queued events
            case Digested(digest=digest, vv_hash=vv_hash):
                if self.engine is not None:
                    self.engine.set_weights_digest(bytes.fromhex(digest), vv_hash)
            case Steered(origin=origin, step=step):
                if self.engine is not None:   # durable in the log, nothing more delivered or served
                    self.engine.exclude(origin, step, "steering")
                    self._to_replay = [u for u in self._to_replay if u[0] != origin or u[1] < step]
                    self._pump()
            case Failed(error=error):
                self.exit_code = 1
                log.error("worker failed: %s", error)
                self.request_stop()

    def _on_datagram(self, data: bytes, addr) -> None:
        if self.engine is None:
            return
        self.peers.heard(addr, len(data))
        self.engine.receive_datagram(data, addr, self.loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.engine is not None:
            self.engine.handle_timer(self.loop.time())
            self._disk_tick()
            self._pump()
            self.peers.silent_bootstrap()
            if self.worker is not None and self.history.due():
                self.history.add(self.worker.stats, sum(self.update_log.updates_vv().values()))

    def _pump(self) -> None:
        """After any engine input: events, then datagrams out, then re-arm the one timer."""
        engine = self.engine
        got_updates = False
        # Back-pressure: while the worker is more than max_backlog updates behind, leave the
        # engine's events queued. The engine then refuses new records once its bounded event
        # queue is full (drop reason "backpressure"); anti-entropy fetches them again later.
        # A full disk pauses intake the same way (records the log could not take are held).
        while (not self._over_backlog() and not self.update_log.disk_full
               and (event := engine.next_event()) is not None):
            got_updates |= self._on_event(event)
        if got_updates and not self._flush_scheduled:
            # Batch the fsync: every datagram the loop handles in this iteration shares one.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        for data, addr in engine.datagrams_to_send(self.loop.time()):
            self.peers.sent(addr, len(data))
            self.udp.sendto(data, addr)
        when = engine.get_timer()
        if when != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer) if when is not None else None
            self._timer_at = when

    def _over_backlog(self) -> bool:
        if self.worker is None:
            return False
        over = len(self.worker.backlog) + len(self._to_replay) >= self.cfg.max_backlog
        if over != self.paused:
            self.paused = over
            self.pauses += over
            log.debug("replay backlog %s max_backlog: %s", "over" if over else "under",
                      "pausing event intake" if over else "resuming")
        return over

    def _on_event(self, event) -> bool:
        """One engine event; True if it logged updates (a flush is then due)."""
        name = type(event).__name__
        self.events_seen[name] = self.events_seen.get(name, 0) + 1
        match event:
            case ev.UpdatesReceived():
                # the engine logged them as it delivered them (node/storage/log.py, "Who writes what");
                # what a full disk held, _disk_tick replays once it lands
                fresh = self.update_log.take_landed()
                self._to_replay.extend(fresh)
                self.rates.received.add(len(fresh))
                return bool(fresh)
            case ev.PeerJoined(node_id=nid, addr=addr):
                self.peers.state_changed(nid, "alive", addr)
                log.info("peer %s joined from %s", nid.hex()[:16], format_addr(addr))
            case ev.PeerAlive(node_id=nid) | ev.PeerSuspected(node_id=nid) | ev.PeerDead(node_id=nid) \
                    | ev.PeerLeft(node_id=nid):
                state = {"PeerAlive": "alive", "PeerSuspected": "suspect", "PeerDead": "dead",
                         "PeerLeft": "left"}[name]
                self.peers.state_changed(nid, state)
                log.info("peer %s is %s", nid.hex()[:16], state)
            case ev.EquivocationDetected(origin=origin, first_step=first, last_step=last):
                self.equivocations += 1
                log.warning("equivocation by origin %s at steps %d..%d", origin.hex()[:16], first, last)
            case ev.OriginExcluded(origin=origin, step=step, reason="equivocation" | "revoked" | "rotated"):
                self._take_back(origin, step, event.reason)
            case ev.AmendmentApplied():
                log.warning("membership amendment in effect: %s", describe_amendment(event))
            case ev.OriginExcluded(origin=origin, step=step, reason="steering"):
                log.warning("origin %s excluded from step %d on: it steers single weights (docs/security.md, "
                            "steering); its updates from there are taken back", origin.hex()[:16], step)
            case ev.OriginExcluded(origin=origin, step=step, reason=reason):
                log.warning("origin %s excluded from step %d on: influence budget (%s) broken; its later "
                            "updates are never applied (docs/security.md)", origin.hex()[:16], step, reason)
            case ev.OwnHistoryLearned():
                self._own_history_learned(event)
            case ev.WeightsDiverged(node_id=nid, ours=ours, theirs=theirs):
                self.weights_diverged += 1
                self.last_divergence = {"peer": nid.hex(), "ours": ours.hex(), "theirs": theirs.hex(),
                                        "at": round(time.time(), 3)}
                log.warning("weights diverged: peer %s holds our version vector with digest %s, ours is %s",
                            nid.hex()[:16], theirs.hex()[:16], ours.hex()[:16])
        return False

    def _take_back(self, origin: bytes, step: int, reason: str) -> None:
        """An equivocation proof or a revoking amendment excludes origin from step on (the log
        already records it, with the q of the steps it held): nothing of it from there is
        handed to the worker, and the worker undoes what it applied (docs/security.md)."""
        why = {"equivocation": f"equivocated (two signed versions of step {step})",
               "revoked": "was revoked by a membership amendment",
               "rotated": "was rotated to a new key by a membership amendment"}[reason]
        log.warning("origin %s %s: excluded from step %d on, its updates from there taken back "
                    "(docs/security.md)", origin.hex()[:16], why, step)
        self._to_replay = [u for u in self._to_replay if u[0] != origin or u[1] < step]
        taken = self.update_log.taken_back(origin)
        if self.worker is not None and taken is not None:
            self.worker.exclude(origin, *taken)
        if origin == self.node_id:
            if reason == "equivocation":
                log.error("this node's own key signed two versions of step %d (its state dir was lost or "
                          "copied?): peers exclude it from there on; not producing any more", step)
            else:
                log.error("this node's own key %s from step %d: not producing any more", reason, step)
            if self.worker is not None:
                self.worker.end_production()

    def _own_history_learned(self, event) -> None:
        """Production may start once the own steps learned are logged and in the worker's
        backlog (it replays before producing, so its next step is the first unused one)."""
        if event.answers:
            log.info("own history learned from %d peer(s): producing from step %d", event.answers,
                     event.next_step)
        else:
            log.info("no peer reported earlier steps of this key: producing from step %d", event.next_step)
        self._release_pending = True
        self._flush()

    def _flush(self) -> None:
        """Log durable first, then hand the updates to the worker (log before apply)."""
        self._flush_scheduled = False
        try:
            self.update_log.sync()
        except DiskFull:
            return   # not durable yet: kept in _to_replay, flushed again by _disk_tick
        items, self._to_replay = self._to_replay, []
        if self.worker is not None:
            self.worker.enqueue(items)
            if self._release_pending and not self.update_log.held:
                self._release_pending = False
                self.worker.release_production()

    # --- disk full (node/storage/log.py): a state the node leaves on its own -----------------------

    def _disk_tick(self) -> None:
        """While the disk is full: every DISK_RETRY_S, write what the log holds; updates that
        land are flushed and replayed like fresh ones; intake resumes when the state clears."""
        if not self.update_log.disk_full:
            return
        now = self.loop.time()
        if now < self._disk_retry_at:
            return
        self._disk_retry_at = now + DISK_RETRY_S
        landed = self.update_log.retry()
        self._to_replay.extend(landed)
        self.rates.received.add(len(landed))
        if self._to_replay and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _arm_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return

        def ping():
            # Only while the worker lives: a dead worker means a node that no longer applies.
            if self.worker is not None and self.worker.is_alive():
                self.notifier.watchdog()
                self.notifier.status(self._status_line())
            self._watchdog = self.loop.call_later(interval, ping)
        ping()

    def _status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=)."""
        st = self.worker.stats
        alive = sum(1 for p in self.engine.peers() if p.state == "alive") if self.engine else 0
        return (f"{st.state}: own steps {st.own_steps}, {sum(dict(self.worker.applied_vv).values())} updates applied, "
                f"backlog {len(self.worker.backlog)}, {alive} peers alive")

    # --- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.notifier.stopping()
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self.engine is not None and self.udp is not None:
            try:
                self.engine.leave(self.loop.time())
                self._pump()
            except Exception:
                log.exception("engine.leave failed")
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.metrics is not None:
            self.metrics.close()
        if self.snapshot_server is not None:
            await self.snapshot_server.close()
        if self.status_server is not None:
            await self.status_server.close()
        if self._to_replay:
            self._flush()
        if self.worker is not None and self.worker.is_alive():
            self.worker.stop()
            await asyncio.to_thread(self.worker.join)
        self.engine = None
        if self.udp is not None:
            self.udp.close()
        if self.update_log is not None:
            self.update_log.close()
        if self.sd is not None:
            self.sd.unlock()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                self.loop.remove_signal_handler(sig)
            except (RuntimeError, ValueError):
                pass
        self.notifier.close()
        log.info("stopped")


async def run_daemon(cfg: NodeConfig) -> int:
    d = Daemon(cfg)
    try:
        await d.setup()
        await d.serve()
    finally:
        await d.shutdown()
    return d.exit_code
