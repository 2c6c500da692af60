"""``infer``: inference of MD per backend (torch eager in fp32 and bf16 autocast, compiled, ONNX
Runtime, TensorRT when present, and ``auto``, the default engine, naming what it picked) per
size and batch: frames per second and the speed-up over eager fp32, peak memory, FLOPs per
frame (``torch.utils.flop_counter``) and the achieved fraction of the measured peak of the
precision."""

from __future__ import annotations

import gc

import torch

from . import networks
from .config import BenchConfig, size_name
from .report import ending, section
from .timing import timed


def flops_per_frame(module: torch.nn.Module, size: tuple[int, int], device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return float(counter.get_total_flops())


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    peaks = done["peak"]["peak_tflops"] if "peak" in done else {}
    from ..backends import create_backend
    from ..errors import ReblurError

    md = networks.md(device, config)
    divisor = md.size_divisor
    rows, notes = [], []
    # Every backend in fp32, and eager PyTorch under bf16 autocast too (on CPUs it pays only
    # with AMX; the table shows whether this machine has it).
    variants = [(name, "fp32") for name in config.backends]
    if "eager" in config.backends:
        variants.insert(1, ("eager", "bf16"))
        variants.append(("auto", "fp32"))  # the default engine, as Deblurrer builds it
    for name, precision in variants:
        if name == "compile" and not config.compile:
            continue
        try:
            backend = create_backend(name, md, device, precision)
            if name == "auto":
                name = f"auto ({backend.name})"
        except (ReblurError, ImportError) as e:
            notes.append(f"{name}: not measured ({str(e).splitlines()[0]})")
            continue
        for size in config.sizes:
            padded = tuple(-(-s // divisor) * divisor for s in size)
            flops = flops_per_frame(md, padded, device)
            for batch in config.batches:
                x = torch.rand(batch, 3, *padded, device=device)
                try:
                    with torch.inference_mode():
                        seconds, memory = timed(
                            lambda b=backend, x=x: b.infer(x), device, config.repeats
                        )
                except (ReblurError, RuntimeError) as e:
                    notes.append(
                        f"{name} {size_name(size)} batch {batch}: {str(e).splitlines()[0]}"
                    )
                    continue
                fps = batch / seconds
                row = {
                    "backend": name,
                    "precision": precision,
                    "size": size_name(size),
                    "batch": batch,
                    "fps": fps,
                    "peak_mib": memory,
                    "gflops_per_frame": flops / 1e9,
                }
                peak = peaks.get({"fp32": "float32", "bf16": "bfloat16"}[precision])
                if peak:
                    row["fraction_of_peak"] = flops * fps / (peak * 1e12)
                rows.append(row)
        del backend
        gc.collect()
    eager = {(r["size"], r["batch"]): r["fps"] for r in rows
             if (r["backend"], r["precision"]) == ("eager", "fp32")}  # fmt: skip
    for row in rows:
        if (row["size"], row["batch"]) in eager:
            row["speedup"] = row["fps"] / eager[row["size"], row["batch"]]
    return {
        "model": networks.model_name(config),
        "rows": rows,
        "notes": notes,
    }


def markdown(s: dict) -> list[str]:
    return section(
        f"**Inference** of MD ({s['model']}):",
        s["rows"],
        [
            ("backend", "backend"),
            ("precision", "precision"),
            ("size", "size"),
            ("batch", "batch"),
            ("fps", "frames/s"),
            ("speedup", "× eager fp32"),
            ("peak_mib", "peak MiB"),
            ("gflops_per_frame", "GFLOP/frame"),
            ("fraction_of_peak", "fraction of peak"),
        ],
    ) + ending(s)
