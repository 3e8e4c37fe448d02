"""onebyte.node: the daemon shell (transport, worker, log, status, CLI)."""
