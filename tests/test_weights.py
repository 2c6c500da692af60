import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from reblur_deploy import ConfigError, WeightsError, load_weights, save_weights
from reblur_deploy.models import build
from reblur_deploy.weights import BUNDLED, META_KEY

from .conftest import randomized


def test_round_trip_is_bit_exact_and_keeps_metadata(tmp_path, small_unet, small_reblur):
    provenance = {"command": "python -m train.main ...", "iterations": 12, "metrics": {"psnr": 1.5}}
    path = save_weights(
        tmp_path / "pair.safetensors",
        {"deblur": small_unet, "reblur": small_reblur},
        {"provenance": provenance},
    )
    loaded = load_weights(path)
    for original, restored in ((small_unet, loaded.deblur), (small_reblur, loaded.reblur)):
        assert type(restored) is type(original) and restored.config == original.config
        a, b = original.state_dict(), restored.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    meta = loaded.metadata
    assert meta["provenance"] == provenance
    assert meta["modules"]["deblur"] == {"arch": "unet", "config": small_unet.config}
    assert (meta["value_range"], meta["color_order"], meta["size_divisor"]) == ([0, 1], "RGB", 4)
    assert len(loaded.sha256) == 64 and not loaded.deblur.training
    assert [p.name for p in tmp_path.iterdir()] == ["pair.safetensors"]  # no temporary left


def test_paper_sized_pair_round_trip(tmp_path):
    md, mr = randomized(build("unet")), randomized(build("reblur"))
    loaded = load_weights(save_weights(tmp_path / "w.safetensors", {"deblur": md, "reblur": mr}))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.deblur(x), md(x)) and torch.equal(loaded.reblur(x), mr(x))


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path, small_unet, small_reblur):
    modules = {"deblur": small_unet, "reblur": small_reblur}
    full = save_weights(tmp_path / "fp32.safetensors", modules)
    half = save_weights(tmp_path / "fp16.safetensors", modules, storage_dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_weights(half)
    for original, restored in ((small_unet, loaded.deblur), (small_reblur, loaded.reblur)):
        a, b = original.state_dict(), restored.state_dict()
        assert all(b[k].dtype == torch.float32 for k in b)
        assert all(torch.equal(b[k], a[k].half().float()) for k in a)
    small_unet.head.bias.data[0] = 1e6  # beyond float16: refused rather than stored as inf
    with pytest.raises(ConfigError, match=r"head\.bias has values beyond float16"):
        save_weights(tmp_path / "inf.safetensors", modules, storage_dtype=torch.float16)


@pytest.mark.parametrize("signature", [b"\x80", b"PK"])
def test_a_header_length_that_looks_like_a_pickle_or_zip_still_loads(
    tmp_path, small_unet, signature
):
    path = tmp_path / "w.safetensors"
    target = int.from_bytes(signature, "little")  # header lengths ≡ target mod 256**len
    pad = 0
    for _ in range(2):  # the second pass corrects for JSON overhead of the padding itself
        save_weights(path, {"deblur": small_unet}, {"pad": "x" * pad})
        length = struct.unpack("<Q", path.read_bytes()[:8])[0]
        pad += (target - length) % 256 ** len(signature)
    assert path.read_bytes()[: len(signature)] == signature
    assert load_weights(path).deblur.config == small_unet.config


def test_deblur_only_file(tmp_path, small_unet):
    loaded = load_weights(save_weights(tmp_path / "md.safetensors", {"deblur": small_unet}))
    assert loaded.reblur is None


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_files_are_refused_without_running_them(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": _Exploit(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightsError, match="never unpickles"):
        load_weights(path)
    assert not marker.exists()


def test_exported_models_given_as_weights_are_named_with_the_option_that_takes_them(tmp_path):
    scripted = torch.jit.script(torch.nn.Conv2d(3, 3, 1))
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    with pytest.raises(WeightsError, match=r"is a TorchScript program.*--onnx an ONNX file"):
        load_weights(tmp_path / "model.pt")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX header
    with pytest.raises(WeightsError, match="pass it with --onnx, not --weights"):
        load_weights(tmp_path / "model.onnx")


def _rewrite_metadata(src, dst, change):
    """Copy a weight file with its architecture description edited (tensors unchanged)."""
    loaded = load_weights(src)
    tensors = {f"deblur.{k}": v for k, v in loaded.deblur.state_dict().items()}
    meta = loaded.metadata
    change(meta)
    save_file(tensors, str(dst), metadata={META_KEY: json.dumps(meta)})
    return dst


def test_tensors_that_do_not_fit_the_architecture_name_the_first_mismatch(tmp_path, small_unet):
    good = save_weights(tmp_path / "good.safetensors", {"deblur": small_unet})

    def more_blocks(meta):
        meta["modules"]["deblur"]["config"]["n_blocks"] = 3

    def wider(meta):
        meta["modules"]["deblur"]["config"]["widths"] = [8, 12, 20]

    def fewer_blocks(meta):
        meta["modules"]["deblur"]["config"]["n_blocks"] = 1

    cases = [
        (more_blocks, r"deblur\.body\.2\.body\.0\.weight is missing"),
        (
            wider,
            r"deblur\.down2\.weight has shape \(16, 12, 3, 3\), unet .* needs \(20, 12, 3, 3\)",
        ),
        (fewer_blocks, r"deblur\.body\.1\.body\.0\.bias is not a parameter"),
    ]
    for change, message in cases:
        with pytest.raises(WeightsError, match=message):
            load_weights(_rewrite_metadata(good, tmp_path / "bad.safetensors", change))


def test_unusable_files_get_clear_errors(tmp_path, small_unet, monkeypatch):
    with pytest.raises(WeightsError, match="no weight file"):
        load_weights(tmp_path / "missing.safetensors")
    monkeypatch.setitem(BUNDLED, "unet-next", "a name this release knows but does not ship")
    with pytest.raises(WeightsError, match=r"'unet-next' .* is not included in this release"):
        load_weights("unet-next")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not weights")
    with pytest.raises(WeightsError, match="not a safetensors"):
        load_weights(junk)
    good = save_weights(tmp_path / "good.safetensors", {"deblur": small_unet}).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match=r"truncated|cannot read"):
        load_weights(truncated)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(WeightsError, match="not written by save_weights"):
        load_weights(bare)
    unknown = _rewrite_metadata(
        tmp_path / "good.safetensors",
        tmp_path / "unknown.safetensors",
        lambda m: m["modules"]["deblur"].update(arch="resnet"),
    )
    with pytest.raises(WeightsError, match="unknown model 'resnet'"):
        load_weights(unknown)


def test_weight_files_get_ordinary_permissions(tmp_path, small_unet):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = save_weights(tmp_path / "w.safetensors", {"deblur": small_unet})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
