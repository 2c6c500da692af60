"""Video reading and writing with real encoding and decoding (PyAV / FFmpeg), small frames."""

from __future__ import annotations

import dataclasses
import os
import resource
import signal
from fractions import Fraction

import av
import numpy as np
import pytest

from reblur_deploy import ConfigError, InputError, ReblurError
from reblur_deploy.io import (
    VIDEO_SUFFIXES,
    VideoSettings,
    VideoWriter,
    is_video,
    probe_video,
    read_frames,
    read_image,
)

W, H, N, FPS, RATE = 64, 48, 30, 30, 48000


def pattern(i: int, width: int = W, height: int = H) -> np.ndarray:
    """A smooth gradient that drifts with i, plus a saturated moving square."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 3 + i * 2, y * 4 + 20, 200 - x - y], axis=-1).astype(np.uint8)
    left = (2 * i) % (width - 12)
    image[8:20, left : left + 12] = (230, 40, 40)
    image[28:40, 20:32] = (40, 200, 60)
    return image


def make_video(path, n=N, rotation=0, audio=True, video=True, tags=True, fps=FPS, rate=RATE,
               seconds=1.0, audio_pts=True):  # fmt: skip
    """n frames of `pattern` at `fps` (x264 with B-frames) and `seconds` of a 440 Hz sine (AAC
    at `rate`). Without `audio_pts` the encoder numbers the audio itself: no negative priming
    time stamp, so the audio ends a packet later."""
    with av.open(str(path), "w") as out:
        if video:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            if tags:  # BT.709 matrix, primaries, transfer; limited range
                ctx = stream.codec_context
                ctx.colorspace = ctx.color_primaries = ctx.color_trc = ctx.color_range = 1
            if rotation:
                stream.set_display_rotation(rotation)
        if audio:
            sound = out.add_stream("aac", rate=rate)
            sound.layout = "mono"
        if video:
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(pattern(i), format="rgb24")
                frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        if audio:
            t = np.arange(round(rate * seconds)) / rate
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for s in range(0, wave.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(wave[:, s : s + 1024]), format="flt", layout="mono"
                )
                frame.sample_rate = rate
                frame.pts = s if audio_pts else None
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return path


def copy_video(src, dst, start=0, end=None, n=N, **kwargs):
    """What reblur-run does, minus the deblurring."""
    info = probe_video(src)
    with VideoWriter(
        dst,
        info.fps,
        info.width,
        info.height,
        time_base=info.time_base,
        rotation=info.rotation,
        audio_from=src,
        color_from=info,
        **kwargs,
    ) as out:
        for frame in read_frames(src, start, end):
            out.write(frame.rgb, frame.pts)
    assert out.frames_written == len(range(n)[start:end])
    return dst


def audio_packets(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return stream.time_base, [
            (p.pts, p.duration, bytes(p)) for p in container.demux(stream) if p.dts is not None
        ]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("src") / "clip.mp4", rotation=90)


@pytest.fixture(scope="module")
def copied(source, tmp_path_factory):
    return copy_video(source, tmp_path_factory.mktemp("out") / "clip_deblurred.mp4")


def test_is_video_by_suffix():
    assert all(is_video(f"a/b{suffix.upper()}") for suffix in VIDEO_SUFFIXES)
    assert not is_video("frame.png") and not is_video("video")


def test_probe_describes_the_source(source):
    info = probe_video(source)
    assert (info.width, info.height, info.frames, info.fps) == (W, H, N, 30)
    assert isinstance(info.fps, Fraction) and isinstance(info.time_base, Fraction)
    assert info.rotation == 90 and info.codec == "h264" and info.has_audio
    assert (info.colorspace, info.color_primaries, info.color_trc, info.color_range) == (1,) * 4
    assert info.duration == pytest.approx(1.0, abs=0.05)


def test_copy_keeps_frames_time_stamps_rotation_and_colour_tags(source, copied):
    before, after = probe_video(source), probe_video(copied)
    assert (after.frames, after.fps, after.width, after.height) == (N, before.fps, W, H)
    assert after.codec == "h264" and after.rotation == 90 and after.has_audio
    tags = ("colorspace", "color_primaries", "color_trc", "color_range")
    assert [getattr(after, t) for t in tags] == [getattr(before, t) for t in tags]
    frames_in, frames_out = list(read_frames(source)), list(read_frames(copied))
    assert [f.index for f in frames_out] == list(range(N))
    assert after.time_base == before.time_base
    assert [f.pts for f in frames_out] == [f.pts for f in frames_in]
    assert [f.time for f in frames_out] == pytest.approx([i / FPS for i in range(N)])
    # Pixels survive a second 4:2:0 encode at crf 18 (a few levels on average).
    for a, b in zip(frames_in, frames_out, strict=True):
        assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 4


def test_copy_keeps_audio_packets_bit_identical(source, copied):
    (tb_in, packets_in), (tb_out, packets_out) = audio_packets(source), audio_packets(copied)
    assert tb_in == tb_out == Fraction(1, RATE)
    assert len(packets_in) >= 47  # 1 s of AAC, 1024 samples a packet, plus priming
    assert packets_out == packets_in  # same bytes, same time stamps and durations


def remux(src, dst):
    """A plain stream copy by FFmpeg's own muxer, as `ffmpeg -i src -c copy dst` makes it."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


