"""PSNR, SSIM, NIQE and LPIPS on the real GOPRO pairs of ../shared/data."""

import json
import pickle

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from reblur_deploy import InputError, WeightsError
from reblur_deploy.io import read_image
from reblur_deploy.metrics import lpips, niqe, psnr, ssim
from reblur_deploy.metrics.lpips import (
    BACKBONE_ENV,
    BACKBONE_FILE,
    CHANNELS,
    LPIPS,
    AlexNetFeatures,
    find_backbone,
    load_backbone,
    load_heads,
    scale_input,
    to_tensor,
)
from reblur_deploy.metrics.niqe import imresize, resize_matrix, rgb_to_y

NAMES = ["461", "00", "01", "02", "03", "04", "05"]


def gopro_paths(data_dir, name):
    if name == "461":
        return data_dir / "gopro/blur/461_blur.png", data_dir / "gopro/sharp/461_sharp.png"
    return data_dir / f"gopro/blur/blur_{name}.png", data_dir / f"gopro/sharp/sharp_{name}.png"


@pytest.fixture(scope="module")
def gopro(data_dir):
    return {n: tuple(read_image(p) for p in gopro_paths(data_dir, n)) for n in NAMES}


# ---------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_equals_skimage_and_the_data_readme(gopro):
    values = {}
    for name, (blur, sharp) in gopro.items():
        values[name] = psnr(blur, sharp)
        assert values[name] == pytest.approx(
            peak_signal_noise_ratio(sharp, blur, data_range=255), abs=1e-12
        )
    assert values["461"] == pytest.approx(23.83, abs=0.005)
    assert min(values.values()) == pytest.approx(20.28, abs=0.005)
    assert max(values.values()) == pytest.approx(25.01, abs=0.005)
    # The data README's "mean 22.68 dB" is the mean of the six blur_0i pairs; with 461 it is 22.84.
    assert np.mean([v for n, v in values.items() if n != "461"]) == pytest.approx(22.68, abs=0.005)
    assert np.mean(list(values.values())) == pytest.approx(22.84, abs=0.005)


def test_ssim_is_the_channel_mean_of_skimage_with_the_gaussian_settings(gopro):
    for name in ("461", "05"):
        blur, sharp = gopro[name]
        per_channel = [
            structural_similarity(
                blur[..., c],
                sharp[..., c],
                data_range=255,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for c in range(3)
        ]
        assert ssim(blur, sharp) == pytest.approx(np.mean(per_channel), abs=1e-12)
    assert ssim(sharp, sharp) == pytest.approx(1.0)


def test_psnr_ssim_inputs(gopro):
    blur, sharp = gopro["461"]
    assert psnr(sharp, sharp) == float("inf")
    wide = blur.astype(np.uint16) * 257  # 16-bit images are measured at 8 bits
    assert psnr(wide, sharp) == psnr(blur, sharp)
    with pytest.raises(InputError, match="differ in shape"):
        psnr(blur[:-1], sharp)
    with pytest.raises(InputError, match="8-bit"):
        ssim(blur / 255.0, sharp)


# ---------------------------------------------------------------------------------- NIQE


def test_niqe_matches_the_reference_on_every_listed_image(data_dir):
    reference = json.loads((data_dir / "reference/niqe_basicsr.json").read_text())
    assert len(reference) == 18
    deviation = {
        name: abs(niqe(read_image(data_dir / name)) - value) for name, value in reference.items()
    }
    worst = max(deviation, key=deviation.get)
    assert deviation[worst] < 0.01, f"{worst}: off by {deviation[worst]:.4f}"


def test_niqe_is_lower_for_each_sharp_frame_than_for_its_blurry_partner(gopro):
    for name, (blur, sharp) in gopro.items():
        assert niqe(sharp) < niqe(blur) - 1.0, name


def test_y_channel_is_matlab_rgb2ycbcr_on_uint8():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]])
    assert rgb_to_y(colours.astype(np.uint8)).tolist() == [[16, 235, 81, 145, 41]]


def test_matlab_bicubic_half_size_with_antialiasing():
    m = resize_matrix(96, 48, 0.5).toarray()
    assert m.shape == (48, 96)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    # the kernel is stretched ×2 (support 8 input pixels), symmetric about x = 2i + 1.5 (0-based)
    row = m[20]
    assert np.count_nonzero(row) == 8 and np.allclose(row[37:45], row[37:45][::-1])
    ramp = np.tile(np.arange(96.0), (50, 1))
    out = imresize(ramp, 0.5)
    assert out.shape == (25, 48)
    # a linear ramp stays linear away from the borders: sample j sits at 2j + 0.5
    np.testing.assert_allclose(out[:, 3:-3], np.tile(2 * np.arange(3, 45) + 0.5, (25, 1)))
    # mirrored borders: a constant stays constant everywhere
    np.testing.assert_allclose(imresize(np.full((9, 13), 7.0), 0.5), 7.0)


def test_niqe_refuses_what_it_cannot_measure(gopro):
    with pytest.raises(InputError, match="at least 96"):
        niqe(gopro["461"][0][:95])
    with pytest.raises(InputError, match="undefined"):
        niqe(np.full((200, 200, 3), 128, np.uint8))


# --------------------------------------------------------------------------------- LPIPS


