import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

from reblur_deploy import InputError, ReblurError
from reblur_deploy.atomic import remove_stale
from reblur_deploy.io import read_image, write_image


def test_real_images_read_as_rgb(data_dir):
    import cv2

    path = data_dir / "gopro" / "sharp" / "sharp_00.png"
    image = read_image(path)
    assert image.shape == (720, 1280, 3) and image.dtype == np.uint8
    assert np.array_equal(image, cv2.imread(str(path))[..., ::-1])  # RGB, not BGR
    tif = read_image(data_dir / "real_blur_noGT" / "pietro.tif")
    assert tif.ndim in (2, 3) and tif.dtype in (np.uint8, np.uint16)


@pytest.mark.parametrize(
    "image",
    [
        np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000),
        np.arange(4 * 5 * 4, dtype=np.uint8).reshape(4, 5, 4),
        np.arange(20, dtype=np.uint8).reshape(4, 5),
    ],
    ids=["rgb8", "rgb16", "rgba", "gray"],
)
def test_png_round_trip_keeps_depth_channels_and_order(tmp_path, image):
    path = write_image(tmp_path / "x.png", image)
    assert np.array_equal(read_image(path), image)


def test_existing_outputs_are_not_overwritten(tmp_path):
    path = tmp_path / "x.png"
    write_image(path, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_image(path, np.full((2, 2, 3), 255, np.uint8))
    assert read_image(path).max() == 0
    write_image(path, np.full((2, 2, 3), 255, np.uint8), overwrite=True)
    assert read_image(path).min() == 255
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_unreadable_files_get_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="cannot decode"):
        read_image(corrupt)
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="unsupported image suffix"):
        write_image(tmp_path / "x.gif", np.zeros((2, 2, 3), np.uint8))


def test_outputs_get_ordinary_file_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = write_image(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".out.{dead}-0a1b2c3d.part.png"
    live = tmp_path / f".out.{os.getppid()}-0a1b2c3d.part.png"  # pytest's parent: running
    other = tmp_path / f".other.{dead}-0a1b2c3d.part.png"  # another output's
    for path in (stale, live, other):
        path.write_bytes(b"half")
    assert remove_stale(tmp_path / "out.png") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    write_image(tmp_path / "other.png", np.zeros((4, 4, 3), np.uint8))  # writing cleans up too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "other.png"])


def test_decoding_in_threads_leaves_stderr_where_it_was(tmp_path, data_dir):
    """Decoders' stderr lines are captured by redirecting file descriptor 2; threads decoding
    at once (as the training data check does) must not leave it redirected."""
    import threading

    good = (data_dir / "gopro" / "blur" / "blur_01.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 3])  # libpng complains
    before = os.fstat(2)

    def decode_many():
        for _ in range(15):
            with contextlib.suppress(InputError):
                read_image(tmp_path / "cut.png")

    threads = [threading.Thread(target=decode_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif", ".bmp"])
def test_writing_an_image_prints_nothing(tmp_path, capfd, suffix):
    """OpenCV warned "imencodeWithMetadata unsupported key" on stderr for every option that was
    not its format's (JPEG quality given to a PNG), even under reblur-run -q."""
    write_image(tmp_path / f"x{suffix}", np.zeros((8, 8, 3), np.uint8), quality=90)
    assert capfd.readouterr().err == ""


def test_the_longest_legal_names_can_be_written(tmp_path):
    """A 225-byte stem (plus its suffix, within NAME_MAX) once failed with "File name too long":
    the temporary name beside it is longer than the final one."""
    stem = "b" * 225
    write_image(tmp_path / f"{stem}.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / f"{'é' * 125}.jpeg", np.zeros((4, 4, 3), np.uint8))  # 250 bytes
    assert sorted(len(os.fsencode(p.name)) for p in tmp_path.iterdir()) == [229, 255]


def test_an_output_name_too_long_is_refused_before_any_work(tmp_path):
    from reblur_deploy.runner import RunOptions, plan_jobs

    source = write_image(tmp_path / f"{'c' * 245}.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ReblurError, match="259 bytes long"):  # with _deblurred
        plan_jobs([str(source)], RunOptions())
