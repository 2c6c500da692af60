"""Weight files: safetensors tensors plus one JSON metadata entry; never unpickles.

A file holds one deblurring module (role ``deblur``) and optionally its reblurring module
(role ``reblur``). Tensor names are ``<role>.<state-dict key>``. The safetensors metadata has a
single entry, ``reblur_deploy``, whose JSON value says how to rebuild each module and what the
networks expect::

    {"format": 1, "package_version": "0.1.0",
     "modules": {"deblur": {"arch": "unet", "config": {...}}, "reblur": {"arch": "reblur", ...}},
     "value_range": [0, 1], "color_order": "RGB", "size_divisor": 4,
     "provenance": {"command": ..., "data": ..., "iterations": ..., "metrics": {...}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .atomic import atomic_path
from .errors import ConfigError, WeightsError
from .models import build, name_of

FORMAT_VERSION = 1
META_KEY = "reblur_deploy"
ROLES = ("deblur", "reblur")
ASSETS = Path(__file__).parent / "assets" / "weights"

# Bundled models by name (filled by the bundled-weights work; a missing file says so clearly).
BUNDLED: dict[str, str] = {
    "unet-reblur": "the paper's U-Net (Table A) with MR n=2, trained with L1 + L_Reblur",
    "unet-lite": "a narrow U-Net with its MR, sized for CPUs",
    "unet-lite-l1": "the narrow U-Net trained with L1 only, for comparisons (no MR)",
}


@dataclass
class LoadedWeights:
    """What ``load_weights`` returns: built modules (in eval mode) and the file's metadata."""

    deblur: nn.Module
    reblur: nn.Module | None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None


def bundled_path(name: str) -> Path:
    """The file of a bundled model, or a clear error if this build does not ship it."""
    path = ASSETS / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"bundled model {name!r} ({BUNDLED[name]}) is not included in this release; "
            "pass a trained weight file with --weights PATH (train one with python -m train.main)"
        )
    return path


def resolve(weights: str | os.PathLike) -> Path:
    """A path for a weight file path or a bundled model name."""
    if isinstance(weights, str) and weights in BUNDLED:
        return bundled_path(weights)
    path = Path(weights).expanduser()
    if not path.is_file():
        names = ", ".join(BUNDLED)
        raise WeightsError(f"no weight file {str(path)!r} (bundled model names: {names})")
    return path


def save_weights(
    path: str | os.PathLike,
    modules: dict[str, nn.Module | None],
    metadata: dict[str, Any] | None = None,
    storage_dtype: torch.dtype | None = None,
) -> Path:
    """Write ``{"deblur": md, "reblur": mr}`` (``reblur`` optional) to a safetensors file.

    ``metadata`` (JSON-serialisable) is stored beside the architecture description; put the
    provenance (command, data, iterations, metrics) under ``"provenance"``. The file is written
    under a temporary name and renamed, so a crash never leaves a truncated file behind.
    ``storage_dtype=torch.float16`` halves the file (used for the bundled weights); the modules
    are rebuilt in float32 when loaded, whatever the storage.
    """
    unknown = set(modules) - set(ROLES)
    if unknown or modules.get("deblur") is None:
        raise ConfigError(
            f"modules must be {{'deblur': md, 'reblur': mr or None}}, got {sorted(modules)}"
        )
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    for role in ROLES:
        module = modules.get(role)
        if module is None:
            continue
        described[role] = {"arch": name_of(module), "config": module.config}
        for key, value in module.state_dict().items():
            tensors[f"{role}.{key}"] = _stored(value.detach().to("cpu"), storage_dtype, key)
    meta = {
        "format": FORMAT_VERSION,
        "package_version": __version__,
        "modules": described,
        "value_range": [0, 1],
        "color_order": "RGB",
        "size_divisor": modules["deblur"].size_divisor,
        **(metadata or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def _stored(value: torch.Tensor, dtype: torch.dtype | None, key: str) -> torch.Tensor:
    if dtype is None or not value.is_floating_point():
        return value.contiguous()
    if dtype == torch.float16 and value.abs().max() > torch.finfo(torch.float16).max:
        raise ConfigError(f"{key} has values beyond float16's range; store it as float32")
    return value.to(dtype).contiguous()


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file before any parser sees it."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        # Only now look for zip/pickle signatures: a safetensors header length may itself
        # start with the bytes 0x80 or "PK".
        if head[:2] == b"PK" and _is_torchscript(path):
            raise WeightsError(
                f"{path} is a TorchScript program (reblur-export --to torchscript writes them "
                "for the C++ program); --weights takes a safetensors weight file, --onnx an "
                "ONNX file and --engine a TensorRT engine"
            )
        if path.suffix.lower() in (".onnx", ".engine", ".plan"):
            option = "--onnx" if path.suffix.lower() == ".onnx" else "--engine"
            raise WeightsError(f"{path} is an exported model: pass it with {option}, not --weights")
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise WeightsError(
                f"{path} is a pickle-based PyTorch checkpoint; reblur-deploy never unpickles "
                "weight files (they can run code). Re-save its tensors as safetensors with "
                "save_weights"
            )
        raise WeightsError(f"{path} is not a safetensors weight file")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > path.stat().st_size - 8:
        raise WeightsError(f"{path} is truncated or corrupt (header longer than the file)")


def _is_torchscript(path: Path) -> bool:
    """A zip whose archive holds TorchScript's code/ folder (torch.jit.save's layout)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_weights(weights: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedWeights:
    """Load a weight file (path or bundled model name) into built modules in eval mode."""
    path = resolve(weights)
    _check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = (f.metadata() or {}).get(META_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own types for corrupt files
        raise WeightsError(f"cannot read {path}: {e}") from None
    if raw_meta is None:
        raise WeightsError(
            f"{path} has no {META_KEY!r} metadata; it was not written by save_weights"
        )
    meta = json.loads(raw_meta)
    if meta.get("format", 0) > FORMAT_VERSION:
        raise WeightsError(f"{path} has format {meta['format']}; upgrade reblur-deploy to read it")

    modules: dict[str, nn.Module | None] = {"deblur": None, "reblur": None}
    for role, spec in meta.get("modules", {}).items():
        if role not in ROLES:
            raise WeightsError(f"{path}: unknown module role {role!r}")
        try:
            module = build(spec["arch"], **spec.get("config", {}))
        except (ConfigError, KeyError) as e:
            raise WeightsError(f"{path}: cannot build the {role} module: {e}") from None
        prefix = f"{role}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        _check_fits(path, role, module, state)
        module.load_state_dict(state, strict=True)
        modules[role] = module.to(device).eval()
    leftover = [k for k in tensors if k.split(".", 1)[0] not in meta.get("modules", {})]
    if leftover:
        raise WeightsError(f"{path}: tensor {leftover[0]!r} belongs to no declared module")
    if modules["deblur"] is None:
        raise WeightsError(f"{path} holds no deblurring module")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedWeights(modules["deblur"], modules["reblur"], meta, path, digest)


def _check_fits(path: Path, role: str, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Name the first tensor that does not fit the declared architecture."""
    expected = module.state_dict()
    arch = f"{name_of(module)} {module.config}"
    for key, value in expected.items():
        if key not in state:
            raise WeightsError(f"{path}: {role}.{key} is missing for {arch}")
        if state[key].shape != value.shape:
            raise WeightsError(
                f"{path}: {role}.{key} has shape {tuple(state[key].shape)}, "
                f"{arch} needs {tuple(value.shape)}"
            )
    for key in state:
        if key not in expected:
            raise WeightsError(f"{path}: {role}.{key} is not a parameter of {arch}")