def decoded_samples(path) -> int:
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_every_container_keeps_every_audio_packet_priming_included(source, tmp_path, suffix):
    original = remux(source, tmp_path / f"in{suffix}")
    out = copy_video(original, tmp_path / f"out{suffix}")
    packets_in, packets_out = audio_packets(original)[1], audio_packets(out)[1]
    assert audio_packets(source)[1][0][0] < 0  # the AAC encoder's priming packet
    assert [data for *_, data in packets_out] == [data for *_, data in packets_in]
    assert decoded_samples(out) == decoded_samples(original)  # not 1,024 samples short


def test_frame_range_keeps_its_frames_and_the_matching_audio(source, tmp_path):
    out = copy_video(source, tmp_path / "cut.mp4", start=10, end=20)
    frames_in = list(read_frames(source))
    frames = list(read_frames(out))
    assert len(frames) == probe_video(out).frames == 10
    assert [f.time for f in frames] == pytest.approx([f.time - 10 / FPS for f in frames_in[10:20]])
    # Audio: the packets starting in [t10, t20), shifted by t10 (in 1/48000 s ticks).
    shift = round(Fraction(frames_in[10].pts) * probe_video(source).time_base * RATE)
    span = [p for p in audio_packets(source)[1] if 10 / FPS <= p[0] / RATE < 20 / FPS]
    assert len(span) == 16
    expected = [(pts - shift, duration, data) for pts, duration, data in span]
    assert audio_packets(out)[1] == expected
    # The cut's content is frames 10..19 of the source.
    for a, b in zip(frames_in[10:20], frames, strict=True):
        assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 4


def test_explicit_audio_span_and_frame_counter_time_stamps(source, tmp_path):
    path = tmp_path / "counter.mkv"
    with VideoWriter(path, 30, W, H, audio_from=source, audio_start=0.5, audio_end=0.75) as out:
        for i in range(5):
            out.write(pattern(i))  # pts=None: frame counter at 1 / fps
    assert [f.time for f in read_frames(path)] == pytest.approx(
        [i / 30 for i in range(5)], abs=1e-3
    )
    kept = [p for p in audio_packets(source)[1] if 0.5 <= p[0] / RATE < 0.75]
    tb, packets = audio_packets(path)  # Matroska counts in milliseconds
    assert [data for *_, data in packets] == [data for *_, data in kept]
    assert packets[0][0] * tb == pytest.approx(kept[0][0] / RATE - 0.5, abs=1e-3)