def test_lpips_heads_are_the_lpips_v01_alexnet_heads(data_dir):
    heads = load_heads()
    source = torch.load(
        data_dir / "params/lpips_weights/v0.1/alex.pth", map_location="cpu", weights_only=True
    )
    for i, (head, channels) in enumerate(zip(heads, CHANNELS, strict=True)):
        assert head.shape == (1, channels, 1, 1)
        assert torch.equal(head, source[f"lin{i}.model.1.weight"])
        assert (head >= 0).all()


def test_lpips_input_scaling():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    scaled = scale_input(x)
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])
    for c in range(3):  # [0, 1] → [−1, 1] → (· − shift) / scale
        expected = (torch.tensor([-1.0, 0.0, 1.0]) - shift[c]) / scale[c]
        torch.testing.assert_close(scaled[0, c, 0], expected)


def test_lpips_normalises_weights_channels_and_averages_space():
    heads = load_heads()
    model = LPIPS(AlexNetFeatures(), heads)
    h, w = 6, 8
    a = [torch.zeros(1, c, h, w) for c in CHANNELS]
    b = [torch.zeros(1, c, h, w) for c in CHANNELS]
    for f in a:
        f[:, 0] = 5.0  # unit-normalised: 1 in channel 0
    for f in b:
        f[:, 1] = 0.25  # unit-normalised: 1 in channel 1
    # everywhere different: per layer the squared difference is 1 in channels 0 and 1
    expected = sum(float(head[0, 0] + head[0, 1]) for head in heads)
    assert model.compare_features(a, b).item() == pytest.approx(expected, rel=1e-5)
    # different on the left half only: the spatial mean halves the value
    for f in b:
        f[..., w // 2 :] = 0
        f[:, 0, :, w // 2 :] = 1.0
    assert model.compare_features(a, b).item() == pytest.approx(expected / 2, rel=1e-5)
    assert model.compare_features(a, a).item() == 0


def test_alexnet_features_have_torchvisions_layout_and_sizes():
    net = AlexNetFeatures()
    keys = {k for k in net.state_dict()}
    assert keys == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in net(torch.rand(1, 3, 224, 224))]
    assert shapes == [(64, 55, 55), (192, 27, 27), (384, 13, 13), (256, 13, 13), (256, 13, 13)]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A torch hub folder and environment of our own, so the machine's cache is not looked at."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(BACKBONE_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def save_random_alexnet(path):
    """A state dict in torchvision's format (classifier included), randomly initialised."""
    torch.manual_seed(0)
    state = AlexNetFeatures().state_dict()
    state["classifier.1.weight"] = torch.zeros(4, 9216)  # present in torchvision's file, unused
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_backbone_lookup_order_and_loading(fake_hub, tmp_path, monkeypatch):
    assert find_backbone() is None
    with pytest.raises(WeightsError, match="--lpips-backbone PATH"):
        lpips(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))
    cached = save_random_alexnet(fake_hub / BACKBONE_FILE)
    assert find_backbone() == cached
    env_file = save_random_alexnet(tmp_path / "env.pth")
    monkeypatch.setenv(BACKBONE_ENV, str(env_file))
    assert find_backbone() == env_file
    assert find_backbone(cached) == cached  # an explicit path comes first
    with pytest.raises(WeightsError, match="does not exist"):
        find_backbone(tmp_path / "typo.pth")
    net = load_backbone(cached)
    torch.testing.assert_close(net.features[0].weight, torch.load(cached)["features.0.weight"])


def test_backbone_loader_refuses_wrong_or_unsafe_files(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(WeightsError, match="does not hold torchvision's AlexNet"):
        load_backbone(wrong)
    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps(print, protocol=2))  # a pickle that names a callable
    with pytest.raises(WeightsError, match="cannot read"):
        load_backbone(unsafe)


def test_lpips_with_a_backbone_file_is_zero_on_equal_images_and_symmetric(gopro, tmp_path):
    path = save_random_alexnet(tmp_path / "random_alexnet.pth")
    blur, sharp = (x[:256, :320] for x in gopro["461"])
    assert lpips(sharp, sharp, backbone=path) == 0
    d = lpips(blur, sharp, backbone=path)
    assert d > 0 and d == pytest.approx(lpips(sharp, blur, backbone=path), rel=1e-5)


def test_lpips_full_value_with_the_imagenet_backbone(gopro, monkeypatch):
    try:
        path = find_backbone()
    except WeightsError as e:
        pytest.skip(f"LPIPS backbone misconfigured: {e}")
    if path is None:
        pytest.skip(
            f"the ImageNet AlexNet weights ({BACKBONE_FILE}) are not on this machine "
            f"(set ${BACKBONE_ENV} or put them in the torch hub cache to run this test)"
        )
    blur, sharp = gopro["461"]
    d_blur = lpips(blur, sharp, backbone=path)
    # faint noise (±3 levels): a much smaller perceptual distance than motion blur
    noisy = np.clip(
        sharp.astype(int) + np.random.default_rng(0).integers(-3, 4, sharp.shape), 0, 255
    )
    d_noise = lpips(noisy.astype(np.uint8), sharp, backbone=path)
    assert 0.1 < d_blur < 0.7
    assert d_noise < d_blur / 2
    with torch.inference_mode():  # the batch path gives the same value as the array path
        model = LPIPS(load_backbone(path))
        batch = model(to_tensor(blur), to_tensor(sharp))
    assert batch.item() == pytest.approx(d_blur, rel=1e-5)
