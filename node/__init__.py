"""onebyte.node: the daemon shell; its groups (train, storage, join, ops, client) in README.md, "Layout"."""
