"""What every exporter shares: loading the module, describing it, writing files atomically."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from reblur_deploy import __version__
from reblur_deploy.atomic import atomic_path
from reblur_deploy.errors import ConfigError, WeightsError
from reblur_deploy.models import name_of
from reblur_deploy.weights import LoadedWeights, load_weights

from .verify import Check

ROLES = ("deblur", "reblur")
PADDING = (
    "pad H and W at the bottom/right to multiples of size_divisor (reflect) before the network "
    "and crop the output back; the graph does not pad"
)
Log = Callable[[str], None]


@dataclass
class ExportResult:
    """What an exporter wrote and how well it matched PyTorch."""

    path: Path
    format: str
    precision: str
    tolerance: float
    checks: list[Check]
    details: dict[str, str] = field(default_factory=dict)  # exporter, opset, sidecar, ...

    def summary(self) -> str:
        extras = ", ".join(f"{k} {v}" for k, v in self.details.items())
        return (
            f"wrote {self.path} ({self.format}, {self.precision}{', ' + extras if extras else ''})"
        )


def load_module(weights, role: str = "deblur") -> tuple[nn.Module, LoadedWeights]:
    """The module of ``role`` from a weight file, a bundled name or ``load_weights(...)``."""
    if role not in ROLES:
        raise ConfigError(f"--module must be one of {', '.join(ROLES)}, got {role!r}")
    loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    module = getattr(loaded, role)
    if module is None:
        raise WeightsError(f"{loaded.path or 'the weights'} hold no {role} module")
    return module.eval(), loaded


def describe(module: nn.Module, loaded: LoadedWeights, role: str, precision: str) -> dict:
    """The facts a deployment needs, as strings (ONNX metadata props, JSON sidecars, extras)."""
    return {
        "architecture": name_of(module),
        "config": json.dumps(getattr(module, "config", {}), sort_keys=True),
        "role": role,
        "size_divisor": str(int(getattr(module, "size_divisor", 1))),
        "value_range": "[0, 1]",
        "color_order": "RGB",
        "layout": "NCHW",
        "input_name": "input",
        "output_name": "output",
        "io_dtype": "float32",
        "precision": precision,
        "padding": PADDING,
        "output_clamp": "none: clamp the output to [0, 1]",
        "weights_sha256": loaded.sha256 or "",
        "weights_file": loaded.path.name if loaded.path else "",
        "package_version": __version__,
    }


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, inputs: tuple = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` when the
    block succeeds, delete it when it raises. Refuses to overwrite one of ``inputs``."""
    path = Path(path)
    for source in inputs:
        if source is not None and path.exists() and path.resolve() == Path(source).resolve():
            raise ConfigError(f"refusing to overwrite the input {path} with the export")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name with -o")
    with atomic_path(path) as tmp:
        yield tmp
