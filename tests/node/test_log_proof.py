"""The update log's equivocation exclusion (KIND_PROOF): the origin's index is cut at the
proof's step, the q taken back are kept, and both survive a reopen and a compaction."""
from onebyte.node.storage.log import UpdateLog

A, B = b"a" * 16, b"b" * 16


def test_proof_cuts_the_index_and_survives_reopen_and_compaction(tmp_path):
    p = tmp_path / "updates.log"
    lg = UpdateLog(p, fsync=False)
    lg.append_updates(A, 1, [1, 2, 3, 4, 5])
    lg.append_updates(B, 1, [7])
    lg.add(A, 1, 2, b"rec-1-2")
    lg.add(A, 3, 5, b"rec-3-5")
    lg.add_proof(A, 4, b"proof-a", b"proof-b")
    assert lg.updates_vv() == {A: 3, B: 1}
    assert lg.taken_back(A) == (4, [4, 5]) and lg.exclusions() == {A: 4}
    assert lg.proofs() == {A: (b"proof-a", b"proof-b")}
    assert lg.get(A, 1, 1000) == [b"rec-1-2", b"rec-3-5"]   # 3..5 still covers step 3
    lg.add_proof(A, 5, b"x", b"y")                          # a higher step changes nothing
    assert lg.taken_back(A) == (4, [4, 5])
    lg.add_proof(A, 3, b"lower-a", b"lower-b")              # a lower one wins, q merged
    assert lg.taken_back(A) == (3, [3, 4, 5]) and lg.updates_vv()[A] == 2
    assert lg.get(A, 1, 1000) == [b"rec-1-2"]
    lg.close()
    lg = UpdateLog(p, fsync=False)
    assert lg.updates_vv() == {A: 2, B: 1} and lg.taken_back(A) == (3, [3, 4, 5])
    assert lg.proofs() == {A: (b"lower-a", b"lower-b")}
    assert lg.updates_after({}) == [(A, 1, 1), (A, 2, 2), (B, 1, 7)]
    assert lg.compact({A: 5, B: 1}) is not None            # never a base past the exclusion
    assert lg.floor_vv() == {A: 2, B: 1}
    lg.close()
    lg = UpdateLog(p, fsync=False)
    assert lg.taken_back(A) == (3, [3, 4, 5]) and lg.version_vector().get(A, 0) <= 2
    lg.close()


def test_membership_amendments_survive_reopen_and_compaction(tmp_path):
    """KIND_AMEND: the kept amendment per number, in number order, whole through a compaction."""
    p = tmp_path / "updates.log"
    lg = UpdateLog(p, fsync=False)
    lg.append_updates(A, 1, [1, 2, 3])
    lg.add_amendment(2, b"second")
    lg.add_amendment(1, b"first")
    lg.add_amendment(1, b"first")          # the same again: no second entry
    entries = lg.entries
    lg.add_amendment(1, b"first-won")      # another kept for 1 (a conflict resolved): replaces
    assert lg.entries == entries + 1 and lg.amendments() == [b"first-won", b"second"]
    lg.close()
    lg = UpdateLog(p, fsync=False)
    assert lg.amendments() == [b"first-won", b"second"]
    assert lg.compact({A: 3}) is not None
    lg.close()
    lg = UpdateLog(p, fsync=False)
    assert lg.amendments() == [b"first-won", b"second"] and lg.floor_vv() == {A: 3}
    lg.close()