def test_aac_audio_does_not_push_the_frames_of_an_avi_late(tmp_path):
    """AVI counts frames: the AAC priming packet (21 ms before the first frame) made the muxer
    shift every stream, and the video landed at 0, 2, 3, ... in 1/30 s (issue 29, bug 4)."""
    src = make_video(tmp_path / "in.mp4", n=6, seconds=6 / FPS)
    out = copy_video(src, tmp_path / "out.avi", n=6)
    with av.open(str(out)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    assert times == pytest.approx([i / FPS for i in range(6)])
    assert [data for *_, data in audio_packets(out)[1]] == [
        data for *_, data in audio_packets(src)[1]
    ]


def test_audio_after_the_last_frame_is_kept_unless_the_video_is_cut(tmp_path):
    """Every audio packet of a whole video is copied, also one that starts after the last frame
    ends (issue 29, bug 5); a cut keeps the packets that start before its end."""
    src = make_video(tmp_path / "in.mkv", n=8, fps=24, rate=16000, seconds=1 / 3, audio_pts=False)
    tb, packets = audio_packets(src)
    assert packets[-1][0] * tb >= Fraction(8, 24)  # starts after the last frame's end
    whole = copy_video(src, tmp_path / "whole.mkv", n=8)
    assert audio_packets(whole)[1] == packets
    cut = copy_video(src, tmp_path / "cut.mkv", end=7, n=8)
    assert audio_packets(cut)[1] == [p for p in packets if p[0] * tb < Fraction(7, 24)]


@pytest.mark.parametrize("rotation", [180, -90])
def test_rotation_metadata_is_written(tmp_path, rotation):
    with VideoWriter(tmp_path / "r.mp4", 30, W, H, rotation=rotation) as out:
        out.write(pattern(0))
    assert probe_video(out.path).rotation % 360 == rotation % 360
    assert next(read_frames(out.path)).rgb.shape == (H, W, 3)  # pixels are never rotated


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mp4", "h264"), (".mov", "h264"), (".mkv", "h264"), (".webm", "vp9"), (".avi", "mpeg4")],
)
def test_default_codec_per_container(tmp_path, suffix, codec):
    with VideoWriter(tmp_path / f"x{suffix}", 30, W, H) as out:
        for i in range(3):
            out.write(pattern(i))
    info = probe_video(out.path)
    assert (info.codec, info.width, info.height, info.fps) == (codec, W, H, 30)
    frames = list(read_frames(out.path))
    assert [f.time for f in frames] == pytest.approx([0, 1 / 30, 2 / 30], abs=1e-3)
    assert np.abs(frames[2].rgb.astype(int) - pattern(2)).mean() < 4


@pytest.mark.parametrize("color_range", [1, 2], ids=["limited", "full"])
def test_colours_do_not_shift(tmp_path, source, color_range):
    """The writer's RGB → YUV matrix and range match the tags it writes (a mismatch, e.g.
    BT.709 data read as BT.601 or full range read as limited, moves this green by 12-25)."""
    info = probe_video(source)
    tagged = dataclasses.replace(info, color_range=color_range)
    with VideoWriter(tmp_path / "c.mp4", 30, W, H, color_from=tagged) as out:
        out.write(pattern(3))
    assert probe_video(out.path).color_range == color_range
    rgb = next(read_frames(out.path)).rgb.astype(int)
    inside = rgb[30:38, 22:30].reshape(-1, 3).mean(axis=0)  # the green square
    assert np.abs(inside - (40, 200, 60)).max() < 3
    assert np.abs(rgb - pattern(3)).mean() < 4


