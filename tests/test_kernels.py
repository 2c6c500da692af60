"""Custom kernels against their torch references, the nvcc check of the CUDA sources, the
dispatch rule, and the opt-in TTA speed paths (compiled step, fast histogram matching).

Every kernel output is poisoned (NaN, or two different byte patterns for uint8) before the call,
so an element a kernel forgets to write fails the comparison. The Triton kernels run in a
subprocess under TRITON_INTERPRET=1 (Triton's CPU interpreter); the CUDA tests (marker ``gpu``)
run where torch sees a GPU.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from reblur_deploy import kernels
from reblur_deploy.errors import ConfigError, NotAvailableError
from reblur_deploy.histmatch import (
    HIST_BINS,
    TOLERANCE,
    _match_binned_torch,
    match_histograms,
    match_histograms_binned,
    match_histograms_fast,
)
from reblur_deploy.io import read_image
from reblur_deploy.kernels import _ext
from reblur_deploy.models import build
from reblur_deploy.tta import TestTimeAdapter, TTAConfig

from .conftest import REPO, randomized

CUDA = torch.cuda.is_available()
SIZES = [
    ((1, 3, 17, 9), (1, 3, 5, 31)),
    ((2, 3, 64, 80), (2, 3, 64, 80)),
    ((3, 1, 1, 1), (3, 1, 3, 7)),
    # 18 planes: beyond what the CPU kernel keeps scratch memory for (it frees it afterwards,
    # and the next, smaller call allocates afresh)
    ((6, 3, 20, 24), (6, 3, 16, 16)),
]


@pytest.fixture(scope="module")
def ext():
    if not _ext.load_extension():
        pytest.fail(f"the C++ extension must build here: {_ext.extension_error()}")
    return torch.ops.reblur_ext


def random_pair(shapes, kind: str, seed: int, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if kind == "uint8":
        a, b = (torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in shapes)
    else:
        a, b = torch.rand(shapes[0], generator=g), torch.rand(shapes[1], generator=g) ** 2
        if kind == "8-bit levels":
            a, b = (torch.round(x * 255) / 255 for x in (a, b))
        elif kind == "signed, ties":
            a, b = torch.round(a * 40 - 20) / 7, b - 0.5  # negative values, -0.0, repeats
            a[..., :1] = -0.0
    return a.to(device), b.to(device)


def kernel_call(ext, source, reference, bins=HIST_BINS, refine_above=None):
    """The raw operator on P×N planes, with the output poisoned first (twice for uint8)."""
    src = source.reshape(source.shape[0] * source.shape[1], -1).contiguous()
    ref = reference.reshape(src.shape[0], -1).contiguous()
    poisons = [float("nan")] if src.is_floating_point() else [0xAB, 0x5C]
    results = []
    for poison in poisons:
        out = torch.full_like(src, poison)
        bound = ext.hist_match_out(src, ref, bins, out, refine_above)
        results.append((out, bound))
    if len(results) == 2:
        assert torch.equal(results[0][0], results[1][0]), "some output element was not written"
    return results[0][0].view(source.shape), results[0][1]


@pytest.mark.parametrize("kind", ["float", "8-bit levels", "uint8", "signed, ties"])
@pytest.mark.parametrize("shapes", SIZES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_cpu_kernel_equals_its_torch_reference(ext, shapes, kind):
    source, reference = random_pair(shapes, kind, seed=zlib.crc32(repr((shapes, kind)).encode()))
    ours, bound = kernel_call(ext, source, reference)
    planes = source.shape[0] * source.shape[1]
    expected, expected_bound = _match_binned_torch(
        source.reshape(planes, -1), reference.reshape(planes, -1), HIST_BINS
    )
    assert torch.equal(ours, expected.view(source.shape))  # bit for bit, NaN-poisoned output
    assert torch.equal(bound, expected_bound)


@pytest.mark.parametrize("kind", ["8-bit levels", "uint8"])
@pytest.mark.parametrize("shapes", SIZES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_exact_on_8_bit_data(ext, shapes, kind):
    """uint8 planes are exact as they are. 8-bit levels stored as floats are exact once
    refined, which the public function asks for: their values fill few bins, and each bin holds
    one level, which then maps exactly."""
    source, reference = random_pair(shapes, kind, seed=7)
    exact = match_histograms(source, reference, exact=True)
    for refine_above in (0.0, TOLERANCE):
        ours, bound = kernel_call(ext, source, reference, refine_above=refine_above)
        assert torch.equal(ours, exact)
        assert (bound == 0).all()
    assert torch.equal(match_histograms_fast(source, reference), exact)
    plain, bound = kernel_call(ext, source, reference)  # not refined
    if kind == "uint8":
        assert torch.equal(plain, exact) and (bound == 0).all()
    else:
        error = (plain - exact).abs().flatten(2).amax(2).flatten()
        assert (error <= bound + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_constant_source_planes_map_exactly(ext, dtype):
    """A constant plane holds one value in its one bin: every pixel maps to the reference's
    top quantile, bound 0, in the kernel and its torch reference alike."""
    source = torch.full((1, 2, 30, 40), 77, dtype=dtype)
    reference = torch.randint(0, 256, (1, 2, 20, 20), generator=torch.Generator().manual_seed(1))
    reference = reference.to(dtype)
    ours, bound = kernel_call(ext, source, reference)
    assert torch.equal(ours, match_histograms(source, reference, exact=True))
    assert (bound == 0).all()
    expected, _ = _match_binned_torch(source.reshape(2, -1), reference.reshape(2, -1), HIST_BINS)
    assert torch.equal(ours, expected.view(source.shape))


@pytest.mark.parametrize("bins", [256, 1024, 65536])
def test_the_bound_holds_for_any_bin_count(ext, bins):
    for seed in range(3):
        source, reference = random_pair(SIZES[1], "float", seed)
        reference = reference**3  # skewed, so that bins are crowded and bounds large
        ours, bound = kernel_call(ext, source, reference, bins)
        error = (ours.double() - match_histograms(source, reference, exact=True).double()).abs()
        assert (error.flatten(2).amax(2).flatten() <= bound + 1e-6).all()


@pytest.fixture(scope="module")
def frames(data_dir):
    blurry = read_image(data_dir / "gopro" / "blur" / "blur_03.png")
    sharp = read_image(data_dir / "gopro" / "sharp" / "sharp_03.png")
    return blurry, sharp


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def test_real_frames_tta_like_within_the_stated_bound_without_fallback(ext, frames):
    """TTA's case: the adapted output LN (sharper, float) matched to the initial output L0
    (float, like a network's output), on real GOPRO frames."""
    import cv2

    for frame in frames:  # 1280×720, the size the default bin count is chosen for
        initial = cv2.GaussianBlur(frame.astype(np.float32) / 255, (0, 0), 0.7)
        detail = initial - cv2.GaussianBlur(initial, (0, 0), 1.0)
        noise = np.random.default_rng(0).normal(0, 0.001, initial.shape).astype(np.float32)
        source, reference = to_tensor(initial + 0.3 * detail + noise), to_tensor(initial)
        _, bound = match_histograms_binned(source, reference)
        assert (bound <= TOLERANCE).all()  # so no plane falls back to the exact path
        fast = match_histograms_fast(source, reference)
        assert (fast - match_histograms(source, reference, exact=True)).abs().max() <= 0.2 / 255
    crops = [to_tensor(f[:360, :640]) for f in frames]  # 8-bit frames: exact
    assert torch.equal(match_histograms_fast(*crops), match_histograms(*crops))


def test_sparse_tail_bins_are_mapped_at_their_exact_quantiles(ext, frames):
    """A few pixels in a histogram's sparse tails (as TTA's unclamped outputs have: a couple of
    pixels per bin, straddling gaps in the reference's values) give bins whose binned bound
    exceeds the tolerance. The CPU kernel maps just those bins' pixels at their exact
    quantiles instead of sending the whole plane to the exact path (a bin's lowest and highest
    pixels already get theirs; those in between move)."""
    frame = frames[0][:360, :640].astype(np.float32) / 255
    rng = np.random.default_rng(5)
    source = frame + rng.normal(0, 0.004, frame.shape).astype(np.float32)
    reference = frame.copy()
    # three pixels (the same in every channel) in one bin at each end of the source, unevenly
    # spaced; the reference's three lowest and highest values far apart
    source[0, :3] = np.array([-0.07, -0.06999, -0.0699])[:, None]
    source[-1, -3:] = np.array([1.1999, 1.19999, 1.2])[:, None]
    reference[0, :3] = np.array([-0.06, -0.03, 0.0])[:, None]
    reference[-1, -3:] = np.array([1.02, 1.08, 1.15])[:, None]
    source, reference = to_tensor(source), to_tensor(reference)
    plain, before = match_histograms_binned(source, reference)
    assert before.max() > TOLERANCE  # a plane that would fall back whole
    refined, after = match_histograms_binned(source, reference, refine_above=TOLERANCE)
    assert (after <= TOLERANCE).all()
    exact = match_histograms(source, reference, exact=True)
    error = (refined.double() - exact.double()).abs()
    assert (error.flatten(2).amax(2).flatten() <= after + 1e-6).all()
    changed = refined != plain
    assert 0 < int(changed.sum()) < 1000  # only the tails' pixels were mapped again
    assert (error[changed] <= 1e-6).all()  # ...at their exact values
    assert torch.equal(match_histograms_fast(source, reference), refined)


def test_fast_matching_falls_back_to_exact_planes_beyond_the_tolerance(ext):
    g = torch.Generator().manual_seed(3)
    uniform = torch.rand(1, 2, 40, 50, generator=g)
    source = torch.cat([uniform[:, :1] ** 8, uniform[:, 1:]], 1)  # plane 0 very crowded near 0
    reference = torch.rand(1, 2, 30, 30, generator=g)
    _, bound = match_histograms_binned(source, reference, bins=64)
    assert bound[0] > TOLERANCE  # the crowded plane cannot meet the tolerance binned
    fast = match_histograms_fast(source, reference, bins=64)
    exact = match_histograms(source, reference, exact=True)
    assert torch.equal(fast[:, 0], exact[:, 0])  # recomputed exactly
    assert (fast - exact).abs().max() <= TOLERANCE


def test_non_finite_planes_get_an_infinite_bound_and_the_exact_result(ext):
    source, reference = random_pair(SIZES[0], "float", seed=1)
    source[0, 1, 3, 3] = float("inf")
    _, bound = match_histograms_binned(source, reference)
    assert torch.isinf(bound[1]) and torch.isfinite(bound[[0, 2]]).all()
    fast = match_histograms_fast(source, reference)
    assert torch.equal(fast[:, 1], match_histograms(source, reference, exact=True)[:, 1])


def test_other_float_dtypes_are_matched_in_float32(ext):
    source, reference = random_pair(SIZES[1], "8-bit levels", seed=2)
    out = match_histograms_fast(source.half(), reference.half())
    assert out.dtype == torch.float16
    exact = match_histograms(source, reference, exact=True)
    # within the tolerance, plus float16's rounding of values up to 1 (2^-11)
    torch.testing.assert_close(out.float(), exact, atol=TOLERANCE + 2**-11, rtol=0)


# ---------------------------------------------------------------------------------------------
# dispatch


def test_dispatch_forced_paths_and_bad_values(ext, monkeypatch, caplog):
    cpu = torch.device("cpu")
    monkeypatch.setenv(kernels.ENV, "torch")
    assert kernels.histmatch_impl(cpu) == "torch"
    monkeypatch.setenv(kernels.ENV, "ext")
    assert kernels.histmatch_impl(cpu) == "ext"
    monkeypatch.setenv(kernels.ENV, "triton,torch")  # no triton histogram matching: torch
    assert kernels.histmatch_impl(cpu) == "torch"
    if not CUDA:
        with pytest.raises(NotAvailableError, match="triton"):
            monkeypatch.setenv(kernels.ENV, "triton")
            kernels.resblock_impl(cpu, torch.float32)
    monkeypatch.setenv(kernels.ENV, "fastest")
    with pytest.raises(ConfigError, match="REBLUR_KERNELS"):
        kernels.histmatch_impl(cpu)
    monkeypatch.delenv(kernels.ENV)
    with caplog.at_level(logging.INFO, logger="reblur_deploy.kernels"):
        kernels._logged.clear()
        for _ in range(3):
            assert kernels.histmatch_impl(cpu) == "ext"
            assert kernels.resblock_impl(cpu, torch.float32) == "torch"  # opt-in only
    assert sum("histogram matching on cpu" in r.message for r in caplog.records) == 1
    assert sum("fused ResBlock on cpu" in r.message for r in caplog.records) == 1


DISABLED = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from reblur_deploy import kernels
from reblur_deploy.histmatch import match_histograms_fast, match_histograms_binned
a, b = torch.rand(1, 3, 9, 7), torch.rand(1, 3, 5, 5)
print("impl", kernels.histmatch_impl(torch.device("cpu")))
same = torch.equal(match_histograms_fast(a, b), match_histograms_fast(a, b, implementation="torch"))
print("same", same)
try:
    match_histograms_binned(a, b, implementation="ext")
except Exception as e:
    print("ext:", type(e).__name__)
"""


def test_dispatch_falls_back_to_torch_when_the_extension_cannot_build(tmp_path):
    env = {**os.environ, "REBLUR_CPP_EXT": str(tmp_path / "no-sources")}
    env.pop(kernels.ENV, None)
    run = subprocess.run([sys.executable, "-c", DISABLED], env=env, capture_output=True,
                         text=True, cwd=REPO, check=True)  # fmt: skip
    assert "impl torch" in run.stdout and "same True" in run.stdout, run.stdout + run.stderr
    assert "ext: NotAvailableError" in run.stdout
    assert "C++ extension unavailable" in run.stdout + run.stderr  # said once, with the reason
    forced = subprocess.run([sys.executable, "-c", DISABLED], cwd=REPO, capture_output=True,
                            text=True, env={**env, kernels.ENV: "ext"})  # fmt: skip
    assert forced.returncode != 0 and "NotAvailableError" in forced.stderr


# ---------------------------------------------------------------------------------------------
# CUDA sources: compiled with nvcc against torch's headers wherever nvcc exists


def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


@pytest.mark.skipif(_ext.find_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", sorted(_ext.source_dir().glob("*.cu")), ids=lambda p: p.name)
def test_cuda_sources_compile_with_nvcc(source, tmp_path):
    """Syntax and type errors in the CUDA kernels cannot land: every .cu file is compiled (not
    linked) for sm_80 and sm_90. A success is remembered under the user cache, keyed by the
    sources, nvcc and torch, so CI compiles each version of the sources once."""
    digest = hashlib.sha256(_nvcc_version(_ext.find_nvcc()).encode() + torch.__version__.encode())
    for path in sorted(_ext.source_dir().glob("*")):
        if path.suffix in (".cu", ".cpp", ".h", ".cuh"):
            digest.update(path.name.encode() + path.read_bytes())
    stamp = _ext.cache_root().parent / "nvcc-check" / f"{source.stem}-{digest.hexdigest()[:16]}"
    if stamp.is_file():
        return
    result = _ext.nvcc_compile(source, tmp_path, archs=("sm_80", "sm_90"))
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-6000:]}"
    assert (tmp_path / f"{source.stem}.o").stat().st_size > 0
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(" ".join(_ext.nvcc_command(source, tmp_path / "x.o", tmp_path)))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["float", "8-bit levels", "uint8", "signed, ties"])
def test_cuda_kernel_equals_the_cpu_kernel_and_the_torch_reference(ext, kind):
    assert kernels.ext_available(torch.device("cuda"))[0], kernels.ext_available("cuda")[1]
    for shapes in [*SIZES, ((2, 3, 720, 1280), (2, 3, 360, 641))]:
        source, reference = random_pair(shapes, kind, seed=5)
        gpu, gpu_bound = kernel_call(ext, source.cuda(), reference.cuda())
        cpu, cpu_bound = kernel_call(ext, source, reference)
        assert torch.equal(gpu.cpu(), cpu) and torch.equal(gpu_bound.cpu(), cpu_bound)
        if kind == "uint8":
            assert torch.equal(gpu.cpu(), match_histograms(source, reference, exact=True))


# ---------------------------------------------------------------------------------------------
# fused ResBlock (Triton), in the interpreter

TRITON_CHECK = """
import json, sys, torch
from reblur_deploy.kernels import resblock as rb
from reblur_deploy.models import build
results = {}
torch.manual_seed(0)
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
CASES = [
    ((1, 16, 7, 9), torch.float32),
    ((1, 16, 7, 9), torch.float16),
    ((2, 32, 5, 3), torch.bfloat16),
]
for (n, c, h, w), dtype in CASES:
    if True:
        tol = TOL[dtype]
        x = torch.randn(n, c, h, w).to(dtype)
        w1, w2 = ((torch.randn(c, c, 5, 5) * 0.05).to(dtype) for _ in range(2))
        b1, b2 = ((torch.randn(c) * 0.1).to(dtype) for _ in range(2))
        g = torch.randn(n, c, h, w).to(dtype)
        xr = x.float().clone().requires_grad_()
        ref = rb.reference_resblock(xr, w1.float(), b1.float(), w2.float(), b2.float())
        ref.backward(g.float())
        scale = ref.abs().max().item()
        out = torch.full((n, h, w, c), float("nan"), dtype=dtype).permute(0, 3, 1, 2)
        rb.forward_into(x, w1, b1, w2, b2, out)
        dx = torch.full((n, h, w, c), float("nan"), dtype=dtype).permute(0, 3, 1, 2)
        rb.backward_input_into(x, g, w1, b1, w2, dx)
        function = 0.0
        if (n, h, dtype) == (1, 7, torch.float32):  # the autograd.Function runs the same kernels
            xf = x.detach().clone().requires_grad_()
            rb.FusedResBlock5.apply(xf, w1, b1, w2, b2).backward(g)
            function = (xf.grad.float() - dx.float()).abs().max().item()
        key = f"{n}x{c}x{h}x{w} {str(dtype)[6:]}"
        results[key] = {
            "forward": (out.float() - ref).abs().max().item() / scale,
            "backward": (dx.float() - xr.grad).abs().max().item() / xr.grad.abs().max().item(),
            "function": function,
            "finite": bool(torch.isfinite(out).all() and torch.isfinite(dx).all()),
            "tol": tol,
        }
# weight gradients (not fused) equal autograd's
x = torch.randn(1, 16, 6, 5)
params = [torch.randn(16, 16, 5, 5) * 0.05, torch.randn(16) * 0.1,
          torch.randn(16, 16, 5, 5) * 0.05, torch.randn(16) * 0.1]
p1 = [p.clone().requires_grad_() for p in params]
p2 = [p.clone().requires_grad_() for p in params]
rb.FusedResBlock5.apply(x, *p1).square().sum().backward()
rb.reference_resblock(x, *p2).square().sum().backward()
results["weights"] = max((a.grad - b.grad).abs().max().item() for a, b in zip(p1, p2))
# a whole MR through the context manager: output and input gradient as eager
mr = build("reblur", n_blocks=2, width=16)
torch.nn.init.normal_(mr.tail.weight, std=0.05)
mr.requires_grad_(False)
x = torch.rand(1, 3, 10, 13)
xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
ya = mr(xa); ya.abs().sum().backward()
with rb.fused_resblocks(mr) as count:
    yb = mr(xb); yb.abs().sum().backward()
results["mr"] = {"blocks": count, "out": (ya - yb).abs().max().item(),
                 "grad": (xa.grad - xb.grad).abs().max().item(),
                 "restored": "forward" not in vars(mr.body[0])}
print(json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fused_resblock_equals_the_reference_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True,
                         text=True, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    mr, weights = results.pop("mr"), results.pop("weights")
    for key, r in results.items():
        assert r["finite"], f"{key}: an output element was not written"
        assert r["forward"] <= r["tol"] and r["backward"] <= r["tol"], (key, r)
        assert r["function"] == 0, key
    assert weights < 1e-4
    assert mr["blocks"] == 2 and mr["restored"]
    assert mr["out"] < 1e-5 and mr["grad"] < 1e-5


# ---------------------------------------------------------------------------------------------
# TTA speed options


@pytest.fixture
def models():
    torch.manual_seed(0)
    md = randomized(build("unet", widths=(8, 12, 16), n_blocks=1))
    mr = randomized(build("reblur", n_blocks=1, width=16), seed=1)
    return md, mr


def close_after_matching(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within float32 noise, except where that noise swapped the ranks of two nearly equal
    pixels or tied them (exact histogram matching turns either into a jump to a neighbouring
    value): nearly every pixel, and nearly every sorted value per plane, agree to 2e-5."""
    sorted_a, sorted_b = a.flatten(2).sort().values, b.flatten(2).sort().values
    return bool(
        ((sorted_a - sorted_b).abs() > 2e-5).float().mean() < 0.005
        and ((a - b).abs() > 2e-5).float().mean() < 0.005
        and (a - b).abs().max() < 1e-2
    )


@pytest.mark.slow
def test_compiled_tta_step_equals_the_eager_step_and_compiles_once_per_shape(models):
    md, mr = models
    frames = torch.rand(2, 3, 32, 44, generator=torch.Generator().manual_seed(0))
    md_eager, md_compiled = copy.deepcopy(md), copy.deepcopy(md)
    options = {"steps": 3, "lr": 1e-3, "carry": 1}  # carry-over keeps the adapted weights
    eager = TestTimeAdapter(md_eager, mr, TTAConfig(**options))
    compiled = TestTimeAdapter(md_compiled, mr, TTAConfig(**options, compile=True))
    from torch._dynamo.utils import counters

    for i, frame in enumerate(frames[:, None]):
        expected, out = eager(frame), compiled(frame)
        if i == 0:
            graphs = counters["stats"]["unique_graphs"]
        else:  # the second frame, same size: the graphs of the first are reused
            assert counters["stats"]["unique_graphs"] == graphs
        with torch.no_grad():  # the adapted networks agree to float32 noise
            torch.testing.assert_close(md_compiled(frames), md_eager(frames), atol=1e-5, rtol=1e-5)
        assert close_after_matching(out.image, expected.image)
        for a, b in zip(out.stats.losses, expected.stats.losses, strict=True):
            assert a == pytest.approx(b, rel=1e-4)
    compiled.reset()
    assert all(torch.equal(v, md.state_dict()[k]) for k, v in md_compiled.state_dict().items())


def test_fast_histogram_matching_option_in_tta(models):
    md, mr = models
    frame = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    exact = TestTimeAdapter(md, mr, TTAConfig(steps=2, lr=1e-3))(frame).image
    fast = TestTimeAdapter(md, mr, TTAConfig(steps=2, lr=1e-3, histmatch="fast"))(frame).image
    assert (fast - exact).abs().max() <= TOLERANCE
    with pytest.raises(ConfigError, match="histmatch"):
        TTAConfig(histmatch="approximate")


def test_fused_option_without_a_gpu_keeps_the_torch_path(models, monkeypatch):
    if CUDA:
        pytest.skip("on a GPU the fused path runs (test_fused_resblock_on_cuda)")
    monkeypatch.delenv(kernels.ENV, raising=False)
    md, mr = models
    frame = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    plain = TestTimeAdapter(md, mr, TTAConfig(steps=1, lr=1e-3))(frame).image
    fused = TestTimeAdapter(md, mr, TTAConfig(steps=1, lr=1e-3, fused=True))(frame).image
    assert torch.equal(plain, fused)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_resblock_on_cuda(dtype):
    from reblur_deploy.kernels import resblock as rb

    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False
    for n, c, h, w in [(1, 64, 67, 131), (2, 64, 33, 17), (1, 64, 256, 256)]:
        x = torch.randn(n, c, h, w, device="cuda").to(dtype)
        w1, w2 = ((torch.randn(c, c, 5, 5, device="cuda") * 0.02).to(dtype) for _ in range(2))
        b1, b2 = ((torch.randn(c, device="cuda") * 0.1).to(dtype) for _ in range(2))
        g = torch.randn_like(x)
        xr = x.float().clone().requires_grad_()
        ref = rb.reference_resblock(xr, w1.float(), b1.float(), w2.float(), b2.float())
        ref.backward(g.float())
        out = torch.full_like(x, float("nan"), memory_format=torch.channels_last)
        dx = torch.full_like(x, float("nan"), memory_format=torch.channels_last)
        rb.forward_into(x, w1, b1, w2, b2, out)
        rb.backward_input_into(x, g, w1, b1, w2, dx)
        tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
        assert (out.float() - ref).abs().max() <= tol * ref.abs().max()
        assert (dx.float() - xr.grad).abs().max() <= tol * xr.grad.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_compiled_bf16_fused_tta_on_cuda_matches_eager():
    md = randomized(build("unet", widths=(16, 24, 32), n_blocks=2)).cuda()
    mr = randomized(build("reblur", n_blocks=2), seed=1).cuda()
    frame = torch.rand(1, 3, 128, 160, device="cuda", generator=None)
    bf16 = TTAConfig(steps=5, lr=1e-4, amp_dtype=torch.bfloat16)
    eager = TestTimeAdapter(md, mr, bf16)(frame).image
    options = {"compile": True, "fused": True, "amp_dtype": torch.bfloat16, "histmatch": "fast"}
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=5, lr=1e-4, **options))
    for _ in range(2):  # the second call replays the CUDA graphs
        out = adapter(frame).image
        assert (out - eager).abs().max() < 2e-2  # bf16 forward passes


LOOKUP_RUN = """
import sys, torch
from reblur_deploy import kernels
from reblur_deploy.histmatch import match_histograms_binned
g = torch.Generator().manual_seed(0)
source, reference = torch.rand(2, 3, 97, 211, generator=g), torch.rand(2, 3, 90, 200, generator=g)
out, _ = match_histograms_binned(source ** 0.7, reference ** 2, implementation="ext")
torch.save(out, sys.argv[1])
print(kernels.histmatch_lookup())
"""


def test_each_lookup_variant_the_cpu_runs_gives_the_same_bits(ext, tmp_path):
    """The lookup is picked by measured speed per CPU: every candidate must agree bit for bit,
    and forcing one (REBLUR_HISTMATCH_LUT) must run that one where the CPU can."""
    from reblur_deploy.device import cpu_flags

    def lookup(forced: str) -> tuple[str, torch.Tensor]:
        env = {**os.environ, "REBLUR_HISTMATCH_LUT": forced}
        path = tmp_path / f"{forced or 'measured'}.pt"
        command = [sys.executable, "-c", LOOKUP_RUN, str(path)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return done.stdout.split()[-1], torch.load(path)

    flags = cpu_flags().split()
    supported = {"portable": True, "avx2": "avx2" in flags, "avx512": "avx512f" in flags}
    measured, expected = lookup("")
    assert supported.get(measured), measured
    for name, runs_here in supported.items():
        chosen, out = lookup(name)
        assert chosen == (name if runs_here else measured)
        assert torch.equal(out, expected), name
