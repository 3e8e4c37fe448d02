"""What the node keeps on disk: the durable-file helpers, the update log and its file format,
snapshots and their wire form, the state dir, and compaction of the log past snapshots peers
hold. Imports from train/ (the steering guard a restore rebuilds) and the leaf modules."""