def test_odd_sizes_are_written_as_yuv444(tmp_path):
    image = pattern(0, width=W - 1, height=H - 1)
    with VideoWriter(tmp_path / "odd.mp4", 30, W - 1, H - 1) as out:
        out.write(image)
    assert out.pix_fmt == "yuv444p"
    info = probe_video(out.path)
    assert (info.width, info.height) == (W - 1, H - 1)
    assert np.abs(next(read_frames(out.path)).rgb.astype(int) - image).mean() < 2


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_nothing(tmp_path, source, error):
    folder = tmp_path / "out"
    with pytest.raises(error), VideoWriter(folder / "x.mp4", 30, W, H, audio_from=source) as out:
        for frame in read_frames(source):
            out.write(frame.rgb)
            if frame.index == 5:
                raise error("stop")
    assert list(folder.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(b"keep me")
    with pytest.raises(InputError, match="refusing to overwrite"):
        VideoWriter(path, 30, W, H)
    assert path.read_bytes() == b"keep me"
    with VideoWriter(path, 30, W, H, overwrite=True) as out:
        out.write(pattern(0))
    assert probe_video(path).frames == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4"]


def test_unusable_inputs_give_one_line_input_errors(tmp_path, source):
    data = source.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    audio_only = make_video(tmp_path / "audio.mp4", video=False)
    cases = {
        "truncated.mp4": "cannot decode",
        "random.mp4": "cannot decode",
        "audio.mp4": "has no video stream",
        "missing.mp4": "cannot read",
    }
    for name, message in cases.items():
        for call in (probe_video, read_frames):
            with pytest.raises(InputError, match=message) as error:
                call(tmp_path / name)
            assert name in one_line(error)
    assert audio_only.exists()


def test_truncated_file_fails_at_the_missing_frame(tmp_path, copied):
    data = copied.read_bytes()  # written with +faststart: the index comes first
    path = tmp_path / "cut_short.mp4"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert probe_video(path).frames == N
    seen = []
    with pytest.raises(InputError, match=r"cut_short.mp4 at frame \d+") as error:
        seen.extend(frame.index for frame in read_frames(path))
    assert 0 < len(seen) < N and f"frame {len(seen)}:" in one_line(error)
    assert seen == list(range(len(seen)))  # every frame before the damage came out


def test_a_truncated_mkv_is_refused_like_a_truncated_mp4(tmp_path, source):
    whole = copy_video(source, tmp_path / "whole.mkv")
    assert len(list(read_frames(whole))) == N  # the intact file passes the check
    path = tmp_path / "cut_short.mkv"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # no index to count
    seen = []
    with pytest.raises(InputError, match=r"cut_short.mkv at frame \d+: the file is truncated"):
        seen.extend(frame.index for frame in read_frames(path))
    assert 0 < len(seen) < N and seen == list(range(len(seen)))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi", ".mov"])
def test_truncated_or_corrupt_files_are_refused_in_every_container(tmp_path, suffix):
    """The frames that decode are checked against what the header or index promises, and decoder
    errors count: a cut or damaged file is an error after the frames before the damage, or with
    allow_truncated those frames and a warning (issue 29, bug 6: 9 of 20 frames passed)."""
    src = make_video(tmp_path / "src.mp4", n=20, seconds=20 / FPS)
    whole = copy_video(src, tmp_path / f"whole{suffix}", n=20)
    assert len(list(read_frames(whole))) == 20  # the intact file passes the checks
    data = whole.read_bytes()
    half, eighth = len(data) // 2, len(data) // 8
    garbage = np.random.default_rng(0).bytes(eighth)
    damaged = {
        "half": data[:half],
        "most": data[: len(data) * 9 // 10],
        "corrupt": data[:half] + garbage + data[half + eighth :],
    }
    for name, content in damaged.items():
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(content)
        seen = []
        with pytest.raises(InputError, match=rf"{name}{suffix} at frame \d+: ") as error:
            seen.extend(frame.index for frame in read_frames(path))
        assert len(seen) < 20 and seen == list(range(len(seen))), name
        assert f"at frame {len(seen)}:" in one_line(error)
        with pytest.warns(UserWarning, match=f"kept the {len(seen)} frames before it"):
            kept = [frame.index for frame in read_frames(path, allow_truncated=True)]
        assert kept == seen


def test_frame_range_errors(source):
    with pytest.raises(ConfigError):
        read_frames(source, 5, 5)
    with pytest.raises(InputError, match="past the end"):
        list(read_frames(source, start=N))
    assert [f.index for f in read_frames(source, 28, 99)] == [28, 29]


def test_codec_not_available(tmp_path):
    with pytest.raises(InputError, match="not available in this FFmpeg build") as error:
        VideoWriter(tmp_path / "x.mp4", 30, W, H, settings=VideoSettings("no_such_encoder"))
    one_line(error)
    with pytest.raises(ConfigError, match="audio encoder"):
        VideoWriter(tmp_path / "x.mp4", 30, W, H, settings=VideoSettings("aac"))
    with pytest.raises(ConfigError, match="cannot hold the aac audio"):
        VideoWriter(tmp_path / "x.webm", 30, W, H, audio_from=make_video(tmp_path / "a.mp4"))
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_video_settings_are_one_checked_frozen_value(tmp_path):
    settings = VideoSettings(crf=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.crf = 0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="crf must be"):
        VideoSettings(crf=-1)
    with pytest.raises(ConfigError, match="unknown pixel format 'rgb99'"):
        VideoSettings(pix_fmt="rgb99")
    with pytest.raises(ConfigError, match="unknown preset 'warp'"):
        VideoSettings("libx264", preset="warp")
    with pytest.raises(ConfigError, match="unknown preset 'warp'"):  # .mp4's default codec: x264
        VideoWriter(tmp_path / "x.mp4", 30, W, H, settings=VideoSettings(preset="warp"))
    assert not list(tmp_path.iterdir())
    assert VideoSettings(preset="warp").for_container(".webm").codec == "libvpx-vp9"
    x264 = settings.for_container(".mkv")
    assert x264.codec == "libx264" and x264.encoder_options() == {"crf": "20", "preset": "medium"}


def test_bad_frames_and_time_stamps_are_refused(tmp_path):
    with VideoWriter(tmp_path / "x.mp4", 30, W, H) as out:
        with pytest.raises(InputError, match="uint8 or uint16 RGB"):
            out.write(np.zeros((H, W), np.uint8))
        out.write(pattern(0), pts=10)
        with pytest.raises(InputError, match="not after"):
            out.write(pattern(1), pts=10)
        out.write(pattern(1), pts=11)
    assert [f.pts is not None for f in read_frames(out.path)] == [True, True]


def test_disk_full_gives_a_write_error_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes writes past 4 kB fail (EFBIG) like a full disk, without root."""
    noise = np.random.default_rng(0).integers(0, 256, (10, H, W, 3), dtype=np.uint8)
    folder = tmp_path / "out"
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with (
            pytest.raises(ReblurError, match="cannot write") as error,
            VideoWriter(folder / "x.mp4", 30, W, H, settings=VideoSettings(crf=0)) as out,
        ):
            for image in noise:
                out.write(image)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert "x.mp4" in one_line(error)
    assert list(folder.iterdir()) == []


def test_unwritable_targets_give_write_errors(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ReblurError, match="cannot write") as error:
        VideoWriter(tmp_path / "file" / "x.mp4", 30, W, H)
    one_line(error)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ReblurError, match="ermission denied"):
            VideoWriter(locked / "x.mp4", 30, W, H)


def test_real_frames_folder_to_video(data_dir, tmp_path):
    import cv2

    paths = sorted((data_dir / "gopro_clip_noGT").glob("*.png"))
    assert len(paths) == 20
    frames = [cv2.resize(read_image(p), (320, 180), interpolation=cv2.INTER_AREA) for p in paths]
    assert frames[0].shape == (180, 320, 3)
    with VideoWriter(tmp_path / "clip.mp4", 30, 320, 180) as out:
        for image in frames:
            out.write(image)
    info = probe_video(out.path)
    assert (info.frames, info.fps, info.width, info.height) == (20, 30, 320, 180)
    assert info.colorspace == 1  # tagged BT.709 by default
    decoded = list(read_frames(out.path))
    assert len(decoded) == 20
    for a, b in zip(frames, decoded, strict=True):
        assert np.abs(a.astype(int) - b.rgb.astype(int)).mean() < 4
        # No colour cast: a matrix or range mismatch moves channel means by 5-25 levels; 4:2:0
        # chroma subsampling of bright (clipping) detail costs about 1.
        assert np.abs(a.mean(axis=(0, 1)) - b.rgb.mean(axis=(0, 1))).max() < 2.5
