"""Triton kernels of the fused 5×5 ResBlock (see resblock.py, which launches them).

Imported only when the fused path is used: importing it needs triton.
"""

import triton
import triton.language as tl


@triton.jit
def conv_taps(
    acc,
    src_ptr,
    w_ptr,
    n,
    py,
    px,
    rows_ok,
    H,
    W,
    c,
    C: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """acc += Σ_taps src[n, py + ky − 2, px + kx − 2, :] @ w[tap] (zero outside the image)."""
    for tap in range(25):
        sy = py + tap // 5 - 2
        sx = px + tap % 5 - 2
        ok = rows_ok & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        offsets = ((n * H + sy) * W + sx).to(tl.int64)
        a = tl.load(src_ptr + offsets[:, None] * C + c[None, :], mask=ok[:, None], other=0.0)
        w = tl.load(w_ptr + tap * C * C + c[:, None] * C + c[None, :])
        if DOT_F32:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(a, w, input_precision=PRECISION)
    return acc


# Long on purpose (over 60 lines), as is backward_kernel: each kernel is one fused GPU program
# whose steps share the tile held in registers and scratch; helpers would be inlined back into
# it. The two look alike (both convolve twice over a tile) but run different passes, so they
# stay two @triton.jit functions rather than one with branches on what to compute.
@triton.jit
def forward_kernel(
    x_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    out_ptr,
    scratch_ptr,
    H,
    W,
    tiles_w,
    tiles_per_image,
    total_tiles,
    C: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    HALO_BLOCK: tl.constexpr,
    SLOT_ROWS: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    HALO_W: tl.constexpr = TW + 4
    HALO_ROWS: tl.constexpr = (TH + 4) * (TW + 4)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    c = tl.arange(0, C)
    slot = scratch_ptr + pid.to(tl.int64) * SLOT_ROWS * C
    b1 = tl.load(b1_ptr + c)
    b2 = tl.load(b2_ptr + c)
    o = tl.arange(0, TH * TW)
    oy = o // TW
    ox = o % TW
    for tile in range(pid, total_tiles, programs):
        n = tile // tiles_per_image
        y0 = (tile % tiles_per_image) // tiles_w * TH
        x0 = (tile % tiles_per_image) % tiles_w * TW
        # 1. relu(conv1(x) + b1) on the tile and its halo, zero outside the image
        for h0 in range(0, HALO_ROWS, HALO_BLOCK):
            rows = h0 + tl.arange(0, HALO_BLOCK)
            iy = y0 - 2 + rows // HALO_W
            ix = x0 - 2 + rows % HALO_W
            acc = tl.zeros((HALO_BLOCK, C), dtype=tl.float32)
            acc = conv_taps(acc, x_ptr, w1_ptr, n, iy, ix, rows < HALO_ROWS, H, W, c, C,
                             DOT_F32, PRECISION)  # fmt: skip
            inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            mid = tl.where(inside[:, None], tl.maximum(acc + b1[None, :], 0.0), 0.0)
            tl.store(slot + rows[:, None] * C + c[None, :], mid.to(out_ptr.dtype.element_ty))
        tl.debug_barrier()
        # 2. conv2 from the scratch slot, + b2 + x
        acc = tl.zeros((TH * TW, C), dtype=tl.float32)
        for tap in range(25):
            rows = (oy + tap // 5) * HALO_W + ox + tap % 5
            a = tl.load(slot + rows[:, None] * C + c[None, :])
            w = tl.load(w2_ptr + tap * C * C + c[:, None] * C + c[None, :])
            if DOT_F32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(a, w, input_precision=PRECISION)
        py = y0 + oy
        px = x0 + ox
        ok = (py < H) & (px < W)
        offsets = ((n * H + py) * W + px).to(tl.int64)
        pointers = offsets[:, None] * C + c[None, :]
        identity = tl.load(x_ptr + pointers, mask=ok[:, None], other=0.0).to(tl.float32)
        y = acc + b2[None, :] + identity
        tl.store(out_ptr + pointers, y.to(out_ptr.dtype.element_ty), mask=ok[:, None])
        tl.debug_barrier()  # the slot is rewritten by the next tile


# Long on purpose (over 60 lines): one fused GPU program, as forward_kernel (see there).
@triton.jit
def backward_kernel(
    x_ptr,
    g_ptr,
    w1_ptr,
    b1_ptr,
    w2t_ptr,
    w1t_ptr,
    dx_ptr,
    scratch_ptr,
    H,
    W,
    tiles_w,
    tiles_per_image,
    total_tiles,
    C: tl.constexpr,
    TH: tl.constexpr,
    TW: tl.constexpr,
    HALO_BLOCK: tl.constexpr,
    SLOT_ROWS: tl.constexpr,
    DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    HALO_W: tl.constexpr = TW + 4
    HALO_ROWS: tl.constexpr = (TH + 4) * (TW + 4)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    c = tl.arange(0, C)
    slot = scratch_ptr + pid.to(tl.int64) * SLOT_ROWS * C
    b1 = tl.load(b1_ptr + c)
    o = tl.arange(0, TH * TW)
    oy = o // TW
    ox = o % TW
    for tile in range(pid, total_tiles, programs):
        n = tile // tiles_per_image
        y0 = (tile % tiles_per_image) // tiles_w * TH
        x0 = (tile % tiles_per_image) % tiles_w * TW
        # 1. h = relu'(conv1(x) + b1) * conv2ᵀ(g) on the tile and its halo
        for h0 in range(0, HALO_ROWS, HALO_BLOCK):
            rows = h0 + tl.arange(0, HALO_BLOCK)
            iy = y0 - 2 + rows // HALO_W
            ix = x0 - 2 + rows % HALO_W
            valid = rows < HALO_ROWS
            z = tl.zeros((HALO_BLOCK, C), dtype=tl.float32)
            z = conv_taps(z, x_ptr, w1_ptr, n, iy, ix, valid, H, W, c, C, DOT_F32, PRECISION)
            t = tl.zeros((HALO_BLOCK, C), dtype=tl.float32)
            t = conv_taps(t, g_ptr, w2t_ptr, n, iy, ix, valid, H, W, c, C, DOT_F32,
                           PRECISION)  # fmt: skip
            inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            h = tl.where(inside[:, None] & (z + b1[None, :] > 0.0), t, 0.0)
            tl.store(slot + rows[:, None] * C + c[None, :], h.to(dx_ptr.dtype.element_ty))
        tl.debug_barrier()
        # 2. dx = g + conv1ᵀ(h)
        acc = tl.zeros((TH * TW, C), dtype=tl.float32)
        for tap in range(25):
            rows = (oy + tap // 5) * HALO_W + ox + tap % 5
            a = tl.load(slot + rows[:, None] * C + c[None, :])
            w = tl.load(w1t_ptr + tap * C * C + c[:, None] * C + c[None, :])
            if DOT_F32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(a, w, input_precision=PRECISION)
        py = y0 + oy
        px = x0 + ox
        ok = (py < H) & (px < W)
        offsets = ((n * H + py) * W + px).to(tl.int64)
        pointers = offsets[:, None] * C + c[None, :]
        g = tl.load(g_ptr + pointers, mask=ok[:, None], other=0.0).to(tl.float32)
        tl.store(dx_ptr + pointers, (acc + g).to(dx_ptr.dtype.element_ty), mask=ok[:, None])
        tl.debug_barrier()
