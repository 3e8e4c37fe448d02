"""onebyte.protocol: the sans-IO gossip engine and its wire format (spec: docs/protocol.md)."""
from .config import ProtocolConfig, ProtocolConfigError
from .engine import Engine, PeerInfo, ProtocolError
from .events import (DROP_REASONS, AmendmentApplied, DatagramDropped, EquivocationDetected, Event, OriginExcluded,
                     OwnHistoryLearned, PeerAlive, PeerDead, PeerJoined, PeerLeft, PeerSuspected,
                     UpdatesReceived, WeightsDiverged)
from .identity import CryptoCache, Identity, node_id_of
from .store import MemoryRecordStore, RecordStore
from .wire import MessageType

__all__ = [
    "ProtocolConfig", "ProtocolConfigError", "Engine", "PeerInfo", "ProtocolError", "DROP_REASONS",
    "AmendmentApplied", "DatagramDropped", "EquivocationDetected", "Event", "OriginExcluded", "OwnHistoryLearned",
    "PeerAlive", "PeerDead", "PeerJoined", "PeerLeft", "PeerSuspected", "UpdatesReceived",
    "WeightsDiverged", "CryptoCache", "Identity", "node_id_of",
    "MemoryRecordStore", "RecordStore", "MessageType",
]
