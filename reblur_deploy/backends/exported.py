"""Which model an exported file holds, and whether it is the one the caller asked for.

``reblur-export`` labels every file with the facts of ``export._common.describe``: the module's
``role`` (``deblur`` or ``reblur``), its architecture and the sha256 of the weight file it came
from (ONNX metadata props; the JSON sidecar of a TensorRT engine). Running a file checks them,
so a reblurring module or another model's export is refused instead of silently run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ConfigError
from ..weights import ASSETS, BUNDLED

ROLE_NAMES = {"deblur": "deblurring", "reblur": "reblurring"}


def onnx_metadata(path: str | os.PathLike) -> dict:
    """The metadata props of an ONNX file ({} when it has none)."""
    try:
        import onnx
    except ImportError:  # onnxruntime alone can read them too, at the cost of a session
        from .ort import import_onnxruntime

        session = import_onnxruntime().InferenceSession(str(path))
        return dict(session.get_modelmeta().custom_metadata_map)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises protobuf's own errors for a damaged file
        raise ConfigError(f"{path} is not a readable ONNX file: {e}") from None
    return {prop.key: prop.value for prop in model.metadata_props}


def exported_metadata(onnx_file: str | None = None, engine_file: str | None = None) -> dict:
    """The metadata of ``--onnx`` or ``--engine`` (whichever is given)."""
    if onnx_file:
        if not Path(onnx_file).is_file():
            raise ConfigError(f"no ONNX model {onnx_file!r}")
        return onnx_metadata(onnx_file)
    from .trt import read_sidecar

    return read_sidecar(engine_file) if engine_file else {}


def bundled_source(metadata: dict) -> str | None:
    """The bundled model whose weight file an export came from (by sha256), if any."""
    digest = metadata.get("weights_sha256")
    for name in BUNDLED if digest else ():
        path = ASSETS / f"{name}.safetensors"
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return name
    return None


def origin(metadata: dict) -> str:
    """Where an export came from, for messages: the bundled name, else the weight file's."""
    name = bundled_source(metadata)
    if name:
        return f"the bundled model {name!r}"
    if metadata.get("weights_file"):
        digest = metadata.get("weights_sha256", "")
        return f"{metadata['weights_file']}" + (f" (sha256 {digest[:12]}…)" if digest else "")
    return "weights it does not name (no reblur-deploy metadata)"


def check_exported(metadata: dict, source: str, weights_sha256: str | None, weights: str) -> None:
    """Refuse an export of the reblurring module, or of weights other than ``weights``.

    ``source`` names the exported file in messages; ``weights_sha256`` is the hash of the weight
    file in use (None: nothing to compare). Files without these labels pass unchecked.
    """
    role = metadata.get("role", "deblur")
    if role != "deblur":
        raise ConfigError(
            f"{source} holds the {ROLE_NAMES.get(role, role)} module (exported with --module "
            f"{role}), not a deblurring one; export with --module deblur (the default)"
        )
    digest = metadata.get("weights_sha256")
    if digest and weights_sha256 and digest != weights_sha256:
        raise ConfigError(
            f"{source} was exported from {origin(metadata)}, not from {weights}; pass the "
            "weights it came from with --weights, or export these weights"
        )
