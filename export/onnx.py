"""ONNX export: one self-contained file with dynamic batch, height and width.

The graph comes from the torch.export-based exporter (``torch.onnx.export(dynamo=True)``; the
TorchScript-based exporter only as a fallback, said so in the output and the metadata). It is
saved with its weights inside (no external data file), optionally simplified with onnxsim,
labelled with metadata props (architecture, size_divisor, value range, colour order, weights
hash, package version, precision, ...) and verified before it gets its final name:
``onnx.checker`` and then ONNX Runtime against eager PyTorch on two input shapes.

``fp16=True`` stores float16 weights and computes in float16, but the input and output stay
float32 (the graph casts on entry and exit), so callers keep the same buffers.
"""

from __future__ import annotations

import os

import torch

from reblur_deploy.backends import graphs
from reblur_deploy.backends.ort import import_onnxruntime
from reblur_deploy.errors import ConfigError, DependencyError

from ._common import ExportResult, Log, atomic_output, describe, load_module
from .verify import TOLERANCE, VerificationError, check_shapes, compare, eager_reference


def export_onnx(
    weights,
    out: str | os.PathLike,
    *,
    role: str = "deblur",
    fp16: bool = False,
    opset: int = graphs.DEFAULT_OPSET,
    simplify: bool | None = None,
    tolerance: float | None = None,
    log: Log | None = None,
) -> ExportResult:
    """Export the ``role`` module of ``weights`` to ``out`` (.onnx) and verify it.

    ``simplify``: run onnxsim (None: when it is installed). ``tolerance``: max |Δ| against
    PyTorch (default 1e-4 for fp32, 2e-2 for fp16). Raises ``VerificationError`` (and writes
    nothing) when the file fails the checker or the parity check.
    """
    log = log or (lambda message: None)
    if opset < graphs.MIN_OPSET:
        raise ConfigError(f"--opset must be ≥ {graphs.MIN_OPSET}, got {opset}")
    onnx = graphs.require_onnx()
    ort = import_onnxruntime()
    precision = "fp16" if fp16 else "fp32"
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    module, loaded = load_module(weights, role)

    model, exporter = graphs.onnx_model(module, fp16=fp16, opset=opset)
    if exporter != "torch.export":
        log(f"note: exported with the {exporter} exporter (the torch.export-based one failed)")
    model, simplified = _simplify(model, simplify, log)
    props = {p.key: p.value for p in model.metadata_props}
    props.update(describe(module, loaded, role, precision))
    props.update({"exporter": exporter, "opset": str(opset), "simplified": str(simplified)})
    onnx.helper.set_model_props(model, props)
    model.doc_string = (
        f"reblur-deploy {props['architecture']} ({role}): float32 RGB NCHW in [0, 1] → same; "
        f"H and W multiples of {props['size_divisor']}; {precision} inside"
    )

    with atomic_output(out, (loaded.path,)) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # onnx.checker.ValidationError and shape-inference errors
            raise VerificationError(f"onnx.checker rejects the exported model: {e}") from None
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            (y,) = session.run([graphs.OUTPUT_NAME], {graphs.INPUT_NAME: x.numpy()})
            return torch.from_numpy(y)

        checks = compare(eager_reference(module), run, check_shapes(module.size_divisor), tolerance)
    details = {"opset": str(opset), "exporter": exporter}
    if simplified:
        details["simplified"] = "onnxsim"
    return ExportResult(out, "onnx", precision, tolerance, checks, details)


def _simplify(model, simplify: bool | None, log: Log):
    """onnxsim when asked for (or, with None, when installed); the model and whether it ran."""
    if simplify is False:
        return model, False
    try:
        import onnxsim
    except ImportError:
        if simplify:
            raise DependencyError("--simplify needs onnxsim: pip install onnxsim") from None
        return model, False
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # onnxsim raises plain exceptions for graphs it cannot handle
        log(f"onnxsim failed ({type(e).__name__}: {e}); keeping the exported graph")
        return model, False
    if not ok:
        log("onnxsim could not validate its result; keeping the exported graph")
        return model, False
    return simplified, True
