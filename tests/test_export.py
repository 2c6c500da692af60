"""reblur-export: real exports of every network in the registry, verified in real runtimes.

Networks are built small and randomised (an untrained network is the identity map, which any
broken export would reproduce), exported, and run in ONNX Runtime / TorchScript / torch.export
at two sizes and two batch sizes against eager PyTorch. TensorRT and Torch-TensorRT tests need
the packages and a GPU (marker ``gpu``) and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from reblur_deploy import ConfigError, __version__, load_weights, save_weights
from reblur_deploy.export.cli import main as export_cli
from reblur_deploy.export.onnx import export_onnx
from reblur_deploy.export.torchscript import EXTRA_FILE, export_exported_program, export_torchscript
from reblur_deploy.export.verify import VerificationError
from reblur_deploy.models import MODELS, build
from reblur_deploy.weights import BUNDLED

BIN = Path(sys.executable).parent
DEBLUR_MODELS = sorted(name for name in MODELS if name != "reblur")
SMALL = {
    "unet": {"widths": (8, 12, 16), "n_blocks": 2},
    "srn": {"widths": (8, 8, 12), "n_blocks": 0},  # torch.export of SRN is slow: keep it lean
    "dhn": {"widths": (8, 8, 12), "n_blocks": 0, "n_levels": 2},
    "reblur": {"n_blocks": 1, "width": 8},
}
HAVE_CUDA = torch.cuda.is_available()


def small_config(name: str) -> dict:
    """A fast configuration: the known ones above, else narrow widths and one block (guessed from
    the constructor's keyword names, so a newly registered network is covered too)."""
    if name in SMALL:
        return SMALL[name]
    config = {}
    for p in inspect.signature(MODELS[name]).parameters.values():
        key, default = p.name.lower(), p.default
        if default is inspect.Parameter.empty or isinstance(default, bool):
            continue
        if any(word in key for word in ("width", "channel", "feat")):
            config[p.name] = (
                type(default)(8 for _ in default) if isinstance(default, (list, tuple)) else 8
            )
        elif "block" in key and isinstance(default, int):
            config[p.name] = 1
    return config


def small_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A small network whose zero-initialised output layers are randomised (not the identity)."""
    try:
        model = build(name, **small_config(name))
    except (ConfigError, TypeError, ValueError):
        model = build(name)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0.0, 0.02)
    return model.eval()


def shapes_for(divisor: int) -> list[tuple[int, int, int, int]]:
    """Two sizes and two batch sizes, unlike the exporter's own checks and its trace input."""
    return [(1, 3, 3 * divisor * 4, 5 * divisor * 2), (3, 3, 2 * divisor * 5, 2 * divisor * 3)]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name in DEBLUR_MODELS:
        mr = small_model("reblur", seed=1) if name == "unet" else None
        files[name] = save_weights(
            folder / f"{name}.safetensors", {"deblur": small_model(name), "reblur": mr}
        )
    return files


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["output"], {"input": x.numpy()})[0])


def max_diff_against_eager(module, run, divisor: int) -> float:
    worst = 0.0
    for shape in shapes_for(divisor):
        x = torch.rand(*shape)
        with torch.inference_mode():
            expected = module(x)
        worst = max(worst, (run(x) - expected).abs().max().item())
    return worst


# ---------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", DEBLUR_MODELS)
def test_onnx_export_of_every_deblurring_model(name, weight_files, tmp_path):
    out = tmp_path / f"{name}.onnx"
    result = export_onnx(weight_files[name], out)
    assert len(result.checks) == 2 and all(c.max_abs_diff <= 1e-4 for c in result.checks)
    assert result.details["exporter"] == "torch.export"  # no fallback to the TorchScript exporter
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no external data, no temp

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert dims[1].dim_value == 3
        assert all(dims[i].dim_param and not dims[i].dim_value for i in (0, 2, 3)), dims
    ops = {node.op_type for node in model.graph.node}
    assert "Pad" not in ops  # the caller pads to size_divisor, never the graph

    loaded = load_weights(weight_files[name])
    props = {p.key: p.value for p in model.metadata_props}
    divisor = loaded.deblur.size_divisor
    assert props["architecture"] == name and props["size_divisor"] == str(divisor)
    assert props["value_range"] == "[0, 1]" and props["color_order"] == "RGB"
    assert props["weights_sha256"] == loaded.sha256 and props["package_version"] == __version__
    assert props["precision"] == "fp32" and props["io_dtype"] == "float32"

    assert max_diff_against_eager(loaded.deblur, lambda x: run_onnx(out, x), divisor) <= 1e-4


def test_onnx_fp16_computes_in_half_and_keeps_float32_io(weight_files, tmp_path):
    out = tmp_path / "unet_fp16.onnx"
    result = export_onnx(weight_files["unet"], out, fp16=True)
    assert result.precision == "fp16" and result.tolerance == 2e-2
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"
    module = load_weights(weight_files["unet"]).deblur
    assert max_diff_against_eager(module, lambda x: run_onnx(out, x), 4) <= 2e-2


