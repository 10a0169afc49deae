"""Temporary memory mlx's quantize/dequantize kernels need, per mode, as a multiple
of the input (quantize) or output (dequantize) size. planner/chunking.py's
WORKSPACE table holds these figures (mlx 0.32.4, CPU backend).

    python bench/op_workspace.py
"""

import mlx.core as mx

MODES = [("affine", 64, 4), ("mxfp4", 32, 4), ("mxfp8", 32, 8), ("nvfp4", 16, 4)]

for mode, group_size, bits in MODES:
    w = mx.zeros((2048, 7168), dtype=mx.bfloat16)
    mx.eval(w)
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    q = mx.quantize(w, group_size=group_size, bits=bits, mode=mode)
    mx.eval(q)
    quantize = (mx.get_peak_memory() - base - sum(x.nbytes for x in q)) / w.nbytes
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    d = mx.dequantize(*q, group_size=group_size, bits=bits, mode=mode)
    mx.eval(d)
    dequantize = (mx.get_peak_memory() - base - d.nbytes) / d.nbytes
    print(f"{mode}: quantize {quantize:.1f} x input, dequantize {dequantize:.1f} x output")
    del w, q, d
    mx.clear_cache()
