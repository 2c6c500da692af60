"""A fused 5×5 ResBlock for the reblurring module MR, in Triton: forward and input gradient.

MR (Table C of the paper) is a chain of ResBlocks ``y = x + conv₂(relu(conv₁(x) + b₁)) + b₂`` with
5×5 convolutions at 64 channels. Unfused, every block writes its 64-channel intermediate
activation to memory and reads it back (and autograd keeps it for the backward pass). Here one
persistent Triton program per streaming multiprocessor walks over output tiles; for each tile it
computes the intermediate on the tile plus its 2-pixel halo as implicit GEMMs (25 taps ×
[pixels, C] @ [C, C] with ``tl.dot``), keeps it in a per-program scratch slot that is reused tile
after tile (so it stays in L2 rather than making a round trip through DRAM), and applies the
second convolution, the bias and the identity from that slot. The backward pass (with respect
to the input only: MR is frozen during test-time adaptation) recomputes the ReLU mask the same
way, so nothing but ``x`` is kept between forward and backward:

    h  = 1[conv₁(x) + b₁ > 0] ⊙ conv₂ᵀ(g)          on the tile + halo (scratch)
    dx = g + conv₁ᵀ(h)                              on the tile

where convᵀ is the convolution with the kernel flipped and its channel axes swapped.

Layouts: activations channels-last (N×H×W×C memory), weights re-laid out per call as
``[25 taps, C_in, C_out]``. fp32, fp16 and bf16 (fp32 accumulation; fp32 dots use TF32 when
``torch.backends.cudnn.allow_tf32`` allows it, as cuDNN does). Weight gradients are not fused:
when they are needed, ``FusedResBlock5.backward`` recomputes the block in torch to get them.

The kernels run on CUDA GPUs, and on the CPU under ``TRITON_INTERPRET=1`` (Triton's interpreter;
that is how CI tests them, at small sizes). The interpreter computes bf16 dots wrongly, so under
it the operands are widened to fp32 first.

Use: ``fused_resblock(x, block)`` for one ``models.blocks.ResBlock``, or ``with
fused_resblocks(mr): ...`` to run every eligible ResBlock of a module through the kernel.
"""

from __future__ import annotations

import contextlib
import os
import types

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

_TRITON = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton():
    """Import triton and define the kernels once (only when the fused path is used)."""
    global _TRITON
    if _TRITON is None:
        _TRITON = _define_kernels()
    return _TRITON


def _define_kernels():
    from . import _resblock_triton as kernels

    return types.SimpleNamespace(forward=kernels.forward_kernel, backward=kernels.backward_kernel)


# ---------------------------------------------------------------------------------------------
# launch configuration


def _config(device: torch.device) -> dict:
    """Tile sizes: 8×16 output pixels per tile on a GPU (a 12×20 halo in 4 chunks of 64 rows);
    4×4 under the interpreter (small, so the persistent loop and the halo edges are exercised on
    tiny images)."""
    if interpreting() or device.type != "cuda":
        return {"TH": 4, "TW": 4, "HALO_BLOCK": 64, "num_warps": 4, "programs": 4}
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return {"TH": 8, "TW": 16, "HALO_BLOCK": 64, "num_warps": 4, "programs": 2 * sms}


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"  # ignored by Triton for 16-bit operands


def _taps(weight: torch.Tensor, dtype: torch.dtype, transposed: bool = False) -> torch.Tensor:
    """[C_out, C_in, 5, 5] → [25, C_in, C_out] (or, transposed: the flipped kernel as
    [25, C_out, C_in], the weight of the input-gradient convolution)."""
    weight = weight.flip(2, 3).permute(2, 3, 0, 1) if transposed else weight.permute(2, 3, 1, 0)
    return weight.reshape(25, weight.shape[2], weight.shape[3]).to(dtype).contiguous()


