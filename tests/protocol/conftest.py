"""Fixtures: the fake network and clock live in onebyte.protocol.testing."""
import pytest

from onebyte.protocol import ProtocolConfig
from onebyte.protocol.testing import SWARM, Net, state_of


@pytest.fixture
def config():
    return ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)


@pytest.fixture
def net(config):
    return Net(config)


@pytest.fixture
def snapshot():
    return state_of
