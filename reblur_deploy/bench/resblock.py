"""``resblock``: MR (the paper's reblurring module) forward + gradient with respect to its input,
as test-time adaptation uses it: eager (cuDNN / oneDNN) vs ``torch.compile`` vs the fused
Triton ResBlock (CUDA)."""

from __future__ import annotations

import contextlib

import torch

from ..device import autocast
from . import networks
from .config import BenchConfig, size_name
from .report import ending, section
from .timing import timed


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    """MR forward + gradient with respect to the input, as in TTA (MR frozen)."""
    from .. import kernels
    from ..kernels.resblock import fused_resblocks

    mr = networks.mr(device, config)
    rows, notes = [], []
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    size = config.sizes[0] if device.type == "cpu" else max(config.sizes)
    for dtype in dtypes:
        x = torch.rand(1, 3, *size, device=device)

        def step(model, x=x, dtype=dtype):
            inp = x.clone().requires_grad_()
            with autocast(device, dtype):
                y = model(inp)
            y.float().sum().backward()
            return inp.grad

        variants = [("eager", mr, None)]
        if config.compile:
            variants.append(("torch.compile", torch.compile(mr, dynamic=False), None))
        ok, why = kernels.triton_available(device)
        if ok and device.type == "cuda":
            variants.append(("fused (Triton)", mr, fused_resblocks))
            if config.compile:
                compiled = torch.compile(mr, dynamic=False)
                variants.append(("fused + torch.compile", compiled, fused_resblocks))
        elif dtype == torch.float32:
            notes.append(f"fused ResBlock not measured: {why}")
        reference = step(mr)
        for name, model, context in variants:
            with context(mr) if context else contextlib.nullcontext():
                grad = step(model)  # warm-up, compile
                seconds, memory = timed(lambda m=model: step(m), device, config.repeats)
            rows.append(
                {
                    "variant": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "size": size_name(size),
                    "ms": seconds * 1e3,
                    "peak_mib": memory,
                    "max_grad_diff": float((grad - reference).abs().max()),
                }
            )
    for row in rows:
        base = next(r["ms"] for r in rows if r["variant"] == "eager" and r["dtype"] == row["dtype"])
        row["speedup_vs_eager"] = base / row["ms"]
    return {"rows": rows, "notes": notes}


def markdown(s: dict) -> list[str]:
    return section(
        "**MR forward + input gradient** (the paper's MR, 64 channels, 2 ResBlocks):",
        s["rows"],
        [
            ("variant", "variant"),
            ("dtype", "dtype"),
            ("size", "size"),
            ("ms", "ms"),
            ("speedup_vs_eager", "× vs eager"),
            ("peak_mib", "peak MiB"),
            ("max_grad_diff", "max |Δ grad|"),
        ],
    ) + ending(s)
