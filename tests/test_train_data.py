"""Training data: every layout built from real GOPRO crops, bad data, sampling, synthetic blur."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reblur_deploy import ConfigError, InputError
from reblur_deploy.io import read_frames, read_image, write_image
from reblur_deploy.train.data import (
    Augment,
    BatchStream,
    ImageStore,
    Item,
    MixSampler,
    TrainSet,
    ValSet,
    check_items,
    decode,
    epoch_counts,
    load_source,
    plan_data,
)
from reblur_deploy.train.make_dataset import make_pairs
from reblur_deploy.train.synthetic import (
    BlurParams,
    average_linear,
    sample_trajectory,
    synthesize,
    synthesize_reblur,
)

from .test_video import make_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crops(data_dir):
    """Three real blurry/sharp pairs, 80×96 crops of GOPRO frames."""
    out = []
    for i in range(3):
        blur = read_image(data_dir / "gopro" / "blur" / f"blur_0{i}.png")[300:380, 500:596]
        sharp = read_image(data_dir / "gopro" / "sharp" / f"sharp_0{i}.png")[300:380, 500:596]
        out.append((blur, sharp))
    return out


def write_gopro_crops(root: Path, data_dir: Path) -> Path:
    """The 7 shared GOPRO pairs, same names, cropped to 128×128: a paired folder that decodes
    in milliseconds (the full frames take about 0.4 s per process to decode)."""
    for folder in ("blur", "sharp"):
        for path in sorted((data_dir / "gopro" / folder).glob("*.png")):
            write_image(root / folder / path.name, read_image(path)[300:428, 560:688])
    return root


def write_pairs(blur_dir: Path, sharp_dir: Path, crops, names=None) -> None:
    for i, (blur, sharp) in enumerate(crops):
        name = names[i] if names else f"{i:08d}.png"
        write_image(blur_dir / name, blur)
        write_image(sharp_dir / name, sharp)


# ------------------------------------------------------------------------------ layouts


def test_paired_layout_pairs_the_shared_gopro_folder_by_name(data_dir):
    source = load_source(f"paired:{data_dir / 'gopro'}")
    pairs = {Path(item.blur).name: Path(item.sharp).name for item in source.items}
    assert len(pairs) == 7
    assert pairs["461_blur.png"] == "461_sharp.png" and pairs["blur_03.png"] == "sharp_03.png"


def test_gopro_layout_with_blur_or_blur_gamma_and_its_test_split(tmp_path, crops):
    root = tmp_path / "GOPRO_Large"
    for split, seq in (("train", "GOPR0372_07_00"), ("test", "GOPR0384_11_00")):
        write_pairs(root / split / seq / "blur", root / split / seq / "sharp", crops)
        for i, (blur, _) in enumerate(crops):
            write_image(root / split / seq / "blur_gamma" / f"{i:08d}.png", blur // 2)
    train = load_source(f"gopro:{root}")
    assert [item.name for item in train.items] == [f"GOPR0372_07_00/{i:08d}.png" for i in range(3)]
    assert np.array_equal(decode(train.items[1].blur), crops[1][0])
    assert np.array_equal(decode(train.items[1].sharp), crops[1][1])
    gamma = load_source(f"gopro:{root}", gopro_blur="blur_gamma")
    assert np.array_equal(decode(gamma.items[2].blur), crops[2][0] // 2)
    test = load_source(f"gopro:{root}", split="val")
    assert all(item.name.startswith("GOPR0384_11_00/") for item in test.items)
    assert len(load_source(f"gopro:{root / 'train'}").items) == 3  # a split folder itself
    with pytest.raises(InputError, match="no train/ folder"):
        load_source(f"gopro:{tmp_path}")


@pytest.mark.parametrize("flat", [False, True], ids=["nested", "flat"])
def test_reds_layouts(tmp_path, crops, flat):
    base = tmp_path / "REDS" if flat else tmp_path / "REDS" / "train"
    write_pairs(base / "train_blur" / "000", base / "train_sharp" / "000", crops[:2])
    write_pairs(base / "train_blur" / "001", base / "train_sharp" / "001", crops[2:])
    source = load_source(f"reds:{tmp_path / 'REDS'}")
    assert [item.name for item in source.items] == [
        "000/00000000.png",
        "000/00000001.png",
        "001/00000000.png",
    ]
    assert np.array_equal(decode(source.items[2].blur), crops[2][0])
    with pytest.raises(InputError, match="val_blur"):
        load_source(f"reds:{tmp_path / 'REDS'}", split="val")


def test_synthetic_sources_from_a_folder_and_from_scikit_image(tmp_path, crops):
    for i, (_, sharp) in enumerate(crops):
        write_image(tmp_path / "photos" / f"p{i}.png", sharp)
    folder = load_source(f"synthetic:{tmp_path / 'photos'}")
    assert [item.blur for item in folder.items] == [None] * 3
    bundled = load_source("synthetic:skimage")
    assert len(bundled.items) >= 10
    camera = decode(next(item.sharp for item in bundled.items if item.name == "camera"))
    assert camera.shape == (512, 512, 3) and np.array_equal(camera[..., 0], camera[..., 2])


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory, data_dir) -> Path:
    """Two videos of real consecutive 240-fps GOPRO frames (96×96 crops): 21 frames and 4."""
    root = tmp_path_factory.mktemp("frames")
    source = data_dir / "train" / "gopro_240fps_frames" / "GOPR0477_11_00"
    for video, numbers in (("a", range(1, 22)), ("b", range(40, 44))):
        for n in numbers:
            frame = read_image(source / f"{n:06d}.png")[120:216, 260:356]
            write_image(root / video / f"{n:06d}.png", frame)
    return root


def _window(frames_dir: Path, video: str, names: list[str]) -> list[np.ndarray]:
    return [read_image(frames_dir / video / name) / np.float32(255) for name in names]


def test_frames_sources_blur_a_frame_with_its_real_neighbours(frames_dir):
    source = load_source(f"frames:{frames_dir}")
    assert len(source.items) == 25 and all(item.blur is None for item in source.items)
    videos = {item.name.split("/")[0]: item.sequence for item in source.items}
    assert [len(videos["a"]), len(videos["b"])] == [21, 4]
    params = BlurParams(frames=(5, 9))
    data = TrainSet(source.items, 96, blur=params)
    lengths = set()
    for index, seed in ((10, 0), (10, 1), (10, 2), (10, 3), (0, 4), (20, 5), (21, 6), (24, 7)):
        item = source.items[index]
        blurry, sharp = data.sample(index, np.random.default_rng(seed))
        again = data.sample(index, np.random.default_rng(seed))
        assert np.array_equal(blurry, again[0]) and np.array_equal(sharp, again[1])
        video = item.name.split("/")[0]
        names = sorted(p.name for p in (frames_dir / video).iterdir())
        frames = _window(frames_dir, video, names)
        middle = next(i for i, f in enumerate(frames) if np.array_equal(f, sharp))
        # GOPRO's recipe on real frames: k consecutive frames averaged in linear light (k odd,
        # within the range, as long as the video allows), the sharp one in the middle: the
        # item's own frame when the window fits around it
        k = next(k for k in (3, 5, 7, 9)
                 if middle - k // 2 >= 0 and middle + k // 2 < len(frames)
                 and np.abs(average_linear(frames[middle - k // 2 : middle + k // 2 + 1])
                            - blurry).max() <= 0.5 / 255 + 1e-6)  # fmt: skip
        lengths.add(k)
        position = names.index(Path(item.sharp).name)
        if k // 2 <= position < len(frames) - k // 2:
            assert middle == position
        assert k in (5, 7, 9) or (video == "b" and k == 3)  # 4 frames hold at most 3
    assert len(lengths) >= 2


def test_frames_sources_lengthen_real_blur_for_mr_and_validate_with_one_fixed_blur(frames_dir):
    source = load_source(f"frames:{frames_dir}")
    params = BlurParams(frames=(9, 13))
    data = TrainSet(source.items[:21], 96, blur=params, reblur=True)
    frames = _window(frames_dir, "a", sorted(p.name for p in (frames_dir / "a").iterdir()))

    def mean(lo, hi):
        return average_linear(frames[lo:hi])

    kinds = {"sharp": 0, "lengthened": 0}
    for seed in range(16):
        x, y = data.sample(10, np.random.default_rng(seed))
        if np.array_equal(x, y):
            assert np.array_equal(x, frames[10])  # no blur: nothing to lengthen
            kinds["sharp"] += 1
            continue
        # the input is a real blurry frame (about half the window), the target the same
        # frames' motion twice as long, both centred on frame 10
        k = next(k for k in (9, 11, 13) if np.abs(mean(10 - k // 2, 11 + k // 2) - y).max() < 0.003)
        m = 2 * max(1, round((k / 2 - 1) / 2)) + 1
        assert np.abs(mean(10 - m // 2, 11 + m // 2) - x).max() < 0.003
        kinds["lengthened"] += 1
    assert kinds["sharp"] >= 1 and kinds["lengthened"] >= 8
    plan = plan_data([f"frames:{frames_dir}"], [f"frames:{frames_dir}"])
    assert all(made for _, made in plan.val) and len(plan.val) == 25
    val = ValSet(plan.val, 64, blur=params)
    name, blurry, sharp = val[3]
    assert name == plan.val[3][0].name and not np.array_equal(blurry.numpy(), sharp.numpy())
    assert np.array_equal(blurry.numpy(), val[3][1].numpy())  # one fixed blur per frame


def test_frames_sources_name_a_short_video_and_a_frame_of_another_size(tmp_path, frames_dir):
    for n in (1, 2):
        write_image(tmp_path / "short" / f"{n}.png", read_image(frames_dir / "a" / "000001.png"))
    with pytest.raises(InputError, match="short: a frames: video needs at least 3 frames"):
        load_source(f"frames:{tmp_path / 'short'}")
    for n in range(1, 6):
        frame = read_image(frames_dir / "a" / f"{n:06d}.png")
        write_image(tmp_path / "odd" / f"{n}.png", frame[:80] if n == 2 else frame)
    items = load_source(f"frames:{tmp_path / 'odd'}").items
    with pytest.raises(InputError, match=r"2\.png and .*3\.png, frames of one video, differ"):
        TrainSet(items, 64, blur=BlurParams(frames=(5, 5))).sample(2, np.random.default_rng(0))


def test_sharp_inputs_and_kept_brightness_change_md_pairs_only_when_asked(data_dir):
    """--sharp-share gives (S, S) pairs; --keep-mean moves the blurry crop to the sharp crop's
    mean (REDS blur, averaged in linear light, is brighter than its sharp frames)."""
    items = load_source(f"paired:{data_dir / 'train' / 'reds027_x4'}").items[:6]
    plain = TrainSet(items, 96)
    kept = TrainSet(items, 96, keep_mean=True)
    half = TrainSet(items, 96, sharp_share=0.5)
    biases, identical = [], 0
    for seed in range(24):
        index = seed % len(items)
        blurry, sharp = plain.sample(index, np.random.default_rng(seed))
        default = plain.pair(index, np.random.default_rng(seed))  # off: the stream is unchanged
        assert np.array_equal(default[0], blurry) and np.array_equal(default[1], sharp)
        biases.append((blurry.mean() - sharp.mean()) * 255)
        x, y = kept.pair(index, np.random.default_rng(seed))
        assert np.array_equal(y, sharp) and not np.array_equal(x, blurry)
        assert np.abs(x.mean(axis=(0, 1)) - y.mean(axis=(0, 1))).max() * 255 < 0.05
        inside = (x > 0) & (x < 1)  # one shift per channel, where it was not clipped
        assert all((x - blurry)[..., c][inside[..., c]].std() < 1e-6 for c in range(3))
        x, y = half.pair(index, np.random.default_rng(seed))
        assert np.array_equal(y, sharp)
        identical += np.array_equal(x, y)
    assert np.mean(biases) > 1.0  # the bias --keep-mean removes
    assert 5 <= identical <= 19
    mr = TrainSet(items, 96, reblur=True, sharp_share=1.0, keep_mean=True)  # MR's pairs: as made
    x, y = mr.pair(0, np.random.default_rng(0))
    assert np.array_equal((x, y), mr.sample(0, np.random.default_rng(0)))


def test_shares_mix_sources_in_the_asked_proportions(data_dir):
    plan = plan_data([f"paired:{data_dir / 'gopro'}", "synthetic:skimage@3"])
    sizes = [len(s.items) for s in plan.train]
    assert epoch_counts(sizes, [None, None]) == sizes  # plain concatenation
    counts = epoch_counts(sizes, [s.share for s in plan.train])  # W = 1 and 3
    assert sum(counts) == sum(sizes) and counts[1] == pytest.approx(3 * counts[0], abs=1)
    sampler = MixSampler(sizes, [None, 3.0], seed=0)
    drawn = list(sampler)
    assert sum(i < sizes[0] for i in drawn) == counts[0]
    assert len(set(drawn)) > sizes[0]  # both sources appear


def test_the_batch_stream_resumes_exactly_and_ranks_split_each_batch():
    sampler = MixSampler([5, 4], seed=3)
    stream = iter(BatchStream(sampler, 4))
    batches = [next(stream) for _ in range(12)]  # crosses several epochs (9 items each)
    resumed = iter(BatchStream(MixSampler([5, 4], seed=3), 4, start=7))
    assert [next(resumed) for _ in range(5)] == batches[7:]
    ranks = [iter(BatchStream(MixSampler([5, 4], seed=3, rank=r, world=2), 2)) for r in (0, 1)]
    for batch in batches[:2]:  # 8 of the first epoch's 9 positions: no padding yet
        split = [next(ranks[0]), next(ranks[1])]
        assert sorted(split[0] + split[1], key=lambda key: key[2]) == batch


# ------------------------------------------------------------------------- samples


@pytest.fixture
def darker_pair(tmp_path, crops):
    """A 64×64 pair whose blurry image is exactly its sharp image halved."""
    sharp = crops[0][1][:64, :64]
    write_image(tmp_path / "p" / "blur" / "a.png", sharp // 2)
    write_image(tmp_path / "p" / "sharp" / "a.png", sharp)
    return load_source(f"paired:{tmp_path / 'p'}").items


def test_crops_flips_rotations_and_channel_shuffle_are_the_same_for_blur_and_sharp(darker_pair):
    dataset = TrainSet(darker_pair, 64, augment=Augment(True, True, True), seed=1)
    seen = set()
    for position in range(40):
        blurry, sharp = dataset[(0, 0, position)]
        b8 = np.rint(blurry.numpy() * 255).astype(int)
        s8 = np.rint(sharp.numpy() * 255).astype(int)
        assert np.array_equal(b8, s8 // 2)
        seen.add(s8.tobytes())
    assert len(seen) > 8  # 8 orientations × 6 channel orders: the variety is real


def test_samples_are_a_function_of_seed_and_key_cached_or_not(data_dir):
    items = load_source(f"paired:{data_dir / 'gopro'}").items[:2]
    store = ImageStore()
    assert check_items(items, 64, full=True, store=store) is None
    assert len(store.cache) == 4 and store.cached_bytes == 4 * 1280 * 720 * 3
    cached, plain = TrainSet(items, 64, store, seed=5), TrainSet(items, 64, seed=5)
    a, b = cached[(1, 2, 3)], plain[(1, 2, 3)]
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].numpy(), cached[(1, 2, 4)][0].numpy())
    assert a[0].shape == (3, 64, 64) and a[0].dtype.is_floating_point


# ------------------------------------------------------------------------- bad data


def _paired(root: Path, crops, n=2) -> Path:
    write_pairs(root / "blur", root / "sharp", crops[:n], [f"blur_{i}.png" for i in range(n)])
    for i in range(n):
        (root / "sharp" / f"blur_{i}.png").rename(root / "sharp" / f"sharp_{i}.png")
    return root


@pytest.mark.parametrize("full", [True, False], ids=["full", "header"])
def test_unreadable_and_mismatched_images_are_named(tmp_path, crops, full):
    root = _paired(tmp_path / "d", crops)
    items = load_source(f"paired:{root}").items
    assert check_items(items, 64, full=full) is None
    (root / "blur" / "blur_1.png").write_bytes(b"\x89PNG not really")
    problem = check_items(items, 64, full=full)
    assert "blur_1.png" in problem and "decode" in problem
    write_image(root / "blur" / "blur_1.png", crops[1][0][:72], overwrite=True)
    problem = check_items(items, 64, full=full)
    assert "blur_1.png is 96×72 but its sharp partner" in problem and "sharp_1.png" in problem
    problem = check_items(items, 96, full=full)
    assert "smaller than the 96×96 crop" in problem


def test_missing_partners_and_empty_folders_are_errors(tmp_path, crops):
    root = _paired(tmp_path / "d", crops)
    (root / "sharp" / "sharp_1.png").unlink()
    with pytest.raises(InputError, match=r"blur_1\.png has no ground truth"):
        plan_data([f"paired:{root}"])
    write_image(root / "sharp" / "sharp_7.png", crops[0][1])
    (root / "blur" / "blur_1.png").unlink()
    with pytest.raises(InputError, match=r"sharp_7\.png has no image"):
        plan_data([f"paired:{root}"])
    (tmp_path / "empty" / "blur").mkdir(parents=True)
    (tmp_path / "empty" / "sharp").mkdir()
    with pytest.raises(InputError, match="no images"):
        plan_data([f"paired:{tmp_path / 'empty'}"])
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no images"):
        plan_data([f"synthetic:{tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="KIND:PATH"):
        plan_data([f"folder:{root}"])


def test_validation_by_names_and_by_fraction(data_dir):
    gopro = f"paired:{data_dir / 'gopro'}"
    plan = plan_data([gopro], ["names:blur_04,461"])
    assert sorted(item.name for item, _ in plan.val) == ["461_blur.png", "blur_04.png"]
    assert len(plan.train_items) == 5 and not {"blur_04.png", "461_blur.png"} & {
        item.name for item in plan.train_items
    }
    with pytest.raises(ConfigError, match="no training item is named 'blur_09'"):
        plan_data([gopro], ["names:blur_09"])
    a, b = plan_data([gopro], ["0.3"], seed=1), plan_data([gopro], ["fraction:0.3"], seed=1)
    assert len(a.val) == 2 and [i.name for i, _ in a.val] == [i.name for i, _ in b.val]
    synthetic = plan_data(["synthetic:skimage"], ["names:astronaut"])
    assert synthetic.val == [(Item("astronaut", "skimage:astronaut"), True)]


# ----------------------------------------------------------------------- synthetic blur


def test_linear_light_average():
    black, white = np.zeros((2, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    assert average_linear([black, white]) == pytest.approx(0.5 ** (1 / 2.2))  # not 0.5


def test_synthetic_pairs_are_deterministic_and_the_sharp_frame_is_the_source(crops):
    image = crops[0][1]
    params = BlurParams(max_shift=12, max_rotation=2, max_zoom=0.02, noise=0.01)
    box = (8, 16, 64, 64)
    blur1, sharp1 = synthesize(image, np.random.default_rng(4), params, box)
    blur2, sharp2 = synthesize(image, np.random.default_rng(4), params, box)
    blur3, _ = synthesize(image, np.random.default_rng(5), params, box)
    assert np.array_equal(blur1, blur2) and np.array_equal(sharp1, sharp2)
    assert not np.array_equal(blur1, blur3)
    assert np.array_equal(sharp1, image[8:72, 16:80] / np.float32(255))
    assert blur1.shape == (64, 64, 3) and blur1.min() >= 0 and blur1.max() <= 1
    assert np.array_equal(np.rint(blur1 * 255) / 255, blur1)  # 8 bits, like a real frame

    def detail(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()

    clean = BlurParams(max_shift=12, max_rotation=2)
    assert detail(synthesize(image, np.random.default_rng(4), clean, box)[0]) < detail(sharp1)


def test_reblur_pairs_lengthen_the_blur_of_one_exposure_or_leave_sharp_images_alone(crops):
    image = crops[1][1]
    box = (8, 16, 64, 64)

    def detail(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()

    sharp = image[8:72, 16:80] / np.float32(255)
    kinds = {"sharp": 0, "blur": 0}
    for seed in range(40):
        params = BlurParams(max_shift=14)
        x, y = synthesize_reblur(image, np.random.default_rng(seed), params, box)
        again = synthesize_reblur(image, np.random.default_rng(seed), params, box)
        assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
        assert x.shape == y.shape == (64, 64, 3) and x.dtype == y.dtype == np.float32
        if np.array_equal(x, sharp):
            assert np.array_equal(y, sharp)  # no blur: nothing to amplify
            kinds["sharp"] += 1
            continue
        # the same motion made longer: the input is blurrier than the sharp frame, the
        # target blurrier still, and the target is the full exposure `synthesize` makes
        assert detail(y) < detail(x) < detail(sharp)
        full, _ = synthesize(image, np.random.default_rng(seed), params, box)
        assert np.array_equal(y, full)
        kinds["blur"] += 1
    assert 4 <= kinds["sharp"] <= 18 and kinds["blur"] >= 22  # sharp_share = 0.25 of 40


def test_a_flat_image_stays_flat_and_the_trajectory_is_bounded():
    flat = np.full((40, 50, 3), (30, 120, 240), np.uint8)
    blurry, sharp = synthesize(flat, np.random.default_rng(0), BlurParams(max_zoom=0.05))
    assert np.abs(blurry - sharp).max() <= 0.5 / 255 + 1e-6
    params = BlurParams(frames=(7, 15), max_shift=10, max_rotation=1, max_zoom=0.02)
    for seed in range(20):
        path = sample_trajectory(np.random.default_rng(seed), params)
        n = len(path)
        assert 7 <= n <= 15 and not path[n // 2].any()
        shifts = path[:, 1:3]
        diameter = np.linalg.norm(shifts[:, None] - shifts[None], axis=-1).max()
        assert 0.1 * 10 - 1e-6 <= diameter <= 10 + 1e-6
        assert np.abs(path[:, 0]).max() <= np.radians(1) + 1e-9


# -------------------------------------------------------------------- make_dataset


def test_make_dataset_averages_video_frames_in_linear_light(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", n=30, audio=False)
    out = tmp_path / "pairs"
    result = subprocess.run(
        [sys.executable, "-m", "train.make_dataset", "--video", str(clip), "--average", "7",
         "--out", str(out), "-q"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (out / "blur").iterdir())
    assert names == [f"clip_{i:06d}.png" for i in range(4)]  # 30 frames → 4 windows of 7
    frames = [f.rgb for f in read_frames(clip)]
    expected = average_linear([f / np.float32(255) for f in frames[7:14]])
    assert np.array_equal(read_image(out / "blur" / "clip_000001.png"), np.rint(expected * 255))
    assert np.array_equal(read_image(out / "sharp" / "clip_000001.png"), frames[10])
    assert len(load_source(f"paired:{out}").items) == 4
    again = subprocess.run(
        [sys.executable, "-m", "train.make_dataset", "--video", str(clip), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert again.returncode == 1 and "not empty" in again.stderr
    with pytest.raises(ConfigError, match="odd"):
        next(make_pairs(iter(frames), 6))
    strided = list(make_pairs(iter(frames), 3, stride=10))
    assert len(strided) == 3 and np.array_equal(strided[1][1], frames[11])
