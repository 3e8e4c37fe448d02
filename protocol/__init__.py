"""onebyte.protocol: the sans-IO gossip engine and its wire format (spec: docs/protocol.md)."""
from .config import ConfigError, ProtocolConfig
from .engine import Engine, PeerInfo, ProtocolError
from .events import (DROP_REASONS, DatagramDropped, EquivocationDetected, Event, PeerAlive, PeerDead,
                     PeerJoined, PeerLeft, PeerSuspected, UpdatesReceived)
from .identity import CryptoCache, Identity, node_id_of
from .store import MemoryRecordStore, RecordStore
from .wire import MessageType

__all__ = [
    "ConfigError", "ProtocolConfig", "Engine", "PeerInfo", "ProtocolError", "DROP_REASONS",
    "DatagramDropped", "EquivocationDetected", "Event", "PeerAlive", "PeerDead", "PeerJoined",
    "PeerLeft", "PeerSuspected", "UpdatesReceived", "CryptoCache", "Identity", "node_id_of",
    "MemoryRecordStore", "RecordStore", "MessageType",
]
