"""``reblur-run --ray`` on a real local Ray cluster (``ray start --head`` with two CPUs, so two
worker actors): the same outputs as a local run, a worker killed mid-run, a bad input,
``--skip-existing`` after an interrupted job, and the one line without Ray."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from reblur_deploy.io import read_frames, read_image, write_image

from .test_video import make_video

BIN = Path(sys.executable).parent
# CI installs Ray (the [ray] extra) and sets this: there a missing one fails.
REQUIRED = os.environ.get("REBLUR_REQUIRE_RAY") == "1"
WORKER = "MapWorker(MapBatches(JobWorker"  # the title Ray gives the worker actors' processes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not (BIN / "ray").exists():
        if REQUIRED:
            pytest.fail("Ray is not installed: pip install -e '.[ray]'")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    start = [BIN / "ray", "start", "--head", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={temp}"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, timeout=300)
    yield f"127.0.0.1:{port}"
    subprocess.run([BIN / "ray", "stop", "--force"], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_dir):
    """Three real frames (GOPRO, 320×180), a short video, and a file that is not an image."""
    folder = tmp_path_factory.mktemp("inputs")
    for i, path in enumerate(sorted((data_dir / "gopro_clip_noGT").glob("*.png"))[:3]):
        write_image(folder / f"f{i}.png", cv2.resize(read_image(path), (320, 180)))
    make_video(folder / "clip.mp4", n=6, audio=False)
    return folder


# `ray start` turns on Ray's token authentication (its token in ~/.ray/auth_token); a client
# presents it when told to by Ray's own setting.
ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
# Each Ray worker computes on one thread, and a convolution's sums (not only TTA's backward
# pass) change order with the number of threads: a local run to compare with runs on one too,
# or a pixel near a rounding edge lands one level apart (seen with the campaign's unet-lite).
ONE_THREAD = {**ENV, "OMP_NUM_THREADS": "1"}


def run(*args, check=True, env=ENV) -> subprocess.CompletedProcess:
    done = subprocess.run([BIN / "reblur-run", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env)  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".mp4"):
            frames = [[f.rgb for f in read_frames(folder / name)] for folder in (a, b)]
            assert len(frames[0]) == len(frames[1]) and all(
                np.array_equal(x, y) for x, y in zip(*frames, strict=True)
            )
        else:
            assert np.array_equal(read_image(a / name), read_image(b / name)), name


@pytest.mark.slow
def test_a_ray_run_writes_what_a_local_run_writes(cluster, inputs, tmp_path):
    """Images and a video through two workers: the same pixels as a local run, a bad input
    failing alone with its one line and exit 1 in both, and one merged report."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in inputs.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "bad.png").write_bytes(b"not an image")
    local = run(folder, "-o", tmp_path / "local/", "--report", tmp_path / "local.json",
                check=False, env=ONE_THREAD)  # fmt: skip
    ray = run(folder, "-o", tmp_path / "ray/", "--ray", cluster, "--report", tmp_path / "ray.json",
              check=False)  # fmt: skip
    for done in (local, ray):
        assert (
            done.returncode == 1
            and "cannot decode" in done.stderr
            and "1 of 5 inputs failed" in (done.stderr)
        ), done.stderr
    same_outputs(tmp_path / "local", tmp_path / "ray")
    reports = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "ray")]
    for key in ("items", "frames", "failed"):
        assert reports[0][key] == reports[1][key], key
    assert "on Ray" in ray.stdout


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_writes_nothing_twice(cluster, inputs, tmp_path):
    """One worker process killed (SIGKILL) while it adapts a frame: Ray restarts it, its job
    runs again, and every output is there once, equal to a local run's (on one thread, as
    each worker runs), no temporary left."""
    images = [p for p in inputs.iterdir() if p.suffix == ".png"]
    for name in ("local", "ray"):
        (tmp_path / name).mkdir()
    run(*images, "-o", tmp_path / "local/", "--tta", "3", env=ONE_THREAD)
    command = [BIN / "reblur-run", *images, "-o", tmp_path / "ray/", "--tta", "3", "--ray", cluster]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV)  # fmt: skip
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and child.poll() is None and time.monotonic() < deadline:
        pattern = re.escape(WORKER)
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        if found.split():
            time.sleep(0.5)  # in its first job (the model loads, then TTA's steps)
            try:
                os.kill(int(found.split()[0]), signal.SIGKILL)
                killed = int(found.split()[0])
            except ProcessLookupError:  # it ended meanwhile: look again
                pass
        time.sleep(0.2)
    _, err = child.communicate(timeout=600)
    assert killed is not None and child.returncode == 0, err
    same_outputs(tmp_path / "local", tmp_path / "ray")
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_skip_existing_finishes_an_interrupted_job(cluster, inputs, tmp_path):
    images = [p for p in inputs.iterdir() if p.suffix == ".png"]
    run(*images, "-o", tmp_path / "out/", "--ray", cluster)
    kept = tmp_path / "out" / images[0].name
    stamp = kept.stat().st_mtime_ns
    for path in images[1:]:  # as if the job had been stopped before these
        (tmp_path / "out" / path.name).unlink()
    done = run(*images, "-o", tmp_path / "out/", "--ray", cluster, "--skip-existing")
    assert "2 item(s)" in done.stdout and kept.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in images)


def test_without_ray_the_option_says_what_to_install(tmp_path, data_dir):
    """Ray is optional: where it cannot be imported, --ray is one line naming the extra."""
    image = write_image(tmp_path / "a.png", np.zeros((32, 48, 3), np.uint8))
    script = (
        "import sys; sys.modules['ray'] = None\n"  # as if not installed: import raises
        "from reblur_deploy.cli.run import main\n"
        "main(sys.argv[1:])"
    )
    done = subprocess.run([sys.executable, "-c", script, str(image), "--ray"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and not (tmp_path / "a_deblurred.png").exists()
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --ray needs Ray Data: pip install 'reblur-deploy[ray]' (Ray Data)"
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Ray Data's context
def test_a_ray_dataset_of_images_is_deblurred_by_a_pool_of_models(cluster, inputs, monkeypatch):
    """deblur_dataset: a program's own Ray Dataset, its image column deblurred by actors that
    each hold a Deblurrer, equal to the Deblurrer run here."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # before Ray reads its settings
    import ray

    from reblur_deploy import Deblurrer
    from reblur_deploy.cluster import deblur_dataset

    images = [read_image(p) for p in sorted(inputs.glob("*.png"))]
    ray.init(address=cluster, logging_level="ERROR", log_to_driver=False)
    try:
        dataset = ray.data.from_items([{"image": image, "n": i} for i, image in enumerate(images)])
        rows = sorted(deblur_dataset(dataset, workers=2, weights="unet-lite").take_all(),
                      key=lambda row: row["n"])  # fmt: skip
    finally:
        ray.shutdown()
    expected = Deblurrer("unet-lite", device="cpu", batch_size=4).run_arrays(images)
    assert [row["n"] for row in rows] == list(range(len(images)))
    for row, image in zip(rows, expected, strict=True):
        assert np.abs(row["image"].astype(int) - image.astype(int)).max() <= 1