def _launch(kernel, x: torch.Tensor, tensors: list, out: torch.Tensor) -> None:
    n, c, h, w = x.shape
    if (
        out.shape != x.shape
        or out.dtype != x.dtype
        or not out.is_contiguous(memory_format=torch.channels_last)
    ):
        raise InputError("the fused ResBlock writes a channels-last tensor of the input's shape")
    cfg = _config(x.device)
    th, tw, block = cfg["TH"], cfg["TW"], cfg["HALO_BLOCK"]
    halo = (th + 4) * (tw + 4)
    slot_rows = -(-halo // block) * block
    tiles_h, tiles_w = -(-h // th), -(-w // tw)
    total = n * tiles_h * tiles_w
    programs = max(1, min(total, cfg["programs"]))
    scratch = torch.empty(programs, slot_rows, c, device=x.device, dtype=out.dtype)
    dot_f32 = interpreting() or out.dtype == torch.float32
    kernel[(programs,)](
        *tensors, out, scratch, h, w, tiles_w, tiles_h * tiles_w, total,
        C=c, TH=th, TW=tw, HALO_BLOCK=block, SLOT_ROWS=slot_rows, DOT_F32=dot_f32,
        PRECISION=_precision(out.dtype), num_warps=cfg["num_warps"],
    )  # fmt: skip


def _check(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> None:
    c = x.shape[1] if x.dim() == 4 else -1
    if (
        x.dim() != 4
        or tuple(w1.shape) != (c, c, 5, 5)
        or tuple(w2.shape) != (c, c, 5, 5)
        or c < 16
        or c & (c - 1)
    ):
        raise InputError(
            "the fused ResBlock takes N×C×H×W inputs and C×C×5×5 weights with C a power of two "
            f"≥ 16, got {tuple(x.shape)}, {tuple(w1.shape)}, {tuple(w2.shape)}"
        )


def forward_into(x, w1, b1, w2, b2, out: torch.Tensor) -> torch.Tensor:
    """Launch the forward kernel, writing every element of ``out`` (channels-last, x's dtype)."""
    dtype = x.dtype
    xc = x.contiguous(memory_format=torch.channels_last)
    tensors = [xc, _taps(w1, dtype), b1.float().contiguous(), _taps(w2, dtype),
               b2.float().contiguous()]  # fmt: skip
    _launch(_triton().forward, xc, tensors, out)
    return out


def backward_input_into(x, grad, w1, b1, w2, dx: torch.Tensor) -> torch.Tensor:
    """Launch the input-gradient kernel, writing every element of ``dx`` (channels-last)."""
    dtype = x.dtype
    xc = x.contiguous(memory_format=torch.channels_last)
    g = grad.to(dtype).contiguous(memory_format=torch.channels_last)
    tensors = [xc, g, _taps(w1, dtype), b1.float().contiguous(),
               _taps(w2, dtype, transposed=True), _taps(w1, dtype, transposed=True)]  # fmt: skip
    _launch(_triton().backward, xc, tensors, dx)
    return dx


# The kernels as torch custom operators: opaque to torch.compile (which keeps them as single
# nodes) and capturable in CUDA graphs (they launch on the current stream and allocate through
# torch). Defining them needs no triton; running them does.


def _like(x: torch.Tensor, *_) -> torch.Tensor:
    """Both operators' output: a channels-last tensor shaped like ``x`` (also their fake
    implementation, which torch.compile traces with)."""
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.custom_op("reblur::resblock5_forward", mutates_args=())
def resblock5_forward(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    return forward_into(x, w1, b1, w2, b2, _like(x))


@torch.library.custom_op("reblur::resblock5_backward_input", mutates_args=())
def resblock5_backward_input(
    x: torch.Tensor, grad: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    return backward_input_into(x, grad, w1, b1, w2, _like(x))


resblock5_forward.register_fake(_like)
resblock5_backward_input.register_fake(_like)


def reference_resblock(x, w1, b1, w2, b2) -> torch.Tensor:
    """The block in torch: x + conv(relu(conv(x, w1, b1)), w2, b2), 'same' padding."""
    return x + F.conv2d(F.relu(F.conv2d(x, w1, b1, padding=2)), w2, b2, padding=2)


class FusedResBlock5(torch.autograd.Function):
    """``x + conv₂(relu(conv₁(x) + b₁)) + b₂`` (5×5, C channels) with the fused kernels; the
    gradient with respect to ``x`` is fused too, those of the weights (rarely needed: MR is
    frozen during TTA) are computed by recomputing the block in torch."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        ctx.save_for_backward(x, w1, b1, w2, b2)
        return torch.ops.reblur.resblock5_forward(x, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad):
        x, w1, b1, w2, b2 = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.reblur.resblock5_backward_input(x, grad, w1, b1, w2).to(x.dtype)
        weight_grads = [None] * 4
        if any(ctx.needs_input_grad[1:]):
            needs = ctx.needs_input_grad[1:]
            params = [
                t.detach().requires_grad_(n) for t, n in zip((w1, b1, w2, b2), needs, strict=True)
            ]
            wanted = [p for p in params if p.requires_grad]
            with torch.enable_grad():
                out = reference_resblock(x.detach(), *params)
                grads = iter(torch.autograd.grad(out, wanted, grad))
            weight_grads = [next(grads) if p.requires_grad else None for p in params]
        return (dx, *weight_grads)


def fused_resblock(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
    """Run one ``models.blocks.ResBlock`` (5×5 convs) through the fused kernels. Under autocast
    the block computes in the autocast dtype, as its convolutions would."""
    conv1, conv2 = block.body[0], block.body[2]
    _check(x, conv1.weight, conv2.weight)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    with torch.autocast(x.device.type, enabled=False):
        return FusedResBlock5.apply(x, conv1.weight, conv1.bias, conv2.weight, conv2.bias)


def eligible(block: nn.Module) -> bool:
    """A ``ResBlock`` of two 5×5, stride-1, 'same'-padded convolutions with biases and C a power
    of two ≥ 16 (MR's blocks)."""
    from ..models.blocks import ResBlock

    if not isinstance(block, ResBlock):
        return False
    convs = [block.body[0], block.body[2]]
    return all(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (5, 5)
        and m.stride == (1, 1)
        and m.padding == (2, 2)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.bias is not None
        and m.in_channels == m.out_channels >= 16
        and not m.in_channels & (m.in_channels - 1)
        for m in convs
    )


@contextlib.contextmanager
def fused_resblocks(module: nn.Module):
    """Within the block, every eligible ResBlock of ``module`` runs through the fused kernels
    (its ``forward`` is swapped on the instance and restored afterwards; weights untouched)."""
    patched = [m for m in module.modules() if eligible(m)]
    for block in patched:
        # one bound method per block, reused: torch.compile guards on it, so a new object on
        # every entry would recompile every time
        if "_reblur_fused_forward" not in vars(block):
            block._reblur_fused_forward = types.MethodType(_block_forward, block)
        block.forward = block._reblur_fused_forward
    try:
        yield len(patched)
    finally:
        for block in patched:
            del block.forward


def _block_forward(self, x: torch.Tensor) -> torch.Tensor:
    return fused_resblock(x, self)