def test_onnx_export_of_the_reblurring_module(weight_files, tmp_path):
    out = tmp_path / "mr.onnx"
    result = export_onnx(weight_files["unet"], out, role="reblur")
    assert all(c.max_abs_diff <= 1e-4 for c in result.checks)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["architecture"] == "reblur" and props["role"] == "reblur"
    mr = load_weights(weight_files["unet"]).reblur
    x = torch.rand(2, 3, 21, 34)  # MR takes any H and W
    with torch.inference_mode():
        assert (run_onnx(out, x) - mr(x)).abs().max().item() <= 1e-4


def test_failed_verification_writes_nothing(weight_files, tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(VerificationError, match="parity check failed"):
        export_onnx(weight_files["unet"], out_dir / "model.onnx", tolerance=-1.0)
    assert list(out_dir.iterdir()) == []  # neither the final name nor a temporary file


@pytest.mark.skipif(importlib.util.find_spec("onnxsim") is None, reason="onnxsim not installed")
def test_onnxsim_pass_when_installed(weight_files, tmp_path):
    out = tmp_path / "sim.onnx"
    result = export_onnx(weight_files["unet"], out, simplify=True)
    assert result.details.get("simplified") == "onnxsim"
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["simplified"] == "True" and props["architecture"] == "unet"


# ------------------------------------------------------------------ TorchScript, ExportedProgram


# --to NAME → the file's suffix, its exporter, and its loader (which fills ``extra`` with the
# metadata file the exporter wrote beside the graph)
GRAPH_FORMATS = {
    "torchscript": (
        ".ts",
        export_torchscript,
        lambda path, extra: torch.jit.load(str(path), _extra_files=extra),
    ),
    "exported-program": (
        ".pt2",
        export_exported_program,
        lambda path, extra: torch.export.load(str(path), extra_files=extra).module(),
    ),
}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", GRAPH_FORMATS)
@pytest.mark.parametrize("name", DEBLUR_MODELS)
def test_graph_export_parity(name, fmt, weight_files, tmp_path):
    suffix, export, load = GRAPH_FORMATS[fmt]
    out = tmp_path / f"{name}{suffix}"
    result = export(weight_files[name], out)
    assert all(c.max_abs_diff <= 1e-4 for c in result.checks)
    extra = {EXTRA_FILE: ""}
    graph = load(out, extra)
    meta = json.loads(extra[EXTRA_FILE])
    assert meta["architecture"] == name
    assert meta["size_divisor"] == str(MODELS[name].size_divisor)
    module = load_weights(weight_files[name]).deblur
    assert max_diff_against_eager(module, graph, module.size_divisor) <= 1e-4


# ----------------------------------------------------------------------------------------- CLI


def _console_export(target: str, weights, out: Path) -> subprocess.CompletedProcess:
    """The installed reblur-export, run as a user runs it."""
    command = [BIN / "reblur-export", "--to", target, "--weights", weights, "-o", out]
    return subprocess.run(command, capture_output=True, text=True)


def test_console_script_exports_onnx_and_prints_parity(weight_files, tmp_path):
    out = tmp_path / "model.onnx"
    result = _console_export("onnx", weight_files["unet"], out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("max |Δ|") == 2 and f"wrote {out}" in result.stdout
    assert out.is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and HAVE_CUDA, reason="TensorRT can run here"
)
def test_trt_without_tensorrt_or_gpu_says_what_to_install(weight_files, tmp_path):
    out = tmp_path / "model.engine"
    result = _console_export("trt", weight_files["unet"], out)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "pip install" in result.stderr
    assert "tensorrt" in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is not None and HAVE_CUDA,
    reason="Torch-TensorRT can run here",
)
def test_torch_trt_without_package_or_gpu_says_what_to_install(weight_files, tmp_path):
    out = tmp_path / "model.ep"
    args = ["--to", "torch-trt", "--weights", str(weight_files["unet"]), "-o", str(out)]
    result = CliRunner().invoke(export_cli, args)
    assert (
        result.exit_code == 1
        and "pip install" in result.output
        and "torch-tensorrt" in result.output
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--to", "torchscript", "--dtype", "fp16"], "--dtype fp16 applies to"),
        (["--to", "onnx", "--opset", "13"], "--opset must be ≥ 17"),
        (["--to", "onnx", "--max-shape", "4x3x64x64"], "apply to trt and torch-trt only"),
        (["--to", "onnx", "--weights", "unet-next"], "not included in this release"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(args, message, weight_files, tmp_path, monkeypatch):
    monkeypatch.setitem(BUNDLED, "unet-next", "a name this release knows but does not ship")
    if "--weights" not in args:
        args = [*args, "--weights", str(weight_files["unet"])]
    result = CliRunner().invoke(export_cli, [*args, "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_each_target_takes_the_options_of_its_row_and_refuses_the_others():
    """One table row per target: --to's choices, the fp16 default, what each takes."""
    from reblur_deploy.export.formats import OPTIONS, TARGETS

    to = next(p for p in export_cli.params if p.name == "target")
    assert tuple(to.type.choices) == tuple(TARGETS)
    assert {n for n, t in TARGETS.items() if t.fp16_default} == {"trt", "torch-trt"}
    given = {"opset": 18, "simplify": False, "profile": PROFILE, "timing_cache": "c"}
    for target in TARGETS.values():
        for key in OPTIONS:
            fp16, options = key == "fp16", {k: None for k in given}
            options.update({key: given[key]} if key in given else {})
            if getattr(target, key):
                target.check(fp16, options)
            else:
                with pytest.raises(ConfigError, match=f"only, not {target.name}$"):
                    target.check(fp16, options)
        target.check(False, {k: None for k in given})  # fp32 and no options: every target


def test_cli_never_overwrites_the_weights(weight_files):
    path = str(weight_files["unet"])
    result = CliRunner().invoke(export_cli, ["--to", "onnx", "--weights", path, "-o", path])
    assert result.exit_code == 1 and "refusing to overwrite" in result.output
    assert load_weights(path).deblur is not None


# ------------------------------------------------------------------------- TensorRT (GPU only)

PROFILE = ((1, 3, 32, 32), (2, 3, 64, 96), (4, 3, 128, 128))


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "fp32"])
def test_tensorrt_engine_export(fp16, weight_files, tmp_path):
    if importlib.util.find_spec("tensorrt") is None or not HAVE_CUDA:
        pytest.skip("needs tensorrt and a CUDA GPU")
    from reblur_deploy.backends import create_backend
    from reblur_deploy.export.tensorrt import export_tensorrt

    out, cache = tmp_path / "unet.engine", tmp_path / "timing.cache"
    result = export_tensorrt(
        weight_files["unet"], out, fp16=fp16, profile=PROFILE, timing_cache=cache
    )
    assert all(c.max_abs_diff <= (2e-2 if fp16 else 1e-4) for c in result.checks)
    assert out.is_file() and cache.is_file()
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["profile"] == {
        "min": [1, 3, 32, 32],
        "opt": [2, 3, 64, 96],
        "max": [4, 3, 128, 128],
    }
    assert sidecar["precision"] == ("fp16" if fp16 else "fp32")
    assert {"tensorrt_version", "cuda_version", "gpu"} <= set(sidecar)

    backend = create_backend("tensorrt", None, "cuda", engine=out)
    assert backend.frozen and backend.max_batch == 4 and backend.max_size == (128, 128)
    module = load_weights(weight_files["unet"]).deblur.cuda()
    x = torch.rand(3, 3, 48, 80, device="cuda")
    with torch.inference_mode():
        assert (backend.infer(x) - module(x)).abs().max().item() <= (2e-2 if fp16 else 1e-3)


@pytest.mark.gpu
def test_torch_tensorrt_export(weight_files, tmp_path):
    if importlib.util.find_spec("torch_tensorrt") is None or not HAVE_CUDA:
        pytest.skip("needs torch-tensorrt and a CUDA GPU")
    import torch_tensorrt

    from reblur_deploy.export.torch_trt import export_torch_trt

    out = tmp_path / "unet.ep"
    result = export_torch_trt(
        weight_files["unet"], out, profile=PROFILE, timing_cache=tmp_path / "t"
    )
    assert all(c.max_abs_diff <= 2e-2 for c in result.checks)
    reloaded = torch_tensorrt.load(str(out)).module()
    module = load_weights(weight_files["unet"]).deblur.cuda()
    x = torch.rand(3, 3, 48, 80, device="cuda")
    with torch.inference_mode():
        assert (reloaded(x) - module(x)).abs().max().item() <= 2e-2
    assert np.isfinite(reloaded(x).cpu().numpy()).all()


def test_cli_refuses_an_existing_file_before_work_unless_overwrite(weight_files, tmp_path):
    out = tmp_path / "x.onnx"
    out.write_bytes(b"an earlier export")
    args = ["--to", "onnx", "--weights", str(weight_files["unet"]), "-o", str(out)]
    refused = CliRunner().invoke(export_cli, args)
    assert refused.exit_code == 1 and "use --overwrite" in refused.output
    assert out.read_bytes() == b"an earlier export" and "parity" not in refused.output
    replaced = CliRunner().invoke(export_cli, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert run_onnx(out, torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_cli_refuses_an_unwritable_place_before_work(weight_files, tmp_path):
    (tmp_path / "notes.txt").write_text("a file where the folder would be")
    for out, message in [
        (tmp_path / "notes.txt" / "x.onnx", "is not a writable folder"),
        (tmp_path / ("n" * 260 + ".onnx"), "file names hold at most 255"),
    ]:
        args = ["--to", "onnx", "--weights", str(weight_files["unet"]), "-o", str(out)]
        refused = CliRunner().invoke(export_cli, args)
        assert refused.exit_code == 1 and message in refused.output, refused.output
        assert "exporting" not in refused.output.lower() and "parity" not in refused.output
