"""AVX-512 intrinsics of the numba backend, in LLVM IR: compress stores for `_compact` (numba_backend.py)
and the exponent histogram's window count (numba_precision.key_histogram_window)."""

from __future__ import annotations

from llvmlite import binding as _llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def has_compress() -> bool:
    """AVX-512 compress stores for 8-, 16- and 32-bit lanes (VBMI2 for the narrow ones).
    Without them LLVM would expand a compress store lane by lane: the plain loop is faster."""
    try:
        features = _llvm.get_host_cpu_features()
    except RuntimeError:
        return False
    return all(features.get(f, False) for f in ("avx512f", "avx512vl", "avx512bw", "avx512vbmi2"))



def _splat(builder, x, lanes: ir.VectorType):
    """x in every lane of a vector of type `lanes`."""
    one = builder.insert_element(ir.Constant(lanes, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(lanes, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), lanes.count), None))


@intrinsic
def compress16(typingctx, dst, m, src, ne, o):
    """dst[m:] <- the elements k of src[o:o+16] with ne[o+k] (src None: the positions o+k);
    their count. One AVX-512 compress store; dst's dtype (as wide as src's) sets the lanes."""
    sig = types.int64(dst, m, src, ne, o)
    iota = isinstance(src, types.NoneType)

    def codegen(context, builder, signature, args):
        dst_v, m_v, src_v, ne_v, o_v = args
        elt = context.get_data_type(signature.args[0].dtype)
        lanes = ir.VectorType(elt, 16)
        bytes16 = ir.VectorType(ir.IntType(8), 16)
        ne_arr = context.make_array(signature.args[3])(context, builder, ne_v)
        flags = builder.load(builder.bitcast(builder.gep(ne_arr.data, [o_v]), bytes16.as_pointer()), align=1)
        mask = builder.icmp_unsigned("!=", flags, ir.Constant(bytes16, None))
        if iota:
            first = builder.trunc(o_v, elt) if elt.width < 64 else o_v
            values = builder.add(_splat(builder, first, lanes), ir.Constant(lanes, list(range(16))))
        else:
            src_arr = context.make_array(signature.args[2])(context, builder, src_v)
            values = builder.load(builder.bitcast(builder.gep(src_arr.data, [o_v]), lanes.as_pointer()), align=1)
        dst_arr = context.make_array(signature.args[0])(context, builder, dst_v)
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [lanes, elt.as_pointer(), ir.VectorType(ir.IntType(1), 16)]),
            f"llvm.masked.compressstore.v16i{elt.width}")
        builder.call(store, [values, builder.gep(dst_arr.data, [m_v]), mask])
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(16), [ir.IntType(16)]), "llvm.ctpop.i16")
        return builder.zext(builder.call(popcount, [builder.bitcast(mask, ir.IntType(16))]), ir.IntType(64))

    return sig, codegen


@intrinsic
def window64(typingctx, keys, o, lo, counts, tail, m):
    """Of the 64 bytes keys[o:o+64]: counts[w] += how many equal lo + w (w < 8), and those below lo
    are compress-stored at tail[m:]; returns m plus their count. One load, eight compares with
    popcounts, one compress store: the exponent histogram's dense window without a store per byte."""
    sig = types.int64(keys, o, lo, counts, tail, m)

    def codegen(context, builder, signature, args):
        keys_v, o_v, lo_v, counts_v, tail_v, m_v = args
        i8, i64 = ir.IntType(8), ir.IntType(64)
        lanes = ir.VectorType(i8, 64)
        keys_arr = context.make_array(signature.args[0])(context, builder, keys_v)
        counts_arr = context.make_array(signature.args[3])(context, builder, counts_v)
        tail_arr = context.make_array(signature.args[4])(context, builder, tail_v)
        values = builder.load(builder.bitcast(builder.gep(keys_arr.data, [o_v]), lanes.as_pointer()), align=1)
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")

        lo8 = builder.trunc(lo_v, i8)
        for w in range(8):
            hits = builder.icmp_unsigned("==", values, _splat(builder, builder.add(lo8, ir.Constant(i8, w)), lanes))
            n = builder.call(popcount, [builder.bitcast(hits, i64)])
            slot = builder.gep(counts_arr.data, [ir.Constant(i64, w)])
            builder.store(builder.add(builder.load(slot), n), slot)
        below = builder.icmp_unsigned("<", values, _splat(builder, lo8, lanes))
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [lanes, i8.as_pointer(), ir.VectorType(ir.IntType(1), 64)]),
            "llvm.masked.compressstore.v64i8")
        builder.call(store, [values, builder.gep(tail_arr.data, [m_v]), below])
        return builder.add(m_v, builder.call(popcount, [builder.bitcast(below, i64)]))

    return sig, codegen
