"""The command line and what runs outside a daemon: `onebyte` and its commands (status, top,
members, amendments, backup, doctor, export). Top of the node: may import any of it; what a
client command runs against a daemon never imports torch (tests/node/test_operations.py)."""
