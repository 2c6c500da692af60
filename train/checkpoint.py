"""Training checkpoints: one safetensors file, tensors plus a JSON state; no pickles.

``<out>/checkpoints/iter_00001000.safetensors`` holds

* tensors: ``md.<key>``, ``mr.<key>``, ``disc.<key>`` (state dicts of the networks) and
  ``opt_md.state.<param index>.<name>`` (Adam's ``exp_avg``, ``exp_avg_sq`` and its ``step``
  counter, a 0-d tensor), likewise ``opt_mr`` and ``opt_disc``;
* one metadata entry ``reblur_train`` (JSON): format, iteration, the full training config,
  the optimizers' ``param_groups`` (lr, betas, eps, ...), the GradScaler state (scale, growth
  tracker), the best validation figure so far, and the RNG states of every process: Python's
  ``random`` (a list of ints), NumPy's legacy global generator (a list), torch's CPU and CUDA
  generators (their byte states in base64).

Nothing is saved with ``torch.save`` and nothing is unpickled when loading: safetensors holds
only raw tensors and the rest is JSON, so a checkpoint from elsewhere cannot run code. The
file is written under a temporary name in the same folder and renamed when complete, so a
crash (or a kill) while saving never leaves a truncated checkpoint under the final name.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reblur_deploy.atomic import atomic_path
from reblur_deploy.errors import ConfigError, WeightsError

META_KEY = "reblur_train"
FORMAT = 1
NAME = re.compile(r"^iter_(\d+)\.safetensors$")


def checkpoint_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | os.PathLike, iteration: int) -> Path:
    return checkpoint_dir(out) / f"iter_{iteration:08d}.safetensors"


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """(iteration, path) of the complete checkpoints in ``out``, oldest first."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(resume: str, out: str | os.PathLike) -> Path:
    """``--resume auto`` → the newest checkpoint in ``out``; otherwise the file given."""
    if resume == "auto":
        found = list_checkpoints(out)
        if not found:
            raise ConfigError(f"--resume: no checkpoint in {checkpoint_dir(out)} to resume from")
        return found[-1][1]
    path = Path(resume)
    if path.is_dir():  # a run folder
        return find_checkpoint("auto", path)
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint file {path}")
    return path


# ------------------------------------------------------------------------- file format


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write tensors + JSON state atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = json.dumps({"format": FORMAT, **state}, allow_nan=True)
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata={META_KEY: meta})
    return path


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON state of a checkpoint (never unpickles)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types
        raise WeightsError(f"cannot read checkpoint {path}: {e}") from None
    if raw is None:
        raise WeightsError(f"{path} is not a training checkpoint (no {META_KEY!r} metadata)")
    state = json.loads(raw)
    if state.get("format", 0) > FORMAT:
        raise WeightsError(f"{path}: checkpoint format {state['format']} is newer than this code")
    return tensors, state


# ------------------------------------------------------------------------ module state


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    start = prefix + "."
    state = {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"checkpoint does not fit the {prefix} network: {e}") from None


def optimizer_state(
    prefix: str, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors and JSON (tuples become lists)."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = json.loads(json.dumps(state_dict["param_groups"]))
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(
    prefix: str,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    saved: dict[str, Any],
) -> None:
    state: dict[int, dict[str, Any]] = {}
    start = prefix + ".state."
    for key, value in tensors.items():
        if key.startswith(start):
            index, name = key[len(start) :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entry in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = saved["param_groups"]
    for group in groups:  # JSON turned tuples into lists
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise WeightsError(f"checkpoint does not fit the {prefix} optimizer: {e}") from None


# --------------------------------------------------------------------------------- RNG


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    """This process's RNG states as JSON-able values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        for index in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(_unb64(saved[index]), index)


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """Only the JSON state of a checkpoint (no tensors are read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:
        raise WeightsError(f"cannot read checkpoint {path}: {e}") from None
    if raw is None:
        raise WeightsError(f"{path} is not a training checkpoint (no {META_KEY!r} metadata)")
    return json.loads(raw)
