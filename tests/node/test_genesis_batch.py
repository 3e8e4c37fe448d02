"""[swarm] records_per_signature (docs/protocol.md, "Batch signatures"): its default is
ProtocolConfig's own and docs/config.md states it; a bad value is a config error naming it."""
import re
from pathlib import Path

import pytest

from onebyte.node.errors import ConfigError
from onebyte.node.genesis import SWARM_DEFAULTS, parse_genesis, protocol_config
from onebyte.protocol import ProtocolConfig

SWARM = {"base_model": "tiny", "base_model_hash": "0" * 64}


def test_default_is_protocol_configs_and_documented():
    doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    documented = re.search(r"\| swarm\.records_per_signature \|[^|]*\| `([^`]+)`", doc).group(1)
    cfg = protocol_config(parse_genesis({"swarm": dict(SWARM), "hyper": {}, "task": {}}), {})
    bare = ProtocolConfig(swarm_id=b"\0" * 32)
    assert cfg.records_per_signature == SWARM_DEFAULTS["records_per_signature"] \
        == bare.records_per_signature == int(documented)
    assert re.search(rf"^records_per_signature = {bare.records_per_signature}\b", doc, re.M)


def test_genesis_value_reaches_the_engine_and_bad_values_are_named():
    g = parse_genesis({"swarm": {**SWARM, "records_per_signature": 1}, "hyper": {}, "task": {}})
    assert protocol_config(g, {}).records_per_signature == 1
    for bad in (0, 17, 2.0, True):
        with pytest.raises(ConfigError, match="records_per_signature"):
            parse_genesis({"swarm": {**SWARM, "records_per_signature": bad}, "hyper": {}, "task": {}})
    with pytest.raises(ConfigError, match="fixed by the genesis"):
        protocol_config(g, {"records_per_signature": 2})
