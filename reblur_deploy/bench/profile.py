"""``profile``: where inference of MD spends its time, layer by layer, at the first of the
run's sizes (batch 1), as the eager backend runs it (in the device's memory format,
channels-last on CPUs): each layer's milliseconds (forward hooks around every leaf module, the
median of the repeats), its share of the frame, its FLOPs and the fraction of the measured
peak it reaches, in float32 and under bf16 autocast; and what cheap settings buy (the memory
format, bf16, ONNX Runtime's intra-op threads)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..device import memory_format
from . import networks
from .config import BenchConfig, size_name
from .report import ending, section
from .timing import sync, timed

TOP_LAYERS = 8  # the costliest layers get a row each; the rest one row together


def _layer_times(md: nn.Module, x: torch.Tensor, device, repeats: int) -> dict[str, float]:
    """Median seconds of each leaf module over ``repeats`` forward passes (after a warm-up)."""
    leaves = {name: m for name, m in md.named_modules() if not list(m.children())}
    times: dict[str, list[float]] = {name: [] for name in leaves}
    started: dict[str, float] = {}

    def before(name):
        def hook(module, args):
            sync(device)
            started[name] = time.perf_counter()

        return hook

    def after(name):
        def hook(module, args, output):
            sync(device)
            times[name].append(time.perf_counter() - started[name])

        return hook

    handles = []
    for name, module in leaves.items():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    try:
        with torch.inference_mode():
            for _ in range(repeats + 1):
                md(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(t[1:]) for name, t in times.items() if len(t) > 1}


def _layer_flops(md: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FLOPs of each module, by its qualified name (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        md(x)
    root = type(md).__name__
    flops = {}
    for name, counts in counter.get_flop_counts().items():
        key = name.removeprefix(root).removeprefix(".")
        flops[key] = float(sum(counts.values()))
    return flops


def _describe(module: nn.Module) -> str:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k = "×".join(map(str, module.kernel_size))
        stride = f" s{module.stride[0]}" if module.stride[0] != 1 else ""
        kind = "transposed conv" if isinstance(module, nn.ConvTranspose2d) else "conv"
        return f"{kind} {k}{stride} {module.in_channels}→{module.out_channels}"
    return type(module).__name__


def _layers(md, x, device, repeats, peak_tflops, precision) -> list[dict]:
    from ..device import autocast

    dtype = torch.bfloat16 if precision == "bf16" else None
    with autocast(device, dtype):
        seconds = _layer_times(md, x, device, repeats)
    flops = _layer_flops(md, x)
    total = sum(seconds.values())
    modules = dict(md.named_modules())
    ranked = sorted(seconds, key=seconds.get, reverse=True)
    rows = []
    for name in ranked[:TOP_LAYERS]:
        rows.append(_row(precision, name, _describe(modules[name]), seconds[name], total,
                         flops.get(name, 0.0), peak_tflops))  # fmt: skip
    rest = ranked[TOP_LAYERS:]
    rows.append(_row(precision, f"{len(rest)} other layers", "", sum(seconds[n] for n in rest),
                     total, sum(flops.get(n, 0.0) for n in rest), peak_tflops))  # fmt: skip
    rows.append(_row(precision, "whole network", "", total, total,
                     sum(flops.get(n, 0.0) for n in seconds), peak_tflops))  # fmt: skip
    return rows


def _row(precision, name, kind, seconds, total, flops, peak_tflops) -> dict:
    row = {"precision": precision, "layer": name, "kind": kind, "ms": seconds * 1e3,
           "share": seconds / total if total else 0.0, "gflop": flops / 1e9}  # fmt: skip
    if flops and seconds:
        row["gflops_per_s"] = flops / seconds / 1e9
        if peak_tflops:
            row["fraction_of_peak"] = flops / seconds / (peak_tflops * 1e12)
    return row


def _settings(md, x, device, repeats) -> list[dict]:
    """Frames per second of one frame under settings that cost nothing to adopt."""
    from ..backends import create_backend
    from ..device import autocast
    from ..errors import ReblurError

    rows = []

    def add(name, fn):
        seconds, memory = timed(fn, device, repeats)
        rows.append({"setting": name, "fps": 1 / seconds, "peak_mib": memory})

    with torch.inference_mode():
        add("eager fp32, contiguous (NCHW)", lambda: md(x))
        last = x.contiguous(memory_format=torch.channels_last)
        md.to(memory_format=torch.channels_last)
        try:
            add("eager fp32, channels-last (NHWC)", lambda: md(last))
            with autocast(device, torch.bfloat16):
                add("eager bf16 autocast, channels-last", lambda: md(last))
        finally:
            md.to(memory_format=torch.contiguous_format)
        with autocast(device, torch.bfloat16):
            add("eager bf16 autocast, contiguous", lambda: md(x))
    if device.type == "cpu":
        for threads in (None, 1):
            try:
                options = {"threads": threads} if threads else {}
                backend = create_backend("onnxruntime", md, device, **options)
            except ReblurError as e:
                rows.append({"setting": f"onnxruntime: {str(e).splitlines()[0]}"})
                break
            label = f"{threads} intra-op thread" if threads else "its default threads"
            add(f"onnxruntime fp32, {label}", lambda b=backend: b.infer(x))
    base = rows[0]["fps"]
    for row in rows:
        if "fps" in row:
            row["speedup"] = row["fps"] / base
    return rows


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    peaks = done.get("peak", {}).get("peak_tflops", {})
    md = networks.md(device, config)
    divisor = md.size_divisor
    size = tuple(-(-s // divisor) * divisor for s in config.sizes[0])
    x = torch.rand(1, 3, *size, device=device)
    repeats = max(3, config.repeats)
    settings = _settings(md, x, device, repeats)
    fmt = memory_format(device)
    md, x = md.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    layers = _layers(md, x, device, repeats, peaks.get("float32"), "fp32")
    layers += _layers(md, x, device, repeats, peaks.get("bfloat16"), "bf16")
    return {
        "model": networks.model_name(config),
        "size": size_name(size),
        "layers": layers,
        "format": "channels-last" if fmt == torch.channels_last else "NCHW",
        "settings": settings,
        "notes": [] if peaks else ["no peak measured (add the peak section): no fractions"],
    }


def markdown(s: dict) -> list[str]:
    layer_columns = [
        ("precision", "precision"),
        ("layer", "layer"),
        ("kind", "kind"),
        ("ms", "ms"),
        ("share", "share"),
        ("gflop", "GFLOP"),
        ("gflops_per_s", "GFLOP/s"),
        ("fraction_of_peak", "fraction of peak"),
    ]
    caption = (
        f"**Where inference goes** ({s['model']}, {s['size']}, batch 1, eager PyTorch in "
        f"{s.get('format', 'NCHW')}; each "
        "layer timed by forward hooks, so the sum runs a little above a plain pass; fraction "
        "of the measured matmul peak of the same precision):"
    )
    setting_columns = [("setting", "setting"), ("fps", "frames/s"),
                       ("speedup", "× contiguous fp32"), ("peak_mib", "peak MiB")]  # fmt: skip
    settings = section("**Cheap settings**, one frame of the same size:", s["settings"],
                       setting_columns)  # fmt: skip
    return [*section(caption, s["layers"], layer_columns), "", *settings, *ending(s)]
