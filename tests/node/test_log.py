"""The durable update log: round trip, torn tails, corruption, disk full, RecordStore behaviour."""

import errno
import os

import pytest

from onebyte.node.errors import DiskFull, StateError
from onebyte.node.storage.log import HEADER, UpdateLog, encode_entry, KIND_UPDATES

A = bytes(range(16))
B = bytes(range(16, 32))


def test_round_trip_and_dedup(tmp_path):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    assert lg.append_updates(A, 1, [5, -3, 127]) == [(A, 1, 5), (A, 2, -3), (A, 3, 127)]
    # overlapping re-delivery: only step 4 is new
    assert lg.append_updates(A, 2, [-3, 127, -127]) == [(A, 4, -127)]
    assert lg.append_updates(A, 1, [5]) == []
    lg.append_own(B, 1, [-1])
    lg.add(A, 1, 4, b"record-a-1-4")
    lg.add(A, 1, 4, b"record-a-1-4")  # duplicate record: stored once
    lg.close()
    lg2 = UpdateLog(p)
    assert lg2.updates_vv() == {A: 4, B: 1}
    assert lg2.updates_after({A: 2}) == [(A, 3, 127), (A, 4, -127), (B, 1, -1)]
    assert lg2.get(A, 1, 1000) == [b"record-a-1-4"]
    assert lg2.version_vector() == {A: 4}   # B has no record yet: not advertised
    assert lg2.truncated_bytes == 0


def test_gap_is_refused(tmp_path):
    lg = UpdateLog(tmp_path / "u.log")
    lg.append_updates(A, 1, [1])
    with pytest.raises(ValueError):
        lg.append_updates(A, 3, [1])
    assert lg.updates_vv() == {A: 1}


def test_version_vector_needs_both_record_and_updates(tmp_path):
    """A crash between logging a record and logging its updates must make the engine pull
    the record again, so the store must not advertise it."""
    lg = UpdateLog(tmp_path / "u.log")
    lg.add(A, 1, 3, b"r")
    assert lg.version_vector() == {}
    lg.append_updates(A, 1, [1, 2, 3])
    assert lg.version_vector() == {A: 3}


def test_the_engines_one_call_logs_a_record_and_the_steps_it_delivers(tmp_path, monkeypatch, caplog):
    """add(..., delivered=(first, qs)) writes the RECORD and its UPDATES; what landed is taken
    once, in order; a step already logged is not taken again; a gap is logged, never applied;
    on a full disk nothing lands until retry() returns it."""
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.add(A, 1, 3, b"r-a-1-3", delivered=(1, [1, 2, 3]))
    lg.add(B, 1, 1, b"r-b-1", delivered=(1, [-4]))
    lg.add(A, 2, 4, b"r-a-2-4", delivered=(4, [5]))     # steps 2..3 of it were delivered before
    assert lg.take_landed() == [(A, 1, 1), (A, 2, 2), (A, 3, 3), (B, 1, -4), (A, 4, 5)]
    assert lg.take_landed() == []
    lg.add(B, 3, 3, b"r-b-3", delivered=(3, [9]))        # a gap: the engine broke its contract
    assert lg.take_landed() == [] and lg.updates_vv() == {A: 4, B: 1}
    assert "ignoring updates" in caplog.text
    FakeDisk(monkeypatch, lg, room=0)
    lg.add(B, 2, 2, b"r-b-2", delivered=(2, [7]))        # never raises: held
    assert lg.take_landed() == [] and lg.disk_full
    monkeypatch.undo()
    assert lg.retry() == [(B, 2, 7)] and lg.take_landed() == []
    lg.close()
    again = UpdateLog(p)
    assert again.updates_vv() == {A: 4, B: 2} and again.version_vector() == {A: 4, B: 2}


def test_get_respects_limit_and_from_step(tmp_path):
    lg = UpdateLog(tmp_path / "u.log")
    for i in range(5):
        lg.add(A, 10 * i + 1, 10 * i + 10, bytes([i]) * 100)
    assert [r[0] for r in lg.get(A, 15, 250)] == [1, 2]
    assert [r[0] for r in lg.get(A, 41, 10)] == [4]      # at least one record
    assert lg.get(A, 51, 1000) == []
    assert lg.get(B, 1, 1000) == []


