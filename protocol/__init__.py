"""onebyte.protocol: the sans-IO gossip engine and its wire format."""
