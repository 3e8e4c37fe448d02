"""Fixtures for network tests: a Lab of network namespaces per test. The helpers live in
netlab*.py (importable from here, and by bench/wan.py); node_harness comes from tests/node."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import netlab  # noqa: E402


@pytest.fixture
def lab():
    """An unstarted Lab; every namespace it made is deleted after the test, pass or fail."""
    if why := netlab.unavailable():
        pytest.skip(f"network lab unavailable: {why}")
    with netlab.Lab(seed=1) as lab:
        yield lab
