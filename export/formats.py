"""What each ``reblur-export --to`` target is and which options it takes: one row per target,
checked in one place (``Target.check``) and written by one call (``Target.write``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from reblur_deploy.errors import ConfigError

# The options a target may take → how a refusal names them.
OPTIONS = {
    "fp16": "--dtype fp16 applies",
    "opset": "--opset applies",
    "simplify": "--simplify/--no-simplify apply",
    "profile": "--min/opt/max-shape apply",
    "timing_cache": "--timing-cache applies",
}


@dataclass(frozen=True)
class Target:
    name: str  # --to NAME
    suffix: str  # the file name's usual suffix (any name is written as given)
    writer: str  # "module:function" of this package, imported when used (extras load late)
    extra: str | None = None  # what `pip install "reblur-deploy[EXTRA]"` adds for it
    fp16: bool = False  # may compute in float16 (inputs and outputs stay float32)
    fp16_default: bool = False
    opset: bool = False  # ONNX opset
    simplify: bool = False  # onnxsim pass
    profile: bool = False  # TensorRT optimisation profile (min/opt/max shapes)
    timing_cache: bool = False  # TensorRT timing cache
    log: bool = False  # the writer reports its progress through a log function

    def check(self, fp16: bool, options: dict) -> None:
        """Refuse an option this target does not take (rather than ignoring it). ``options``:
        the others of OPTIONS, None where not given."""
        given = {"fp16": fp16 or None, **options}
        for key, phrase in OPTIONS.items():
            if given.get(key) is not None and not getattr(self, key):
                takers = [t.name for t in TARGETS.values() if getattr(t, key)]
                raise ConfigError(f"{phrase} to {_listed(takers)} only, not {self.name}")

    def write(self, weights, out, role: str, **options):
        """Export with the writer, passing the options it takes (None: the writer's default)."""
        module, function = self.writer.split(":")
        writer = getattr(importlib.import_module(f".{module}", __package__), function)
        taken = {k: v for k, v in options.items() if getattr(self, k) and v is not None}
        return writer(weights, out, role=role, **taken)


def _listed(names: list[str]) -> str:
    """["a", "b", "c"] → "a, b and c"."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


TARGETS = {
    target.name: target
    for target in (
        Target("onnx", ".onnx", "onnx:export_onnx", extra="onnx", fp16=True, opset=True,
               simplify=True, log=True),
        Target("trt", ".engine", "tensorrt:export_tensorrt", extra="onnx,trt", fp16=True,
               fp16_default=True, profile=True, timing_cache=True, log=True),
        Target("torch-trt", ".ep", "torch_trt:export_torch_trt", extra="trt", fp16=True,
               fp16_default=True, profile=True, timing_cache=True, log=True),
        Target("torchscript", ".ts", "torchscript:export_torchscript"),
        Target("exported-program", ".pt2", "torchscript:export_exported_program"),
    )
}  # fmt: skip