@pytest.mark.parametrize("cut", [1, 5, 8, 20])
def test_torn_tail_is_truncated(tmp_path, cut):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.append_updates(A, 1, [1, 2])
    lg.append_updates(A, 3, [3, 4])
    lg.close()
    good = p.stat().st_size
    entry = encode_entry(KIND_UPDATES, A, 5, 6, bytes([5, 6]))
    with open(p, "ab") as f:
        f.write(entry[:cut])            # a crash in the middle of the append
    lg2 = UpdateLog(p)
    assert lg2.updates_vv() == {A: 4}
    assert lg2.truncated_bytes == cut
    assert p.stat().st_size == good      # truncated back
    lg2.append_updates(A, 5, [5])        # and the log keeps working
    lg2.close()
    assert UpdateLog(p).updates_vv() == {A: 5}


def _two_entry_log(tmp_path):
    """A closed log with two entries of origin A (steps 1-3, then 4); returns (path, bytes)."""
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.append_updates(A, 1, [1, 2, 3])
    lg.append_updates(A, 4, [4])
    lg.close()
    return p, bytearray(p.read_bytes())


def test_checksum_mismatch_at_tail_is_torn(tmp_path):
    p, data = _two_entry_log(tmp_path)
    data[-1] ^= 0xFF                      # last entry's payload damaged
    p.write_bytes(bytes(data))
    lg2 = UpdateLog(p)
    assert lg2.updates_vv() == {A: 3}
    assert lg2.truncated_bytes > 0


def test_corruption_in_the_middle_is_an_error(tmp_path):
    p, data = _two_entry_log(tmp_path)
    data[len(HEADER) + 8 + 20] ^= 0xFF    # inside the first entry's payload
    p.write_bytes(bytes(data))
    with pytest.raises(StateError, match="corrupt at offset"):
        UpdateLog(p)


def test_damage_followed_by_a_valid_proof_or_base_entry_is_corruption_not_a_torn_tail(tmp_path):
    """Any entry kind after the damage proves it is in the middle, not only UPDATES/RECORD."""
    from onebyte.node.storage.log import KIND_BASE, KIND_PROOF, proof_body
    for kind, body in ((KIND_BASE, b""), (KIND_PROOF, proof_body(b"a" * 10, b"b" * 10, b"\x01"))):
        p = tmp_path / f"u{kind}.log"
        lg = UpdateLog(p)
        lg.append_updates(A, 1, [1, 2])
        lg.close()
        data = bytearray(p.read_bytes())
        data[len(HEADER) + 8 + 20] ^= 0xFF              # damage inside the only UPDATES entry
        p.write_bytes(bytes(data) + encode_entry(kind, A, 2, 2, body))
        with pytest.raises(StateError, match="corrupt at offset"):
            UpdateLog(p)


def test_readonly_does_not_truncate(tmp_path):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.append_updates(A, 1, [1])
    lg.close()
    with open(p, "ab") as f:
        f.write(b"\x10\x00")
    size = p.stat().st_size
    ro = UpdateLog(p, readonly=True)
    assert ro.updates_vv() == {A: 1}
    assert p.stat().st_size == size


def test_not_a_log(tmp_path):
    p = tmp_path / "u.log"
    p.write_bytes(b"hello world, not a log at all")
    with pytest.raises(StateError, match="not an onebyte update log"):
        UpdateLog(p)


def test_crash_while_writing_header(tmp_path):
    p = tmp_path / "u.log"
    p.write_bytes(HEADER[:5])
    lg = UpdateLog(p)
    lg.append_updates(A, 1, [9])
    lg.close()
    assert UpdateLog(p).updates_vv() == {A: 1}


def test_file_mode_is_private(tmp_path):
    p = tmp_path / "u.log"
    UpdateLog(p).close()
    assert os.stat(p).st_mode & 0o077 == 0


# --- disk full: entries land whole or not at all, held entries come back from retry() ----------

class FakeDisk:
    """os.write/os.fsync for one log's fd: `room` bytes fit, then ENOSPC (a short write
    first when an entry straddles the limit, as a real file system does)."""

    def __init__(self, monkeypatch, lg, room=None, fsync_fails=False):
        self.fd, self.room, self.fsync_fails = lg._fd, room, fsync_fails
        self._write, self._fsync = os.write, os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd, data):
        if fd != self.fd or self.room is None:
            return self._write(fd, data)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self._write(fd, bytes(data[:self.room]))
        self.room -= n
        return n

    def fsync(self, fd):
        if fd == self.fd and self.fsync_fails:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._fsync(fd)


