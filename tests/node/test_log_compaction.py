"""The update log starting from a snapshot: BASE entries, compaction, what it serves (issue 12)."""

from __future__ import annotations

import pytest

from onebyte.node.errors import StateError
from onebyte.node.storage.log import UpdateLog
from onebyte.node.join.snapshot_join import Candidate, plan
from onebyte.node.storage.state import StateDir, _check_floor

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def filled(path, n_a=100, n_b=50) -> UpdateLog:
    lg = UpdateLog(path)
    lg.append_updates(A, 1, [i % 50 for i in range(n_a)])
    lg.append_updates(B, 1, [-3] * n_b)
    for f in range(1, n_a + 1, 10):
        lg.add(A, f, f + 9, b"recA%03d" % f)
    for f in range(1, n_b + 1, 10):
        lg.add(B, f, f + 9, b"recB%03d" % f)
    lg.sync()
    return lg


def test_compaction_drops_what_the_floor_holds_and_survives_a_reopen(tmp_path):
    lg = filled(tmp_path / "u.log")
    before, after = lg.compact({A: 60, B: 20})
    assert after < before and lg.size_bytes == after
    assert lg.floor_vv() == {A: 60, B: 20}
    assert lg.updates_vv() == {A: 100, B: 50} == lg.version_vector()
    assert lg.index_updates() == 40 + 30
    assert [s for o, s, _q in lg.updates_after({}) if o == A][:1] == [61]
    assert lg.qs_of(A, 55, 62) == [10, 11]       # steps 61, 62; nothing at or below the base
    lg.append_updates(A, 101, [7])
    lg.sync()
    lg.close()
    again = UpdateLog(tmp_path / "u.log")
    assert again.floor_vv() == {A: 60, B: 20}
    assert again.updates_vv() == {A: 101, B: 50}
    assert again.qs_of(A, 100, 101) == [49, 7]


def test_a_compacted_log_serves_no_record_that_leaves_a_gap(tmp_path):
    lg = filled(tmp_path / "u.log")
    lg.compact({A: 60})
    assert lg.get(A, 1, 1 << 20) == []            # the peer needs a snapshot, not records from 61
    assert lg.get(A, 55, 1 << 20) == []
    assert lg.get(A, 61, 1 << 20)[0] == b"recA061"
    assert lg.get(A, 65, 1 << 20)[0] == b"recA061"   # a record straddling the step is fine
    assert lg.get(B, 1, 1 << 20)[0] == b"recB001"    # untouched origin


def test_compacting_past_the_log_and_to_unknown_origins(tmp_path):
    lg = filled(tmp_path / "u.log")
    assert lg.compact({A: 200, C: 7}) is not None     # a joined snapshot ahead of the log
    assert lg.updates_vv() == {A: 200, B: 50, C: 7} == lg.version_vector()
    lg.append_updates(C, 8, [1, 2])                   # the engine pulls on from the base
    assert lg.updates_after({}) == [(B, s, -3) for s in range(1, 51)] + [(C, 8, 1), (C, 9, 2)]
    assert lg.compact({A: 200, C: 7}) is None         # nothing more to drop


def test_restore_refuses_a_log_whose_base_no_snapshot_covers(tmp_path):
    sd = StateDir(tmp_path / "state")
    sd.create()
    lg = filled(sd.log_path)
    lg.compact({A: 60})
    with pytest.raises(StateError, match="compacted"):
        _check_floor(sd, lg, None)


def test_plan_prefers_snapshots_past_every_floor_and_sees_a_log_behind_the_horizon():
    def info(node, vv, floor, digest="d" * 64):
        return {"node": node, "floor": {o.hex(): n for o, n in floor.items()}, "log": {},
                "snapshot": {"digest": digest, "vv": {o.hex(): n for o, n in vv.items()},
                             "sha256": digest, "size": 10, "updates": sum(vv.values())}}
    infos = {("h", 1): info("x", {A: 90}, {A: 80}, "1" * 64), ("h", 2): info("y", {A: 70, B: 40}, {A: 50}, "2" * 64)}
    p = plan(infos, {A: 10}, {})
    assert p.behind_floor                                # every peer compacted past our step 10
    assert [c.digest for c in p.candidates] == ["1" * 64, "2" * 64]   # only the first is past both floors
    assert plan(infos, {A: 85}, {}).behind_floor is False  # peer y still serves records from 51
    assert plan(infos, {A: 10}, {A: 95}).candidates == []  # none covers our own base
    assert isinstance(p.candidates[0], Candidate) and p.candidates[0].holders == [("h", 1)]
