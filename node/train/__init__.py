"""The worker's side: the one thread that writes the replica (local steps, replay, exclusions)
and what it measures on this node's data (the training task, peer audits, the steering rule,
private steps). Imports from the node's leaf modules only."""
