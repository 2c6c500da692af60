import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reblur_deploy import ConfigError, Deblurrer, InputError, WeightsError, save_weights
from reblur_deploy.io import read_image
from reblur_deploy.models import build


@pytest.fixture(scope="module")
def gopro(data_dir):
    return read_image(data_dir / "gopro" / "blur" / "461_blur.png")


def test_real_gopro_frame_keeps_shape_dtype_and_range(gopro, small_unet, tmp_path):
    path = save_weights(tmp_path / "w.safetensors", {"deblur": small_unet})
    out = Deblurrer(str(path), device="cpu")(gopro)
    assert gopro.shape == (720, 1280, 3)
    assert out.shape == gopro.shape and out.dtype == np.uint8
    assert 0 < np.abs(out.astype(int) - gopro).mean() < 40  # the network did something bounded


def test_conversion_padding_and_cropping_are_lossless(gopro):
    # An untrained network is the identity: any loss would come from the pipeline itself.
    crop = gopro[:301, :467]
    assert np.array_equal(Deblurrer({"deblur": build("unet")}, device="cpu")(crop), crop)


def test_padding_is_reflect_then_crop(small_unet):
    x = torch.rand(2, 3, 37, 53)
    expected = small_unet(F.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :37, :53].clamp(0, 1)
    out = Deblurrer({"deblur": small_unet}, device="cpu")(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_tensor_in_tensor_out_keeps_dtype(small_unet):
    x = torch.rand(3, 3, 16, 24, dtype=torch.float64)
    out = Deblurrer({"deblur": small_unet}, device="cpu", batch_size=2)(x)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def test_a_batch_equals_its_images_one_by_one(small_unet):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 30, 3), dtype=np.uint8) for _ in range(3)]
    images.insert(1, rng.integers(0, 256, (17, 9, 3), dtype=np.uint8))  # another size
    deblurrer = Deblurrer({"deblur": small_unet}, device="cpu", batch_size=2)
    batch = deblurrer(images)
    assert [b.shape for b in batch] == [i.shape for i in images]
    for image, out in zip(images, batch, strict=True):
        assert np.abs(deblurrer(image).astype(int) - out).max() <= 1


def test_sixteen_bit_gray_and_rgba_keep_their_format(gopro, small_unet):
    identity = Deblurrer({"deblur": build("unet")}, device="cpu")
    deblurrer = Deblurrer({"deblur": small_unet}, device="cpu")
    rgb16 = gopro[:40, :50].astype(np.uint16) * 257 + 3
    assert np.array_equal(identity(rgb16), rgb16)  # 16-bit precision is kept end to end
    assert deblurrer(rgb16).dtype == np.uint16
    gray = gopro[:40, :50, 1]
    assert deblurrer(gray).shape == (40, 50) and np.array_equal(identity(gray), gray)
    assert deblurrer(gray[..., None]).shape == (40, 50, 1)
    rgba = np.dstack([gopro[:40, :50], np.arange(2000, dtype=np.uint8).reshape(40, 50)])
    out = deblurrer(rgba)
    assert out.shape == (40, 50, 4) and np.array_equal(out[..., 3], rgba[..., 3])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "unsupported array dtype float32"),
        (np.zeros((8, 8, 5), np.uint8), "got shape"),
        (np.zeros((0, 8, 3), np.uint8), "empty image"),
        (torch.zeros(1, 1, 8, 8), "N×3×H×W"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float tensor"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.full((1, 3, 8, 8), 255.0), r"divide 8-bit values by 255"),
        (torch.zeros(0, 3, 8, 8), "empty tensor"),
        ("image.png", "expected a numpy image"),
    ],
)
def test_bad_inputs_get_clear_errors(small_unet, bad, message):
    with pytest.raises(InputError, match=message):
        Deblurrer({"deblur": small_unet}, device="cpu")(bad)


def test_bad_options_get_clear_errors(small_unet, small_reblur):
    modules = {"deblur": small_unet, "reblur": small_reblur}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            Deblurrer(modules, device="cuda")
    with pytest.raises(ConfigError, match="dtype"):
        Deblurrer(modules, dtype="int8")
    with pytest.raises(ConfigError, match="weights must be"):
        Deblurrer(42)
    with pytest.raises(WeightsError, match="needs a reblurring module"):
        Deblurrer({"deblur": small_unet}, tta_steps=5)
    with pytest.raises(ConfigError, match="tta_steps"):
        Deblurrer(modules, tta_steps=-1)


def test_a_diverged_network_never_leaks_nan_pixels(small_unet):
    with torch.no_grad():
        small_unet.tail.bias.fill_(float("nan"))
    with pytest.raises(InputError, match="NaN"):
        Deblurrer({"deblur": small_unet}, device="cpu")(np.zeros((8, 8, 3), np.uint8))


def test_bf16_compute_stays_close_to_fp32(gopro, small_unet):
    crop = gopro[:64, :64]
    fp32 = Deblurrer({"deblur": small_unet}, device="cpu")(crop).astype(int)
    bf16 = Deblurrer({"deblur": small_unet}, device="cpu", dtype="bf16")(crop).astype(int)
    assert small_unet.head.weight.dtype == torch.float32  # autocast; weights stay fp32 for TTA
    assert np.abs(bf16 - fp32).max() <= 4 and not np.array_equal(bf16, fp32)


def test_backends_agree_on_a_real_image(gopro, small_unet):
    x = torch.from_numpy(gopro[:130, :250]).permute(2, 0, 1)[None].float() / 255
    eager = Deblurrer({"deblur": small_unet}, device="cpu")(x)
    ort = Deblurrer({"deblur": small_unet}, device="cpu", backend="onnxruntime")
    assert ort.backend.frozen and (ort(x) - eager).abs().max() <= 1e-4
