"""The daemon: one asyncio loop owns the engine and the UDP socket, one worker thread
owns the model. Lifecycle in the manner of aiohttp's runner:

    d = Daemon(cfg); await d.setup(); await d.serve(); await d.shutdown()

- setup: validate everything (config, genesis, key, model, data, state dir) before
  binding anything, restore the replica, start the engine, UDP, status socket and
  worker, then tell systemd READY=1.
- serve: wait for SIGTERM/SIGINT (or a fatal worker error).
- shutdown: STOPPING=1, engine.leave (peers learn it at once), stop the worker (it
  replays what is logged and writes a final snapshot), sync and close the log.

The engine is driven by one re-armed timer (loop.call_at at engine.get_timer()),
by datagrams, and by the worker's own updates; after each input `_pump` drains the
engine's events and outgoing datagrams.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import signal
import time
from pathlib import Path

from .config import NodeConfig, format_addr
from .errors import ConfigError, UserError
from .genesis import SWARM_DEFAULTS, Genesis, load_genesis
from .keys import loose_permissions, read_key
from .notify import Notifier
from .snapshot import write_snapshot, write_standalone
from .state import StateDir, restore
from .status import StatusServer
from .stats import Rates, build_status
from .transport import UdpTransport, open_udp, resolve_peer
from .worker import Worker

log = logging.getLogger("onebyte.node.daemon")

# [swarm] fields of the genesis that are ProtocolConfig fields (swarm-wide, not per node).
GENESIS_PROTOCOL_FIELDS = ("protocol_version", "admission", "max_updates_per_s_per_origin",
                           "updates_per_record", "record_linger_s")


def protocol_config(genesis: Genesis, overrides: dict):
    import dataclasses
    from onebyte.protocol import ProtocolConfig

    known = {f.name for f in dataclasses.fields(ProtocolConfig)} - {"swarm_id", "members"}
    for k in overrides:
        if k in GENESIS_PROTOCOL_FIELDS:
            raise ConfigError(f"[protocol] {k} is fixed by the genesis ([swarm] {k}); remove it from the node config")
        if k not in known:
            raise ConfigError(f"[protocol] unknown field {k}; known: {', '.join(sorted(known))}")
    # A genesis may leave a field out: it then means the documented default (SWARM_DEFAULTS),
    # never ProtocolConfig's own (which once differed: 64 updates and 2.0 s instead of 32 and 0.25 s).
    fields = {k: genesis.swarm.get(k, SWARM_DEFAULTS[k]) for k in GENESIS_PROTOCOL_FIELDS}
    try:
        return ProtocolConfig(swarm_id=genesis.swarm_id, members=genesis.member_keys(), **fields, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"protocol settings: {exc}") from None


class Daemon:
    def __init__(self, cfg: NodeConfig, notifier: Notifier | None = None):
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.started = time.time()
        self.exit_code = 0
        self.failure: str | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._to_replay: list = []
        self.udp: UdpTransport | None = None
        self.status_server: StatusServer | None = None
        self.worker: Worker | None = None
        self.engine = None
        self.ulog = None
        self.sd: StateDir | None = None
        self.rates = Rates()
        self.published = 0
        self.events_seen: dict[str, int] = {}
        self.equivocations = 0
        self.paused = False   # event intake paused by back-pressure (see _pump)
        self.pauses = 0
        self.trunk_info: dict | None = None  # the frozen-trunk cache, when one is used (status)

    # --- setup ---------------------------------------------------------------------------

    async def setup(self) -> None:
        from onebyte.model import update_seed
        from onebyte.protocol import Engine, Identity

        cfg = self.cfg
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        # From here on SIGTERM is a graceful stop, also while the model loads.
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        genesis = self.genesis = load_genesis(cfg.genesis)
        private = read_key(cfg.key)
        if loose_permissions(cfg.key):
            log.warning("key file %s is readable by others; chmod 600 it", cfg.key)
        self.identity = Identity.from_private_bytes(private)
        self.node_id = self.identity.node_id
        pconfig = protocol_config(genesis, cfg.protocol)

        sd = self.sd = StateDir(cfg.state_dir)
        sd.create()
        sd.lock()
        sd.check_genesis(genesis, write=False)
        if cfg.initial_snapshot is not None:
            sd.import_snapshot(cfg.initial_snapshot)
        self.ulog = sd.open_log(fsync=cfg.fsync)
        self.notifier.status("loading model and restoring state")
        # Loading a model takes seconds: off the loop, so a SIGTERM meanwhile is still seen.
        restored = await asyncio.to_thread(restore, genesis, cfg.model, cfg.device, sd, self.ulog,
                                           update_seed, self.node_id)
        self.replica, self.tokenizer = restored.replica, restored.tokenizer
        # Pin the state dir to this swarm only once the model matched the genesis.
        sd.check_genesis(genesis, write=True)
        self.restored = restored
        sample, loss_fn, evaluator, prepare = await asyncio.to_thread(self._load_data, genesis)

        now = self.loop.time()
        self.udp = await open_udp(cfg.listen, self._on_datagram)
        peers = [await resolve_peer(p, self.udp.family) for p in cfg.peers]
        own_logged = self.ulog.updates_vv().get(self.node_id, 0)
        self.engine = Engine(self.identity, pconfig, rng=random.Random(), now=now, store=self.ulog,
                             bootstrap=peers, own_last_step=own_logged, generation=sd.next_generation())
        self._republish_journal(now)

        rate_cap = float(genesis.swarm.get("max_updates_per_s_per_origin", 50.0))
        self.worker = Worker(
            replica=self.replica, node_id=self.node_id, swarm_id=genesis.swarm_id, update_log=self.ulog,
            applied_vv=restored.applied_vv, sample=sample, loss_fn=loss_fn, evaluator=evaluator, prepare=prepare,
            max_steps=cfg.max_steps, min_step_interval_s=max(cfg.step_interval_s, 1.0 / rate_cap),
            eval_every=cfg.eval_every, snapshot=self._snapshot_writer(), snapshot_every=cfg.snapshot_every,
            max_backlog=cfg.max_backlog, post=self._post_from_worker, update_seed=update_seed)
        self.status_server = StatusServer(cfg.socket_path, self.handle_request)
        await self.status_server.start()
        self.worker.start()
        self._pump()
        where = format_addr(self.udp.local_addr)
        log.info("node %s of swarm %s listening on %s (status socket %s)", self.node_id.hex(),
                 genesis.swarm_id.hex()[:16], where, cfg.socket_path)
        self.notifier.ready(f"serving on {where}, {len(peers)} bootstrap peer(s)")
        self._arm_watchdog()  # systemd's watchdog runs from READY=1 on

    def _load_data(self, genesis: Genesis):
        from onebyte.model.data import BatchSampler, DataError, load_task, make_loss_fn
        from onebyte.model.evaluate import evaluate

        cfg = self.cfg
        task_table = dict(genesis.task)
        train_name = cfg.data or task_table.pop("data", "")
        eval_name = cfg.eval_data or task_table.pop("eval_data", "")
        task_table.pop("data", None)
        task_table.pop("eval_data", None)
        spec = task_table or None
        if not train_name:
            log.warning("no training data ([node] data or genesis [task] data): replaying only")
            return None, None, None, None
        try:
            task = load_task(train_name, spec, split="train")
            eval_task = load_task(eval_name, spec, split="eval") if eval_name else None
        except DataError as exc:
            raise ConfigError(f"data: {exc}") from None
        trunk, prepare = self._trunk_cache(genesis, task, eval_task)
        loss_fn = make_loss_fn(task, self.tokenizer, trunk=trunk)
        seed = int.from_bytes(hashlib.blake2b(cfg.seed.to_bytes(8, "little", signed=True) + self.node_id,
                                              digest_size=8).digest(), "little")
        sampler = BatchSampler(len(task.examples), cfg.batch_size, seed)
        examples = task.examples

        def sample(step: int):
            return sampler.batch(examples, step)

        evaluator = None
        if eval_task is not None:
            def evaluator(n_examples: int | None = None):
                # The periodic evaluation uses eval_examples; a client may ask for another
                # prefix of the same held-out list (e.g. the demo's final, larger evaluation).
                subset = eval_task.examples[:n_examples or cfg.eval_examples]
                return evaluate(self.replica.model, self.tokenizer, eval_task, subset, trunk=trunk)
        return sample, loss_fn, evaluator, prepare

    def _trunk_cache(self, genesis: Genesis, task, eval_task):
        """(cache, build) for the frozen-trunk cache (model/trunk.py) when the scope lies above a
        frozen trunk and the task is a classification, else (None, None). `build` fills it: the worker
        runs it before its first step (state "preparing"), so the node is up, serving and
        visible in status meanwhile; progress is in status `trunk_cache` and the log."""
        from onebyte.model.trunk import TrunkCache, first_trainable_layer

        k = first_trainable_layer(self.replica.model, self.replica.names)
        if not self.cfg.trunk_cache or k is None or task.spec.kind != "classification":
            return None, None
        trunk = TrunkCache(self.replica.model, self.tokenizer, k, base_hash=genesis.swarm["base_model_hash"],
                           path=self.sd.path / "trunk.pt")
        texts = [e.text for e in task.examples]
        if eval_task is not None:
            texts += [e.text for e in eval_task.examples[:self.cfg.eval_examples]]
        info = self.trunk_info = {"first_layer": k, "state": "building", "done": 0,
                                  "total": len(trunk.missing(texts)), "loaded": trunk.loaded}

        def build():
            t0 = last = time.monotonic()

            def progress(done, total):
                nonlocal last
                info.update(done=done, total=total)
                if time.monotonic() - last > 10 or done == total:
                    last = time.monotonic()
                    log.info("frozen-trunk cache: %d/%d new examples through layers 0..%d", done, total, k - 1)
            added = trunk.fill(texts, progress=progress)
            info.update(state="ready", done=added, total=added, examples=len(trunk.h), computed=added,
                        seconds=round(time.monotonic() - t0, 1), mb=round(trunk.nbytes() / 1e6, 1))
            log.info("frozen-trunk cache ready: layers >= %d run per loss; %d examples (%d loaded from %s, "
                     "%d computed in %.1f s, %.1f MB)", k, len(trunk.h), trunk.loaded, trunk.path, added,
                     info["seconds"], info["mb"])
        return trunk, build

    def _republish_journal(self, now: float) -> None:
        """Own updates logged before a crash but never sealed into a stored record: publish
        them again (same steps, same q), so peers get them and step numbers stay unique."""
        steps = self.engine.own_steps_to_republish
        if len(steps):
            qs = self.ulog.qs_of(self.node_id, steps.start, steps.stop - 1)
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

    def request_stop(self) -> None:
        if not self._stopping:
            log.info("stop requested: leaving the swarm")
            self._stopping = True
            self._stop_event.set()

    def _post_from_worker(self, kind: str, *args) -> None:
        """Called in the worker thread; hops onto the loop."""
        try:
            self.loop.call_soon_threadsafe(self._from_worker, kind, args)
        except RuntimeError:  # loop already closed at shutdown
            pass

    def _from_worker(self, kind: str, args: tuple) -> None:
        if kind == "own":
            step, q, _loss = args
            if self.engine is not None and not self._stopping:
                self.engine.publish(step, q, self.loop.time())
                self.published += 1
                self.rates.own.add(1)
                self._pump()
        elif kind == "replayed":
            if self.paused and self.engine is not None:
                self._pump()   # the worker caught up: take the engine's queued events
        elif kind == "failed":
            self.failure = args[0]
            self.exit_code = 1
            log.error("worker failed: %s", args[0])
            self.request_stop()

    def _on_datagram(self, data: bytes, addr) -> None:
        if self.engine is None:
            return
        self.engine.receive_datagram(data, addr, self.loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.engine is not None:
            self.engine.handle_timer(self.loop.time())
            self._pump()

    def _pump(self) -> None:
        """After any engine input: events, then datagrams out, then re-arm the one timer."""
        engine = self.engine
        got_updates = False
        # Back-pressure: while the worker is more than max_backlog updates behind, leave the
        # engine's events queued. The engine then refuses new records once its bounded event
        # queue is full (drop reason "backpressure"); anti-entropy fetches them again later.
        while not self._over_backlog() and (ev := engine.next_event()) is not None:
            got_updates |= self._on_event(ev)
        if got_updates and not self._flush_scheduled:
            # Batch the fsync: every datagram the loop handles in this iteration shares one.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        for data, addr in engine.datagrams_to_send(self.loop.time()):
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

    def _on_event(self, ev) -> bool:
        name = type(ev).__name__
        self.events_seen[name] = self.events_seen.get(name, 0) + 1
        if name == "UpdatesReceived":
            try:
                fresh = self.ulog.append_updates(ev.origin, ev.first_step, ev.qs)
            except ValueError as exc:  # a gap: the engine broke its contract; never apply it
                log.error("ignoring updates: %s", exc)
                return False
            self._to_replay.extend(fresh)
            self.rates.received.add(len(fresh))
            return bool(fresh)
        if name in ("PeerJoined", "PeerLeft", "PeerDead", "PeerSuspected", "PeerAlive"):
            log.info("%s %s", name, ev.node_id.hex()[:16])
        elif name == "EquivocationDetected":
            self.equivocations += 1
            log.warning("equivocation by origin %s at steps %d..%d", ev.origin.hex()[:16],
                        ev.first_step, ev.last_step)
        return False

    def _flush(self) -> None:
        """Log durable first, then hand the updates to the worker (log before apply)."""
        self._flush_scheduled = False
        self.ulog.sync()
        items, self._to_replay = self._to_replay, []
        if self.worker is not None:
            self.worker.backlog.extend(items)

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

    # --- status socket ---------------------------------------------------------------------

    async def handle_request(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "status":
            return {"ok": True, **build_status(self)}
        if cmd == "digest":
            return await self._ask_worker("digest")
        if cmd == "snapshot":
            path = req.get("path")
            if path is None:
                self.sd.exports.mkdir(exist_ok=True)
                path = self.sd.exports / f"snapshot-{int(time.time())}.safetensors"
            path = Path(path)
            if not path.is_absolute():
                raise UserError(f"snapshot path must be absolute, got {str(path)!r}")
            return await self._ask_worker("snapshot", lambda r, vv, d: write_standalone(path, r, vv, d))
        if cmd == "eval":
            n = req.get("examples")
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise UserError(f"eval examples must be a positive integer, got {n!r}")
            return await self._ask_worker("eval", n)
        if cmd == "stop_producing":
            return await self._ask_worker("stop_producing")
        if cmd == "leave":
            self.request_stop()
            return {"ok": True}
        raise UserError(f"unknown cmd {cmd!r}; known: status, digest, snapshot, eval, stop_producing, leave")

    async def _ask_worker(self, cmd: str, *args) -> dict:
        if self.worker is None or not self.worker.is_alive():
            raise UserError("the worker is not running")
        fut = self.loop.create_future()

        def reply(result):  # worker thread
            self.loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))
        if not self.worker.submit(cmd, *args, reply):
            raise UserError("busy: too many pending requests, retry")
        result = await fut
        if "error" in result:
            return {"ok": False, **result}
        return {"ok": True, **result}

    # --- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.notifier.stopping()
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
        if self.ulog is not None:
            self.ulog.close()
        if self.sd is not None:
            self.sd.unlock()
        for sig in (signal.SIGTERM, signal.SIGINT):
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
