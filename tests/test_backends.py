"""Backends behind one interface: real eager, torch.compile and ONNX Runtime runs on the CPU;
ONNX Runtime's CUDA provider and TensorRT on a GPU (marker ``gpu``, skipped elsewhere)."""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from reblur_deploy import ConfigError, Deblurrer, InputError, ReblurError
from reblur_deploy.backends import AUTO_TOLERANCE, available_backends, create_backend
from reblur_deploy.backends.graphs import onnx_model
from reblur_deploy.device import cpu_name
from reblur_deploy.models import build

from .conftest import randomized

HAVE_CUDA = torch.cuda.is_available()
CPU = f"{cpu_name()}, {torch.get_num_threads()} threads"  # how auto's measurements are kept
SHAPES = [(1, 3, 32, 48), (3, 3, 48, 32)]  # two sizes, two batch sizes


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return randomized(build("unet", widths=(8, 12, 16), n_blocks=2))


@pytest.fixture(scope="module")
def ort_fp32(unet):
    return create_backend("onnxruntime", unet, "cpu")


def eager_output(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module.to(x.device)(x)


def test_cpu_backends_in_auto_order():
    names = available_backends("cpu")
    assert names[:2] == ["onnxruntime", "eager"] and "tensorrt" not in names


def test_auto_on_cpu_picks_the_engine_measured_faster_here(unet, cache):
    backend = create_backend("auto", copy.deepcopy(unet), "cpu")
    (verdict,) = cache.glob("*.json")
    faster = json.loads(verdict.read_text())["onnxruntime_faster"][CPU]
    assert backend.name == ("onnxruntime" if faster else "eager")
    assert backend.device == torch.device("cpu") and backend.dtype == torch.float32
    assert backend.size_divisor == 4 and backend.max_batch is None


@pytest.mark.parametrize("shape", SHAPES)
def test_onnxruntime_matches_eager(unet, ort_fp32, shape):
    x = torch.rand(*shape)
    out = ort_fp32.infer(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert (out - eager_output(unet, x)).abs().max().item() <= 1e-4


def test_onnxruntime_fp16_keeps_float32_io(unet):
    backend = create_backend("onnxruntime", unet, "cpu", dtype="fp16")
    assert backend.dtype == torch.float16
    for shape in SHAPES:
        x = torch.rand(*shape)
        out = backend.infer(x)
        assert out.dtype == torch.float32
        assert (out - eager_output(unet, x)).abs().max().item() <= 2e-2


def test_onnxruntime_runs_an_onnx_file_alone(unet, tmp_path):
    proto, _ = onnx_model(unet)
    onnx.helper.set_model_props(proto, {"size_divisor": "4", "precision": "fp32"})
    path = tmp_path / "unet.onnx"
    onnx.save_model(proto, str(path))
    backend = create_backend("onnxruntime", None, "cpu", model=path, threads=1)
    assert backend.module is None and backend.size_divisor == 4
    x = torch.rand(2, 3, 16, 24)
    assert (backend.infer(x) - eager_output(unet, x)).abs().max().item() <= 1e-4


def test_eager_is_not_frozen_and_runs_the_adapted_module():
    module = randomized(build("unet", widths=(4, 4, 4), n_blocks=1))
    backend = create_backend("eager", module, "cpu")
    assert backend.name == "eager" and not backend.frozen and backend.module is module
    x = torch.rand(2, 3, 16, 16)
    before = backend.infer(x)
    assert torch.equal(before, eager_output(module, x))
    with torch.no_grad():  # what a test-time adaptation step does to the weights
        module.tail.bias.add_(0.1)
    assert (backend.infer(x) - before).abs().max().item() > 0.05


def test_large_batches_are_split(ort_fp32, unet):
    backend = create_backend("eager", unet, "cpu", max_batch=2)
    x = torch.rand(5, 3, 16, 20)
    assert torch.allclose(backend.infer(x), eager_output(unet, x), atol=1e-6)
    assert backend.max_batch == 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(1, 3, 30, 32), "multiples of 4"),
        (torch.rand(3, 32, 32), "N×3×H×W"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_unusable_input_is_refused_clearly(ort_fp32, bad, message):
    with pytest.raises(InputError, match=message):
        ort_fp32.infer(bad)


def test_bad_names_options_and_devices(unet):
    with pytest.raises(ConfigError, match="unknown backend"):
        create_backend("fastest", unet, "cpu")
    with pytest.raises(ConfigError, match="takes no option engine"):
        create_backend("eager", unet, "cpu", engine="x.engine")
    with pytest.raises(ConfigError, match="not bf16"):
        create_backend("onnxruntime", unet, "cpu", dtype="bf16")
    with pytest.raises(ReblurError, match=r"(?i)tensorrt"):
        create_backend("tensorrt", unet, "cpu")


def test_auto_runs_eager_for_what_onnxruntime_cannot_run(unet):
    module = copy.deepcopy(unet)  # the eager backend casts its module in place
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an expected choice, not a fault: no warning
        backend = create_backend("auto", module, "cpu", dtype="bf16")
    assert backend.name == "eager" and backend.dtype == torch.bfloat16
    assert next(module.parameters()).dtype == torch.float32  # autocast; weights stay fp32


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REBLUR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


def measured(cache: Path, faster: bool) -> None:
    """Set the cached verdict of the one graph in ``cache``: whether ONNX Runtime runs faster
    than eager on this CPU (as if measured so)."""
    (verdict,) = cache.glob("*.json")
    found = json.loads(verdict.read_text())
    verdict.write_text(json.dumps({**found, "onnxruntime_faster": {CPU: faster}}))


def test_auto_exports_the_graph_once_and_reuses_it(unet, cache):
    create_backend("auto", copy.deepcopy(unet), "cpu")
    (graph,) = cache.glob("*.onnx")
    checked = json.loads(graph.with_suffix(".json").read_text())["max_abs_difference"]
    assert 0 <= checked <= AUTO_TOLERANCE
    stamp = graph.stat().st_mtime_ns
    measured(cache, True)
    second = create_backend("auto", unet, "cpu")
    assert second.name == "onnxruntime" and second.frozen and second.module is unet
    assert second.source == str(graph) and graph.stat().st_mtime_ns == stamp
    assert "CPUExecutionProvider" in second.describe()
    x = torch.rand(1, 3, 32, 48)
    assert (second.infer(x) - eager_output(unet, x)).abs().max().item() <= 1e-4
    measured(cache, False)
    assert create_backend("auto", copy.deepcopy(unet), "cpu").name == "eager"
    other = randomized(build("unet", widths=(8, 12, 16), n_blocks=2), seed=1)
    create_backend("auto", other, "cpu")
    assert len(list(cache.glob("*.onnx"))) == 2  # other weights, another graph


def test_auto_without_a_writable_cache_still_runs(unet, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("REBLUR_CACHE_DIR", str(blocker / "cache"))  # cannot become a folder
    backend = create_backend("auto", copy.deepcopy(unet), "cpu")
    assert backend.name in ("onnxruntime", "eager")  # measured in memory, nothing written
    assert blocker.read_text() == ""


def test_auto_keeps_eager_when_onnxruntime_differs_from_it(unet, cache):
    create_backend("auto", copy.deepcopy(unet), "cpu")
    measured(cache, True)
    (verdict,) = cache.glob("*.json")
    found = json.loads(verdict.read_text())
    verdict.write_text(json.dumps({**found, "max_abs_difference": 2 / 255}))  # as if measured
    with pytest.warns(UserWarning, match="differs from torch by 2.00/255"):
        backend = create_backend("auto", copy.deepcopy(unet), "cpu")
    assert backend.name == "eager"


def test_auto_measures_again_over_a_damaged_record(unet, cache):
    create_backend("auto", copy.deepcopy(unet), "cpu")
    (verdict,) = cache.glob("*.json")
    verdict.write_text('{"max_abs_diff')  # cut short
    assert create_backend("auto", copy.deepcopy(unet), "cpu").name in ("onnxruntime", "eager")
    assert json.loads(verdict.read_text())["max_abs_difference"] <= AUTO_TOLERANCE


def test_deblurrer_defaults_to_the_fastest_exact_engine(cache):
    modules = {"deblur": randomized(build("unet", widths=(8, 12, 16), n_blocks=2)),
               "reblur": randomized(build("reblur", n_blocks=1, width=8))}  # fmt: skip
    Deblurrer(copy.deepcopy(modules))
    measured(cache, True)
    assert Deblurrer(copy.deepcopy(modules)).backend.name == "onnxruntime"
    assert Deblurrer(copy.deepcopy(modules), tta_steps=1).backend.name == "eager"  # TTA
    # a memory budget: the planner's estimates are eager PyTorch's (ONNX Runtime keeps an arena)
    assert Deblurrer(copy.deepcopy(modules), max_memory="1G").backend.name == "eager"
    measured(cache, False)
    assert Deblurrer(copy.deepcopy(modules)).backend.name == "eager"


def test_eager_runs_channels_last_on_a_cpu_within_rounding_of_nchw(unet):
    module = copy.deepcopy(unet)
    backend = create_backend("eager", module, "cpu")
    assert module.head.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 48)
    assert (backend.infer(x) - eager_output(unet, x)).abs().max().item() <= 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile
def test_compiled_backend_matches_eager():
    module = randomized(build("reblur", n_blocks=0, width=4))  # a small graph compiles fast
    backend = create_backend("compile", module, "cpu")
    assert backend.name == "compile" and not backend.frozen
    x = torch.rand(2, 3, 16, 24)
    assert (backend.infer(x) - eager_output(module, x)).abs().max().item() <= 1e-5
    # a smaller batch (a video's last) runs padded to the compiled batch: no recompile
    compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert (backend.infer(x[:1]) - eager_output(module, x[:1])).abs().max().item() <= 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiles


# ------------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
def test_onnxruntime_cuda_provider_with_io_binding(unet):
    from reblur_deploy.backends.ort import has_cuda_provider

    if not (HAVE_CUDA and has_cuda_provider()):
        pytest.skip("needs onnxruntime-gpu and a CUDA GPU")
    backend = create_backend("onnxruntime", unet, "cuda")
    assert backend.provider == "CUDAExecutionProvider"
    x = torch.rand(3, 3, 64, 96, device="cuda")
    out = backend.infer(x)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert (out - eager_output(unet, x)).abs().max().item() <= 1e-3  # cuDNN may use TF32


@pytest.mark.gpu
def test_tensorrt_backend_from_module_and_from_engine(unet, tmp_path):
    if importlib.util.find_spec("tensorrt") is None or not HAVE_CUDA:
        pytest.skip("needs tensorrt and a CUDA GPU")
    profile = ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 96, 128))
    backend = create_backend(
        "tensorrt", unet, "cuda", dtype="fp16", profile=profile, timing_cache=tmp_path / "c"
    )
    assert backend.frozen and backend.max_batch == 4 and backend.min_size == (32, 32)
    x = torch.rand(6, 3, 48, 64, device="cuda")  # split into batches of 4 and 2
    out = backend.infer(x)
    assert out.device.type == "cuda" and out.shape == x.shape
    assert (out - eager_output(unet, x)).abs().max().item() <= 2e-2
    with pytest.raises(InputError, match="above the largest size"):
        backend.infer(torch.rand(1, 3, 128, 128, device="cuda"))

    engine = tmp_path / "unet.engine"
    engine.write_bytes(bytes(backend.engine.serialize()))
    auto = create_backend("auto", unet, "cuda", engine=engine)
    assert auto.name == "tensorrt"
    assert (auto.infer(x) - out).abs().max().item() <= 1e-3
