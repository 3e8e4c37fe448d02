"""Joining from a snapshot, both ends: surveying, attesting and fetching a peer's snapshot,
and serving ours. Imports from storage/, train/ and the leaf modules."""
