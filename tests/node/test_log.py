"""The durable update log: round trip, torn tails, corruption, RecordStore behaviour."""

import os

import pytest

from onebyte.node.errors import StateError
from onebyte.node.log import HEADER, UpdateLog, encode_entry, KIND_UPDATES

A = bytes(range(16))
B = bytes(range(16, 32))


def test_round_trip_and_dedup(tmp_path):
    p = tmp_path / "u.log"
    lg = UpdateLog(p)
    assert lg.append_updates(A, 1, [5, -3, 127]) == [(A, 1, 5), (A, 2, -3), (A, 3, 127)]
    # overlapping re-delivery: only step 4 is new
    assert lg.append_updates(A, 2, [-3, 127, -127]) == [(A, 4, -127)]
    assert lg.append_updates(A, 1, [5]) == []
    lg.append_own(B, 1, -1)
    lg.add(A, 1, 4, b"record-a-1-4")
    lg.add(A, 1, 4, b"record-a-1-4")  # duplicate record: stored once
    lg.close()
    lg2 = UpdateLog(p)
    assert lg2.updates_vv() == {A: 4, B: 1}
    assert lg2.updates_after({A: 2}) == [(A, 3, 127), (A, 4, -127), (B, 1, -1)]
    assert lg2.get(A, 1, 1000) == [b"record-a-1-4"]
    assert lg2.version_vector() == {A: 4}   # B has no record yet: not advertised
    assert lg2.records_vv(B) == 0
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
