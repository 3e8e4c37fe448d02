"""CPU replay: argument checks that survive `python -O`, and the choice between the two kernels.

That both kernels give the oracle's bits is in test_replay.py (test_kernel_matches_oracle)."""
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from onebyte.model import replay_cpu as rc
from onebyte.model.replay_cpu import make_items, replay_cpu

SIZES = np.array([70, 200])
OFFSETS = np.array([0, 70])


def _args():
    """A valid batch: state, flat, keys, coef_t, items, quantum, mask, commit (2 tensors, 3 updates)."""
    n = int(SIZES.sum())
    return (np.zeros(n, np.int64), np.zeros(n, np.float32), np.array([1, 2, 3], np.uint64),
            np.ones((2, 3), np.int32), make_items(OFFSETS, SIZES, chunk=128),
            np.full(2, 2.0 ** -20, np.float32), np.full((n + 63) // 64, 2 ** 64 - 1, np.uint64), True)


def _items(t, e0, e1):
    return tuple(np.array(v, np.int64) for v in (t, e0, e1))


BAD = {  # argument index -> a replacement the kernels must never see
    "state int32": (0, np.zeros(270, np.int32)),
    "state shorter than flat": (0, np.zeros(200, np.int64)),
    "flat float64": (1, np.zeros(270, np.float64)),
    "flat strided": (1, np.zeros(540, np.float32)[::2]),
    "keys int64": (2, np.array([1, 2, 3], np.int64)),
    "coef_t transposed": (3, np.ones((3, 2), np.int32).T),
    "coef_t fewer updates than keys": (3, np.ones((2, 2), np.int32)),
    "quantum short": (5, np.full(1, 1.0, np.float32)),
    "mask short": (6, np.zeros(3, np.uint64)),
    "mask int64": (6, np.zeros(5, np.int64)),
    "item past the buffer": (4, _items([1], [70], [271])),
    "item of a tensor that does not exist": (4, _items([2], [0], [64])),
    "item with a negative start": (4, _items([0], [-64], [10])),
    "item ending before it starts": (4, _items([0], [64], [0])),
    "items of unequal length": (4, _items([0, 1], [0], [64])),
    "items not int64": (4, (np.array([0], np.int32),) + _items([0], [0], [64])[1:]),
}


@pytest.mark.parametrize("kernel", ["simd", "plain"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_before_any_write(case, kernel):
    args = list(_args())
    i, value = BAD[case]
    args[i] = value
    before = args[0].copy(), args[1].copy()
    with pytest.raises(ValueError, match="replay_cpu"):
        replay_cpu(*args, kernel=kernel)
    assert np.array_equal(args[0], before[0]) and np.array_equal(args[1], before[1])


@pytest.mark.parametrize("which", [0, 1])
def test_read_only_buffer_is_refused(which):
    args = list(_args())
    args[which].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        replay_cpu(*args, kernel="plain")


def test_checks_survive_python_O(tmp_path):
    # The checks used to be `assert`s, which -O strips: then the simd kernel wrote past the buffer.
    script = textwrap.dedent("""
        import numpy as np
        from onebyte.model.replay_cpu import replay_cpu
        if __debug__:
            raise SystemExit("asserts are live: this run does not test -O")
        flat = np.zeros(128, np.float32)
        items = tuple(np.array(v, np.int64) for v in ([0], [0], [1 << 20]))
        try:
            replay_cpu(np.zeros(128, np.int64), flat, np.ones(1, np.uint64), np.ones((1, 1), np.int32), items,
                       np.ones(1, np.float32), np.zeros(2, np.uint64), True, kernel="simd")
        except ValueError as e:
            print("refused:", e)
        """)
    out = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: replay_cpu: items out of range" in out.stdout


@pytest.fixture
def fresh_default(monkeypatch):
    """default_kernel() is decided once per process; let a test decide it again, then forget."""
    monkeypatch.delenv(rc.KERNEL_ENV, raising=False)
    rc.default_kernel.cache_clear()
    yield monkeypatch
    rc.default_kernel.cache_clear()


def test_auto_picks_simd_where_it_builds(fresh_default):
    assert rc.default_kernel() == "simd"


@pytest.mark.parametrize("name", ["plain", "simd"])
def test_environment_forces_a_kernel(fresh_default, name):
    fresh_default.setenv(rc.KERNEL_ENV, name)
    assert rc.default_kernel() == name


def test_environment_typo_is_a_clear_error(fresh_default):
    fresh_default.setenv(rc.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="ONEBYTE_REPLAY_KERNEL='fast': expected auto, simd or plain"):
        rc.default_kernel()


def test_unknown_kernel_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="replay kernel 'avx'"):
        replay_cpu(*_args(), kernel="avx")


def test_auto_falls_back_when_simd_cannot_be_built(fresh_default, caplog):
    fresh_default.setitem(sys.modules, "onebyte.model.replay_simd", None)  # its import now fails
    with caplog.at_level(logging.WARNING, "onebyte.model.replay_cpu"):
        assert rc.default_kernel() == "plain"
    assert "unavailable (ModuleNotFoundError" in caplog.text and "using the plain kernel" in caplog.text
    args = _args()
    replay_cpu(*args)  # the default now runs the plain kernel
    assert args[0].any() and args[1].any()


def test_auto_falls_back_when_simd_gives_other_bits(fresh_default, caplog):
    plain = rc._kernel("plain")

    def off_by_one_quantum(state, flat, *rest):  # a miscompiled fast kernel: runs, but wrong
        plain(state, flat, *rest)
        state[5] += 1

    fresh_default.setattr(rc, "_kernel", lambda name: off_by_one_quantum if name == "simd" else plain)
    with caplog.at_level(logging.WARNING, "onebyte.model.replay_cpu"):
        assert rc.default_kernel() == "plain"
    assert "differs from the plain kernel" in caplog.text


def test_kernels_agree_on_probes_and_commits():
    # Both kernels: a probe shows state + batch and keeps the state; a commit writes it; same bits.
    results = {}
    for kernel in ("simd", "plain"):
        state, flat, keys, coef_t, items, quantum, mask, _ = _args()
        state[:] = np.arange(state.size) * (1 << 30)   # large states: the shown weights round
        mask[1] = 0x00FF00FF00FF00FF
        replay_cpu(state, flat, keys, coef_t, items, quantum, mask, False, kernel=kernel)
        probe = (state.copy(), flat.copy())
        replay_cpu(state, flat, keys, coef_t, items, quantum, mask, True, kernel=kernel)
        results[kernel] = probe, (state.copy(), flat.copy())
    (p_s, p_f), (c_s, c_f) = results["simd"]
    (q_s, q_f), (d_s, d_f) = results["plain"]
    assert np.array_equal(p_s, np.arange(p_s.size) * (1 << 30))
    assert np.array_equal(p_s, q_s) and np.array_equal(p_f.view(np.uint32), q_f.view(np.uint32))
    assert np.array_equal(c_s, d_s) and np.array_equal(c_f.view(np.uint32), d_f.view(np.uint32))
    assert np.array_equal(p_f.view(np.uint32), c_f.view(np.uint32)) and not np.array_equal(p_s, c_s)
