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
    """A valid batch: flat, keys, coef_t, items, quantum, bound (2 tensors, 3 updates)."""
    return (np.zeros(int(SIZES.sum()), np.float32), np.array([1, 2, 3], np.uint64),
            np.ones((2, 3), np.int32), make_items(OFFSETS, SIZES, chunk=128),
            np.full(2, 2.0 ** -20, np.float32), np.full(2, 4.0, np.float32))


def _items(t, e0, e1):
    return tuple(np.array(v, np.int64) for v in (t, e0, e1))


BAD = {  # argument index -> a replacement the kernels must never see
    "flat float64": (0, np.zeros(270, np.float64)),
    "flat strided": (0, np.zeros(540, np.float32)[::2]),
    "keys int64": (1, np.array([1, 2, 3], np.int64)),
    "coef_t transposed": (2, np.ones((3, 2), np.int32).T),
    "coef_t fewer updates than keys": (2, np.ones((2, 2), np.int32)),
    "quantum short": (4, np.full(1, 1.0, np.float32)),
    "bound float64": (5, np.full(2, 4.0)),
    "item past the buffer": (3, _items([1], [70], [271])),
    "item of a tensor that does not exist": (3, _items([2], [0], [64])),
    "item with a negative start": (3, _items([0], [-64], [10])),
    "item ending before it starts": (3, _items([0], [64], [0])),
    "items of unequal length": (3, _items([0, 1], [0], [64])),
    "items not int64": (3, (np.array([0], np.int32),) + _items([0], [0], [64])[1:]),
}


@pytest.mark.parametrize("kernel", ["simd", "plain"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_before_any_write(case, kernel):
    args = list(_args())
    i, value = BAD[case]
    args[i] = value
    before = args[0].copy()
    with pytest.raises(ValueError, match="replay_cpu"):
        replay_cpu(*args, kernel=kernel)
    assert np.array_equal(args[0], before)


def test_read_only_buffer_is_refused():
    args = list(_args())
    args[0].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        replay_cpu(*args, kernel="plain")


def test_checks_survive_python_O(tmp_path):
    # The checks used to be `assert`s, which -O strips: then the simd kernel wrote past the buffer.
    script = textwrap.dedent("""
        import numpy as np
        from onebyte.model.replay_cpu import replay_cpu
        if __debug__:
            raise SystemExit("asserts are live: this run does not test -O")
        flat = np.zeros(100, np.float32)
        items = tuple(np.array(v, np.int64) for v in ([0], [0], [1 << 20]))
        try:
            replay_cpu(flat, np.ones(1, np.uint64), np.ones((1, 1), np.int32), items,
                       np.ones(1, np.float32), np.full(1, 4.0, np.float32), kernel="simd")
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
    flat, keys, coef_t, items, quantum, bound = _args()
    replay_cpu(flat, keys, coef_t, items, quantum, bound)  # the default now runs the plain kernel
    assert flat.any()


def test_auto_falls_back_when_simd_gives_other_bits(fresh_default, caplog):
    plain = rc._kernel("plain")

    def off_by_one_quantum(flat, *rest):  # a miscompiled fast kernel: runs, but wrong
        plain(flat, *rest)
        flat[5] += rest[5][0]

    fresh_default.setattr(rc, "_kernel", lambda name: off_by_one_quantum if name == "simd" else plain)
    with caplog.at_level(logging.WARNING, "onebyte.model.replay_cpu"):
        assert rc.default_kernel() == "plain"
    assert "differs from the plain kernel" in caplog.text


def test_kernels_agree_on_overflow_reports():
    # Both kernels report the same tensors over their bound (NaN included) and write the same bits.
    results = {}
    for kernel in ("simd", "plain"):
        flat, keys, coef_t, items, quantum, _ = _args()
        bound = np.array([2.0 ** -21, 4.0], np.float32)  # tensor 0: any odd sum of 3 signs is over
        flat[100] = np.nan  # tensor 1: NaN counts as over too
        bad = replay_cpu(flat, keys, coef_t, items, quantum, bound, kernel=kernel)
        results[kernel] = (bad.tolist(), flat.view(np.uint32).copy())
    assert results["simd"][0] == results["plain"][0] == [0, 1]
    assert np.array_equal(results["simd"][1], results["plain"][1])