def test_enospc_holds_peer_updates_without_advancing_the_index(tmp_path, monkeypatch):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.append_updates(A, 1, [1, 2])
    size = p.stat().st_size
    disk = FakeDisk(monkeypatch, lg, room=0)
    with pytest.raises(DiskFull):
        lg.append_updates(A, 3, [3, 4])
    assert lg.disk_full and lg.held == 1
    assert lg.updates_vv() == {A: 2} and p.stat().st_size == size
    # held in order: the next steps of A queue behind (no gap error), other origins too
    with pytest.raises(DiskFull):
        lg.append_updates(A, 5, [5])
    with pytest.raises(DiskFull):
        lg.append_updates(B, 1, [7])
    assert lg.append_updates(A, 3, [3]) == []           # duplicate of a held update
    lg.add(A, 1, 5, b"record-a-1-5")                     # the engine's call never raises
    assert lg.get(A, 1, 1000) == [] and lg.version_vector() == {}
    assert lg.retry() == [] and lg.disk_full            # still no room
    disk.room = None                                     # space returns
    assert lg.retry() == [(A, 3, 3), (A, 4, 4), (A, 5, 5), (B, 1, 7)]
    assert not lg.disk_full and lg.held == 0 and lg.disk_full_events == 1
    assert lg.get(A, 1, 1000) == [b"record-a-1-5"] and lg.version_vector() == {A: 5}
    lg.close()
    again = UpdateLog(p)
    assert again.updates_vv() == {A: 5, B: 1} and again.truncated_bytes == 0
    assert again.get(A, 1, 1000) == [b"record-a-1-5"]


@pytest.mark.parametrize("room", [1, 7, 20])
def test_short_write_is_cut_back_to_the_last_whole_entry(tmp_path, monkeypatch, room):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.append_updates(A, 1, [1])
    size = p.stat().st_size
    FakeDisk(monkeypatch, lg, room=room)                 # part of the entry fits, then ENOSPC
    with pytest.raises(DiskFull):
        lg.append_updates(A, 2, [2, 3, 4])
    assert p.stat().st_size == size                      # no partial entry left behind
    monkeypatch.undo()
    lg.close()
    again = UpdateLog(p)
    assert again.truncated_bytes == 0 and again.updates_vv() == {A: 1}


def test_short_write_then_room_completes_the_entry(tmp_path, monkeypatch):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    disk = FakeDisk(monkeypatch, lg, room=10)
    real = disk.write

    def short_then_fine(fd, data):
        n = real(fd, data)
        disk.room = None                                 # the short write was a transient
        return n
    monkeypatch.setattr(os, "write", short_then_fine)
    assert lg.append_updates(A, 1, [1, 2, 3]) == [(A, 1, 1), (A, 2, 2), (A, 3, 3)]
    assert not lg.disk_full
    lg.close()
    assert UpdateLog(p).updates_vv() == {A: 3}


def test_own_update_is_refused_not_held(tmp_path, monkeypatch):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    lg.append_own(B, 1, [5])
    disk = FakeDisk(monkeypatch, lg, room=3)
    with pytest.raises(DiskFull):
        lg.append_own(B, 2, [-5])
    assert lg.held == 0 and lg.updates_vv() == {B: 1} and lg.disk_full
    disk.room = None
    lg.append_own(B, 2, [6])                               # recomputed step: a new q is fine
    assert lg.retry() == [] and not lg.disk_full
    lg.close()
    assert UpdateLog(p).updates_after({}) == [(B, 1, 5), (B, 2, 6)]


def test_fsync_enospc_takes_the_own_update_back(tmp_path, monkeypatch):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    disk = FakeDisk(monkeypatch, lg, fsync_fails=True)
    with pytest.raises(DiskFull):
        lg.append_own(B, 1, [5])
    assert lg.updates_vv() == {} and lg.disk_full
    disk.fsync_fails = False
    lg.append_own(B, 1, [9])                               # the next write cuts the old one off
    lg.close()
    assert UpdateLog(p).updates_after({}) == [(B, 1, 9)]


def test_retry_waits_for_free_space_before_leaving_the_state(tmp_path, monkeypatch):
    lg = UpdateLog(tmp_path / "u.log")
    lg.mark_disk_full("snapshot did not fit")
    monkeypatch.setattr("onebyte.node.storage.log.RESUME_FREE_BYTES", 1 << 62)
    assert lg.retry() == [] and lg.disk_full
    monkeypatch.setattr("onebyte.node.storage.log.RESUME_FREE_BYTES", 1)
    assert lg.retry() == [] and not lg.disk_full


def test_new_log_on_a_full_disk_is_a_clean_error(tmp_path, monkeypatch):
    real = os.write

    def no_room(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("u.log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)
    monkeypatch.setattr(os, "write", no_room)
    with pytest.raises(DiskFull, match="no space left") as exc:
        UpdateLog(tmp_path / "u.log")
    assert "\n" not in str(exc.value) and not (tmp_path / "u.log").exists()
