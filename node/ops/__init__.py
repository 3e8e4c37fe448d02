"""The daemon's face to its operator: the status socket, control commands, counters and rates,
the peer book, metrics and the web page, systemd notification. Imports from storage/,
train/ and the leaf modules, never from the daemon or the client."""
