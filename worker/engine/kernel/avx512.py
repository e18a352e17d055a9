"""AVX-512 compress stores for the numba backend's `_compact` (numba_backend.py), as an LLVM intrinsic."""

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
            one = builder.insert_element(ir.Constant(lanes, ir.Undefined), first, ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(one, ir.Constant(lanes, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), 16), None))
            values = builder.add(splat, ir.Constant(lanes, list(range(16))))
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
