"""The fast CPU replay kernel: numba with an LLVM `@intrinsic` for the inner loop.

Kept apart from model/replay_cpu.py because it is built on numba internals (`cgutils`,
`context.make_array`, llvmlite IR): a numba release that changes them breaks this module
only, and model/replay_cpu.py then falls back to its plain `@njit` kernel (same bits,
slower). Import it only through model/replay_cpu.py, which sets up numba's cache folder
and checks every argument: the IR below indexes raw data pointers, unchecked.

Why IR: numba's scalar code does not vectorise the inner loop. Here a 64-bit noise word is
bitcast to a <64 x i1> mask and selects +2c into a <64 x i32> accumulator held in registers
(on AVX-512: kmov + masked subtract); the mask word selects the lanes that take noise, the
int64 state is updated as one <64 x i64> load/add/store and the fp32 weights written as one
<64 x float> convert/scale/store. Plain LLVM vector IR: any CPU works, wide SIMD makes it fast.
"""
import numpy as np
from llvmlite import ir
from numba import int64, njit, prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from .rng import GAMMA, MIX1, MIX2

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_VI = ir.VectorType(_I32, 64)
_VF = ir.VectorType(ir.FloatType(), 64)
_VL = ir.VectorType(_I64, 64)
_ZERO64 = ir.Constant(ir.VectorType(_I32, 64), [0] * 64)


def _splat(builder, x, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), _ZERO64)


def _word_sums_ir(context, builder, keys_ty, keys_v, crow_ty, crow_v, w_v):
    """<64 x i32>: lane j = sum_u crow[u] * (1 - 2 * bit j of mix64(keys[u] + w * GAMMA))."""
    ka = context.make_array(keys_ty)(context, builder, keys_v)
    ca = context.make_array(crow_ty)(context, builder, crow_v)
    nb = builder.extract_value(ka.shape, 0)
    vacc = cgutils.alloca_once_value(builder, ir.Constant(_VI, None))  # promoted to a register
    sacc = cgutils.alloca_once_value(builder, ir.Constant(_I32, 0))
    wg = builder.mul(w_v, ir.Constant(_I64, GAMMA))
    with cgutils.for_range(builder, nb) as loop:
        i = loop.index
        z = builder.add(builder.load(builder.gep(ka.data, [i])), wg)
        c = builder.load(builder.gep(ca.data, [i]))
        for shift, mult in ((30, MIX1), (27, MIX2)):
            z = builder.mul(builder.xor(z, builder.lshr(z, ir.Constant(_I64, shift))), ir.Constant(_I64, mult))
        z = builder.xor(z, builder.lshr(z, ir.Constant(_I64, 31)))
        bits = builder.bitcast(z, ir.VectorType(ir.IntType(1), 64))  # lane j = bit j (LLVM: LSB first)
        c2 = _splat(builder, builder.shl(c, ir.Constant(_I32, 1)), _VI)
        builder.store(builder.sub(builder.load(vacc), builder.select(bits, c2, ir.Constant(_VI, None))), vacc)
        builder.store(builder.add(builder.load(sacc), c), sacc)
    # every lane starts at sum(c); each set bit subtracted 2c: c * (1 - 2 bit)
    return builder.add(_splat(builder, builder.load(sacc), _VI), builder.load(vacc))


@intrinsic
def _add_word(typingctx, state, flat, base, keys, crow, w, qt, mword, commit):
    """s = state[base:base+64] + (word sums where mword's bit is set); state = s if commit;
    flat[base:base+64] = float32(s) * qt."""
    sig = types.void(state, flat, base, keys, crow, w, qt, mword, commit)

    def codegen(context, builder, signature, args):
        state_v, flat_v, base_v, keys_v, crow_v, w_v, qt_v, mword_v, commit_v = args
        acc = _word_sums_ir(context, builder, signature.args[3], keys_v, signature.args[4], crow_v, w_v)
        lanes = builder.bitcast(mword_v, ir.VectorType(ir.IntType(1), 64))  # lane j = mask bit j
        acc = builder.sext(builder.select(lanes, acc, ir.Constant(_VI, None)), _VL)
        sa = context.make_array(signature.args[0])(context, builder, state_v)
        sptr = builder.bitcast(builder.gep(sa.data, [base_v]), _VL.as_pointer())
        s = builder.add(builder.load(sptr, align=8), acc)
        with builder.if_then(builder.icmp_signed("!=", commit_v, ir.Constant(_I64, 0))):
            builder.store(s, sptr, align=8)
        fa = context.make_array(signature.args[1])(context, builder, flat_v)
        fptr = builder.bitcast(builder.gep(fa.data, [base_v]), _VF.as_pointer())
        # sitofp rounds to nearest even (exact below 2**24); times a power of two: exact
        builder.store(builder.fmul(builder.sitofp(s, _VF), _splat(builder, qt_v, _VF)), fptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _word_sums(typingctx, out, keys, crow, w):
    """out[0:64] = word sums (for the partial words at tensor edges)."""
    sig = types.void(out, keys, crow, w)

    def codegen(context, builder, signature, args):
        out_v, keys_v, crow_v, w_v = args
        acc = _word_sums_ir(context, builder, signature.args[1], keys_v, signature.args[2], crow_v, w_v)
        oa = context.make_array(signature.args[0])(context, builder, out_v)
        builder.store(acc, builder.bitcast(oa.data, _VI.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def replay_kernel(state, flat, keys, coef_t, it_t, it_e0, it_e1, quantum, mask, commit):
    # state [N] i64; flat [N] f32; keys [B] u64; coef_t [T, B] i32; items [I]; quantum [T] f32;
    # mask [(N + 63) // 64] u64; commit: write the state back (else only show state + batch)
    c64 = int64(1) if commit else int64(0)
    for it in prange(it_t.shape[0]):
        t = it_t[it]
        e0 = it_e0[it]
        e1 = it_e1[it]
        qt = quantum[t]
        crow = coef_t[t]
        acc = np.empty(64, np.int32)
        for w in range(e0 >> 6, (e1 + 63) >> 6):
            base = w * 64
            if base >= e0 and base + 64 <= e1:  # whole word inside the tensor: the vector path
                _add_word(state, flat, base, keys, crow, uint64(w), qt, mask[w], c64)
            else:  # partial word at a tensor edge
                _word_sums(acc, keys, crow, uint64(w))
                m = mask[w]
                for i in range(max(e0, base), min(e1, base + 64)):
                    s = state[i]
                    if (m >> uint64(i - base)) & uint64(1):
                        s += int64(acc[i - base])
                    if commit:
                        state[i] = s
                    flat[i] = np.float32(s) * qt
