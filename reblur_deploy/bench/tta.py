"""``tta``: one TTA step and an N-step TTA of one frame (Algorithm A, full frame and 4×256²
crops): eager fp32 vs compiled vs (CUDA) compiled + bf16 + fused; seconds, peak memory,
compile time."""

from __future__ import annotations

import functools
import gc
import time
import warnings

import torch

from . import networks
from .config import BenchConfig, size_name
from .report import ending, section
from .timing import sync, timed


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    from ..tta import TestTimeAdapter, TTAConfig

    variants = [("eager fp32", {})]
    if config.compile:
        variants.append(("compiled fp32", {"compile": True}))
        if device.type == "cuda":
            variants.append(
                (
                    "compiled + bf16 + fused",
                    {"compile": True, "amp_dtype": torch.bfloat16, "fused": True},
                )
            )
    modes = [("full frame", {}), ("crops 4×256²", {"crop": 256, "crops": 4})]
    rows = []
    for size in config.sizes:
        x = torch.rand(1, 3, *size, device=device)
        for mode, mode_options in modes:
            if mode_options and min(size) <= 256:
                continue  # crops as large as the frame: the same as full frame
            for name, options in variants:
                md, mr = networks.md(device, config), networks.mr(device, config)
                row = {"size": size_name(size), "mode": mode, "variant": name}
                adapter = TestTimeAdapter(md, mr, TTAConfig(**mode_options, **options))
                for steps in (1, config.steps):  # one adapter: compiled once per shape
                    run = functools.partial(adapter, x, steps=steps)
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        run()  # warm-up; compiles the graphs for this shape
                    sync(device)
                    if steps == 1:
                        row["first_call_s"] = time.perf_counter() - start
                    seconds, memory = timed(run, device, config.repeats, 0)
                    row[f"s_{steps}_steps"] = seconds
                    row["peak_mib"] = max(row.get("peak_mib") or 0, memory or 0)
                row["s_per_step"] = (row[f"s_{config.steps}_steps"] - row["s_1_steps"]) / max(
                    1, config.steps - 1
                )
                rows.append(row)
                del md, mr, adapter
                gc.collect()
    for row in rows:
        base = next(
            r
            for r in rows
            if (r["size"], r["mode"], r["variant"]) == (row["size"], row["mode"], "eager fp32")
        )
        row["speedup_vs_eager"] = base[f"s_{config.steps}_steps"] / row[f"s_{config.steps}_steps"]
    return {"steps": config.steps, "rows": rows}


def markdown(s: dict) -> list[str]:
    n = s["steps"]
    return section(
        "**Test-time adaptation** of one frame (paper's U-Net + MR, Algorithm A; seconds "
        "include the final inference and histogram matching):",
        s["rows"],
        [
            ("size", "size"),
            ("mode", "mode"),
            ("variant", "variant"),
            ("s_per_step", "s / step"),
            ("s_1_steps", "1 step, s"),
            (f"s_{n}_steps", f"{n} steps, s"),
            ("speedup_vs_eager", f"× vs eager ({n} steps)"),
            ("first_call_s", "first call, s"),
            ("peak_mib", "peak MiB"),
        ],
    ) + ending(s)
