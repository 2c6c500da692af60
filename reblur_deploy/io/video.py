"""Video files ↔ RGB frames (PyAV / FFmpeg underneath).

Reading: :func:`probe_video` describes a file, :func:`read_frames` yields its frames as H×W×3
uint8 RGB arrays with their index, time stamp and time in seconds.

Writing: :class:`VideoWriter` encodes RGB frames and copies the audio of another file unchanged.
Defaults and what they mean:

* Codec per container: ``.mp4`` / ``.mov`` / ``.mkv`` → H.264 (libx264), ``.webm`` → VP9
  (libvpx-vp9), ``.avi`` → MPEG-4 part 2 (``mpeg4``, the AVI muxer's own default and what AVI
  players expect). ``VideoSettings(codec=...)``, the writer's ``settings``, picks any other
  encoder of the FFmpeg build.
* Quality: ``crf=18`` (constant quality, 0 = lossless, 51 = worst). For x264 18 is the usual
  "visually near-lossless" setting: compression artefacts are hard to see at normal viewing, so
  the deblurred detail survives. The same number goes to the other constant-quality encoders
  (x265, VP9, AV1; high quality there too); ``mpeg4`` gets a fixed quantiser
  ``max(2, round(crf / 9))`` (2 at crf 18). ``preset`` is x264's speed/size trade-off.
* Pixels: 4:2:0 (``yuv420p``), what every player decodes. 4:2:0 needs an even width and height;
  an odd-sized video is written 4:4:4 (``yuv444p``, x264's High 4:4:4 profile), which some
  hardware players (browsers, phones) cannot play. Crop to an even size for those.
* Colours: with ``color_from=`` (a :class:`VideoInfo`) the output gets the input's colour tags
  (matrix, primaries, transfer, range) and RGB is converted to YUV with the input's matrix and
  range, i.e. exactly the inverse of how :func:`read_frames` decoded the input, so colours do not
  shift. Without it the output is tagged BT.709, limited range (HD video, sRGB-like images).
  AVI with a codec that cannot carry tags (``mpeg4``) is written untagged BT.601, which is what
  decoders assume there.
* Time stamps: ``write(rgb, pts)`` takes ``pts`` in ``time_base`` units (``Frame.pts`` when the
  writer gets the input's ``time_base``); the output starts at 0: the first frame's pts is
  subtracted from all of them, so a whole video (starting at 0, as nearly all do) keeps its time
  stamps exactly and a cut keeps its frame spacing. ``pts=None`` numbers frames at ``1 / fps``.
* Audio: the audio streams of ``audio_from`` are remuxed packet by packet (no re-encoding, the
  bytes are unchanged). Packets that start in ``[audio_start, audio_end)`` seconds (the input's
  time line) are kept and shifted by ``audio_start``. By default both follow the video:
  ``audio_start`` = time of the first frame written, ``audio_end`` = end of the last frame
  written, so a frame range cut out of a video keeps the audio in sync with no arithmetic by the
  caller. Packet granularity: for AAC ≈ 21 ms at 48 kHz. When the first frame written is the
  input's first, every audio packet before it is copied, encoder priming (the AAC packet before
  the first frame, with a negative time stamp) included: MP4/MOV hide it with an edit list,
  MKV/WebM shift every stream by it (the video then starts a few ms after 0, in sync). AVI
  counts video frames, so there the audio starts at 0 instead and the video stays on its frame
  times (the priming's 1,024 samples, 21 ms at 48 kHz, then play before the sound). When
  the input's video has no frame after the last one written, every audio packet after it is
  copied too, audio that outlasts the video included. The decoded audio of a whole video is
  then exactly the input's.
* Rotation: the display rotation (``VideoInfo.rotation``) is stored as the stream's display
  matrix; frames themselves are never rotated. AVI cannot store it (a warning says so).
* Safety: the file is written as ``.<name>.<random>.part<suffix>`` in the target folder and
  renamed when complete; an exception (also Ctrl-C) inside ``with VideoWriter(...)`` deletes it
  and leaves nothing under the final name. Existing outputs are refused unless
  ``overwrite=True``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..atomic import temporary_path
from ..errors import ConfigError, InputError, ReblurError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")

#: Encoder used when ``codec`` is not given, per output suffix.
DEFAULT_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
}

_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
# Encoders with a constant-quality "crf" option, and those that also take x264-style presets.
_CRF_CODECS = {"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"}
_PRESET_CODECS = {"libx264", "libx264rgb", "libx265"}
# Encoders whose bitstream carries colour tags itself (needed where the container has none: AVI).
_TAGGED_CODECS = {"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"}
_X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
_HARDWARE = ("nvenc", "qsv", "vaapi", "amf", "videotoolbox", "v4l2m2m", "vulkan", "mf")
_VPX_SPEED = {
    "ultrafast": 8,
    "superfast": 7,
    "veryfast": 6,
    "faster": 5,
    "fast": 4,
    "medium": 3,
    "slow": 2,
    "slower": 1,
    "veryslow": 0,
}
# FFmpeg's AVColorSpace (frame and stream tags) → swscale matrix (SWS_CS_*) for RGB → YUV.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_UNSPECIFIED = 2  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC _UNSPECIFIED
_RANGE_LIMITED, _RANGE_FULL = 1, 2


def is_video(path: str | os.PathLike) -> bool:
    """True when the file name has a video suffix (the contents are not looked at)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` finds out about the first video stream of a file."""

    path: Path
    width: int
    height: int
    fps: Fraction  # average frame rate
    time_base: Fraction  # of the video stream: Frame.pts × time_base = seconds
    frames: int | None  # the container's frame count, None where it has none (mkv, webm)
    rotation: int  # display rotation, degrees counter-clockwise (as VideoFrame.rotation)
    codec: str
    has_audio: bool
    duration: float | None = None  # seconds, None if unknown
    # Colour tags of the first frame (FFmpeg enum values; 2 = unspecified, range 0 = unspecified).
    colorspace: int = _UNSPECIFIED
    color_primaries: int = _UNSPECIFIED
    color_trc: int = _UNSPECIFIED
    color_range: int = 0
    bit_depth: int = 8  # bits per sample of the decoded pixel format (10 for yuv420p10le)


@dataclass
class Frame:
    """One decoded frame: H×W×3 RGB (uint8; uint16 over the full 16-bit range for deeper video
    read with ``keep_depth``), its index in the file, time stamp and seconds."""

    rgb: np.ndarray
    index: int
    pts: int | None  # in the stream's time_base; None if the file has none
    time: float  # seconds (pts × time_base, or index / fps without pts)


def _reason(error: BaseException) -> str:
    """The one-line human part of an FFmpeg / OS error."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"cannot read {path}: no such file")
    if path.is_dir():
        raise InputError(f"cannot read {path}: it is a folder, not a video file")
    try:
        return av.open(str(path), "r")
    except av.error.PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"cannot decode {path}: not a media file, or a corrupt one ({_reason(e)})"
        ) from None


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise InputError(f"{path} has no video stream")
    return container.streams.video[0]


def _frame_rate(stream, path: Path) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    raise InputError(f"{path}: the video stream has no frame rate")


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Describe the first video stream of ``path`` (decodes one frame for rotation and colours).

    Raises :class:`InputError` (one line naming the file) for a missing or unreadable file, one
    that is not a media file or is corrupt, one without a video stream or without video frames.
    """
    path = Path(path)
    container = _open_input(path)
    try:
        stream = _video_stream(container, path)
        fps = _frame_rate(stream, path)
        first = None
        try:
            for packet in container.demux(stream):
                decoded = packet.decode()
                if decoded:  # the flush packet at the end drains a decoder holding frames
                    first = decoded[0]
                    break
        except (av.FFmpegError, OSError) as e:
            raise InputError(f"cannot decode {path} at frame 0: {_reason(e)}") from None
        if first is None:
            raise InputError(f"{path} has no video frames")
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return VideoInfo(
            path=path,
            width=stream.codec_context.width or first.width,
            height=stream.codec_context.height or first.height,
            fps=fps,
            time_base=Fraction(stream.time_base),
            frames=stream.frames or None,
            rotation=int(first.rotation),
            codec=stream.codec_context.codec.canonical_name,  # "h264", not the decoder's name
            has_audio=bool(container.streams.audio),
            duration=duration,
            colorspace=int(first.colorspace),
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
            color_range=int(first.color_range),
            bit_depth=_bits(first.format),
        )
    finally:
        container.close()


def read_frames(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    *,
    keep_depth: bool = False,
    allow_truncated: bool = False,
) -> Iterator[Frame]:
    """Decode the frames ``[start, end)`` (by index, 0-based) of the first video stream.

    Frames are 8-bit RGB; with ``keep_depth`` a video of more than 8 bits per sample (10-bit
    HDR or camera footage) gives uint16 RGB instead, so that no precision is lost.

    The file is opened (and checked) when this is called; frames are decoded lazily. Frames
    before ``start`` are decoded (inter-frame codecs need them) but not converted to RGB.
    ``end`` past the last frame just stops at the end, like slicing. Raises :class:`InputError`
    for unusable files, a file without frames or a ``start`` past its end.

    A truncated or corrupt file (fewer frames than its container's index, header count or
    duration promises, data the demuxer or decoder flags as damaged, a decode error) raises
    :class:`TruncatedVideoError` naming the first frame missing, after the frames before it;
    with ``allow_truncated`` those frames are all, and a warning says how many there were.
    """
    if start < 0 or (end is not None and end <= start):
        raise ConfigError(f"invalid frame range [{start}, {end}): need 0 <= start < end")
    path = Path(path)
    container = _open_input(path)
    try:
        stream = _video_stream(container, path)
        fps = _frame_rate(stream, path)
        stream.thread_type = "AUTO"
    except BaseException:
        container.close()
        raise
    return _frames(container, stream, path, fps, start, end, keep_depth, allow_truncated)


class TruncatedVideoError(InputError):
    """A video file that ends before what its container promises, or holds data the decoder
    cannot decode: the frames before the damage came out, the rest did not."""


def _damaged(path: Path, index: int, why: str) -> TruncatedVideoError:
    return TruncatedVideoError(f"cannot decode {path} at frame {index}: {why}")


def _decoded(container, stream, path: Path, fps: Fraction):
    """Yield (index, av.VideoFrame) pairs; damage raises TruncatedVideoError naming the index of
    the first frame that could not be decoded.

    A truncated file mostly just ends early (FFmpeg reports the end of the file), and a decoder
    conceals damaged data, so both are checked: a packet the demuxer flags as corrupt, a frame
    the decoder flags as concealed, a decoder error, and at the end what the container promises
    (see _check_complete).
    """
    packets = index = 0  # index: of the next frame
    end = None  # end time (s) of the last video packet read
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:  # cut short by the end of the file, or damaged
                for frame in stream.decode(None):  # the frames complete before the damage
                    yield index, frame
                    index += 1
                raise _damaged(path, index, "truncated or corrupt data")
            if packet.dts is not None or packet.size > 0:  # not the flush packet at the end
                packets += 1
                if packet.pts is not None and stream.time_base:
                    length = packet.duration * stream.time_base if packet.duration else 1 / fps
                    last = float(packet.pts * stream.time_base + length)
                    end = last if end is None else max(end, last)
            for frame in packet.decode():  # the flush packet at the end drains the decoder
                if frame.is_corrupt:
                    raise _damaged(path, index, "corrupt data (the decoder concealed errors)")
                yield index, frame
                index += 1
    except (av.FFmpegError, OSError) as e:
        raise _damaged(path, index, _reason(e)) from None
    _check_complete(stream, path, index, packets, end, fps)


def _check_complete(stream, path: Path, frames: int, packets: int, end: float | None,
                    fps: Fraction) -> None:  # fmt: skip
    """Raise TruncatedVideoError when fewer video packets came than the container's index or
    header count lists (MP4, MOV, AVI), or the video ended half a frame or more before the end
    its header states (MKV and WebM list no packets before their end)."""
    promised = max(len(stream.index_entries), stream.frames or 0)
    if packets < promised:
        raise _damaged(path, frames, f"the file is truncated ({packets} of the {promised} "
                                     "frames its index lists are present)")  # fmt: skip
    expected = _stream_end(stream)
    if end is not None and expected is not None and end <= expected - 0.5 / fps:
        raise _damaged(path, frames, f"the file is truncated (video ends at {end:.2f} s of "
                                     f"the {expected:.2f} s its header gives)")  # fmt: skip


def _stream_end(stream) -> float | None:
    """The video stream's end in seconds as its container's header states it: start + the
    stream's duration (MP4, MOV, ...) or Matroska's DURATION tag, the end time FFmpeg writes per
    stream (MKV and WebM have no packet index before the end of the file to count against)."""
    if stream.duration is not None and stream.time_base:
        start = stream.start_time * stream.time_base if stream.start_time else 0
        return float(start + stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if not tag:
        return None
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _bits(video_format) -> int:
    """Bits per sample of a pixel format (8 for yuv420p, 10 for yuv420p10le)."""
    return max((c.bits for c in video_format.components), default=8)


def _frames(container, stream, path: Path, fps: Fraction, start: int, end: int | None,
            keep_depth: bool, allow_truncated: bool):  # fmt: skip
    time_base = stream.time_base
    count = kept = 0  # frames decoded, frames yielded
    try:
        for index, av_frame in _decoded(container, stream, path, fps):
            count = index + 1
            if index < start:
                continue
            try:
                deep = keep_depth and _bits(av_frame.format) > 8
                rgb = av_frame.to_ndarray(format="rgb48le" if deep else "rgb24")
            except (av.FFmpegError, ValueError) as e:
                raise InputError(f"cannot decode {path} at frame {index}: {_reason(e)}") from None
            pts = av_frame.pts
            time = float(pts * time_base) if pts is not None and time_base else index / fps
            yield Frame(rgb=rgb, index=index, pts=pts, time=time)
            kept += 1
            if end is not None and index + 1 >= end:
                return
    except TruncatedVideoError as e:
        if not allow_truncated or kept == 0:
            raise
        warnings.warn(f"{e}; kept the {kept} frames before it", stacklevel=2)
    finally:
        container.close()
    if count == 0:
        raise InputError(f"{path} has no video frames")
    if count <= start:
        raise InputError(f"{path} has {count} video frames: start={start} is past the end")


def _as_fraction(value, what: str) -> Fraction:
    try:
        fraction = Fraction(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, float):
        fraction = fraction.limit_denominator(1001)  # 29.97 → 2997/100, 30000/1001 stays
    if fraction <= 0:
        raise ConfigError(f"{what} must be positive, got {value!r}")
    return fraction


def _encoder(codec: str) -> av.Codec:
    try:
        encoder = av.Codec(codec, "w")
    except (ValueError, av.FFmpegError):
        raise InputError(
            f"video encoder {codec!r} is not available in this FFmpeg build "
            f"(FFmpeg {av.ffmpeg_version_info}); try libx264"
        ) from None
    if encoder.type != "video":
        raise ConfigError(f"{codec!r} is an {encoder.type} encoder, not a video one")
    return encoder


class _AudioCopier:
    """The audio streams of one input, remuxed packet by packet into a writer's output (no
    re-encoding): the packets that start in ``[start, end)`` seconds of the input's time line,
    shifted by ``start``. ``start`` defaults to the time of the first frame written (``begin``)
    and ``end`` to the end of the last one, or to the end of the input when its video has no
    frame after the last one written (``finish``). See the module
    docstring for encoder priming and cuts."""

    def __init__(self, container, start: Fraction | None, end: Fraction | None):
        self._in = container
        self.streams = list(container.streams.audio)
        self.start, self.end = start, end
        self._whole_start = start is None or start <= 0  # see begin
        self._map: dict[int, object] = {}
        self._packets = None
        self._pending: collections.deque = collections.deque()  # read, not yet due
        self._shift: dict[int, int] = {}
        self._past_end: set[int] = set()  # streams that reached ``end``
        self._latest_frame = float("-inf")  # the latest video frame read (s, input time line)

    @classmethod
    def open(cls, path, start, end) -> _AudioCopier | None:
        """The copier of ``path``'s audio, or None without a path or audio streams."""
        if path is None:
            return None
        copier = cls(
            _open_input(Path(path)),
            None if start is None else Fraction(start),
            None if end is None else Fraction(end),
        )
        if not copier.streams:
            copier.close()
            return None
        return copier

    def add_streams(self, out, target: Path) -> None:
        """One output stream per audio stream, copying its codec parameters and metadata."""
        for template in self.streams:
            try:
                stream = out.add_stream_from_template(template)
            except ValueError:
                raise ConfigError(
                    f"{target}: a {target.suffix.lower()} file cannot hold the "
                    f"{template.codec_context.name} audio of {Path(self._in.name)}; "
                    "choose another container (.mkv)"
                ) from None
            stream.metadata.update(template.metadata)
            self._map[template.index] = stream
        # AVI counts video frames: where every stream is shifted by a priming packet (below),
        # its video would land a whole frame late; there the audio starts at 0 instead.
        self._from_zero = target.suffix.lower() == ".avi"
        # The video too, to tell whether frames follow the last one written (finish).
        self._packets = self._in.demux(*self.streams, *self._in.streams.video[:1])

    def begin(self, first_frame: Fraction) -> None:
        """The first frame written is at ``first_frame`` seconds of the input's time line. When
        it is the input's first frame (no cut at the start), every packet before it is kept."""
        if self.start is not None:
            return
        self.start = first_frame
        videos = self._in.streams.video
        self._whole_start = bool(
            videos
            and videos[0].start_time is not None
            and videos[0].time_base is not None
            and videos[0].start_time * videos[0].time_base == first_frame
        )

    def _next_packet(self):
        if self._pending:
            return self._pending.popleft()
        try:
            for packet in self._packets:
                if packet.dts is not None and packet.pts is not None:
                    if packet.stream.type == "video":
                        time = packet.pts * packet.stream.time_base
                        self._latest_frame = max(self._latest_frame, time)
                    return packet
        except av.FFmpegError as e:
            name = Path(self._in.name)
            raise InputError(f"cannot read the audio of {name}: {_reason(e)}") from None
        return None

    def _video_goes_on(self, last_frame: Fraction) -> bool:
        """Whether the input has a video frame after ``last_frame`` seconds (or no video at all
        to tell); the audio packets read ahead meanwhile wait in ``_pending``."""
        if not self._in.streams.video:
            return True
        ahead = []
        try:
            while self._latest_frame <= last_frame and (packet := self._next_packet()) is not None:
                ahead.append(packet)
        finally:
            self._pending.extendleft(reversed(ahead))
        return self._latest_frame > last_frame

    def finish(self, out, duration: Fraction, last_frame: Fraction) -> None:
        """Copy the rest: up to ``end`` if it was given; else, when the input's video goes on
        after ``last_frame`` (a cut), up to ``duration`` after ``start``, and when it does not
        (the whole video to its end), every packet, audio outlasting the video included."""
        if self.end is None and self._video_goes_on(last_frame):
            self.end = self.start + duration
        self.mux(out, until=None)

    def mux(self, out, until: Fraction | None) -> None:
        """Copy the packets that start before ``until`` seconds of output time; with
        ``until=None`` all of them up to ``end``."""
        end = self.end  # input time line
        while len(self._past_end) < len(self._map):
            packet = self._next_packet()
            if packet is None:
                break
            if packet.stream.type == "video":
                continue
            index, tb = packet.stream.index, packet.stream.time_base
            time = packet.pts * tb  # input time line
            if until is not None and time - self.start >= until:
                self._pending.appendleft(packet)  # not due yet
                break
            if end is not None and time >= end:
                self._past_end.add(index)
                continue
            if not self._whole_start and time < self.start - tb / 2:
                continue  # before a cut's start (a whole video keeps what precedes its frames)
            # An encoder's priming packet keeps its negative time stamp: MP4/MOV hide it with an
            # edit list, MKV/WebM shift every stream by it (the video then starts a few ms
            # after 0, in sync), AVI starts the audio at 0; dropping it would cut the decoded
            # audio short.
            shift = round(self.start / tb)
            if self._from_zero:
                shift = min(shift, packet.pts)
            shift = self._shift.setdefault(index, shift)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self._map[index]
            out.mux(packet)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._in.close()


@dataclass(frozen=True)
class VideoSettings:
    """How a ``VideoWriter`` encodes (see the module docstring): the encoder (None: the
    container's default, ``DEFAULT_CODECS``), its constant quality ``crf``, x264/x265's speed
    ``preset`` and the pixel format (None: 4:2:0 of the input's depth where the encoder has it).
    """

    codec: str | None = None
    crf: int = 18
    preset: str = "medium"
    pix_fmt: str | None = None

    def __post_init__(self):
        if self.crf < 0:
            raise ConfigError(f"crf must be ≥ 0, got {self.crf}")
        if self.codec in _PRESET_CODECS and self.preset not in _X264_PRESETS:
            raise ConfigError(
                f"unknown preset {self.preset!r} (use one of {', '.join(_X264_PRESETS)})"
            )
        if self.pix_fmt is not None:
            try:
                av.VideoFormat(self.pix_fmt)
            except ValueError:
                raise ConfigError(
                    f"unknown pixel format {self.pix_fmt!r} (e.g. yuv420p, yuv420p10le)"
                ) from None

    def for_container(self, suffix: str) -> VideoSettings:
        """These settings with the codec resolved for a file of ``suffix`` (``.mp4``, ...)."""
        return self if self.codec else dataclasses.replace(self, codec=DEFAULT_CODECS[suffix])

    def encoder_options(self) -> dict[str, str]:
        """The FFmpeg options of the (resolved) codec that carry these settings."""
        options: dict[str, str] = {}
        if self.codec in _CRF_CODECS:
            options["crf"] = str(self.crf)
        if self.codec in _PRESET_CODECS:
            options["preset"] = self.preset
        if self.codec == "libx265":
            options["x265-params"] = "log-level=error"
        if self.codec == "libvpx-vp9":
            options["row-mt"] = "1"
            options["cpu-used"] = str(_VPX_SPEED.get(self.preset, 3))
        if self.codec == "mpeg4":
            options["flags"] = "+qscale"
            options["global_quality"] = str(max(2, round(self.crf / 9)) * 118)  # × FF_QP2LAMBDA
        return options


@dataclass(frozen=True)
class _Colours:
    """The colour tags a writer stores and the RGB → YUV conversion that matches them."""

    colorspace: int
    primaries: int
    trc: int
    range: int
    sws_matrix: int | None  # None: swscale's default (601)
    sws_range: int


def _colours(color_from: VideoInfo | None, suffix: str, codec: str) -> _Colours:
    if color_from is None:
        tags = (1, 1, 1, _RANGE_LIMITED)  # BT.709 matrix, primaries, transfer; TV range
    else:
        c = color_from
        tags = (c.colorspace, c.color_primaries, c.color_trc, c.color_range)
    if suffix == ".avi" and codec not in _TAGGED_CODECS:
        # Neither AVI nor e.g. MPEG-4 part 2 can carry colour tags; decoders then assume
        # BT.601 limited range, so convert with that (tags only describe what is stored).
        tags = (_UNSPECIFIED, _UNSPECIFIED, _UNSPECIFIED, 0)
    colorspace, primaries, trc, range_ = (int(t) for t in tags)
    sws_range = _RANGE_FULL if range_ == _RANGE_FULL else _RANGE_LIMITED
    return _Colours(colorspace, primaries, trc, range_, _SWS_MATRIX.get(colorspace), sws_range)


class VideoWriter:
    """Encode RGB frames into a video file, optionally with the audio of another file.

    ::

        info = probe_video(src)
        with VideoWriter(dst, info.fps, info.width, info.height, time_base=info.time_base,
                         rotation=info.rotation, audio_from=src, color_from=info,
                         settings=VideoSettings(crf=20)) as out:
            for frame in read_frames(src, start, end):
                out.write(process(frame.rgb), frame.pts)

    See the module docstring for codecs, quality, pixel formats, colours, time stamps and audio.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps,
        width: int,
        height: int,
        *,
        settings: VideoSettings = VideoSettings(),
        time_base=None,
        rotation: int = 0,
        audio_from: str | os.PathLike | None = None,
        audio_start: float | None = None,
        audio_end: float | None = None,
        color_from: VideoInfo | None = None,
        overwrite: bool = False,
        bit_depth: int = 8,
    ) -> None:
        self.path, self.overwrite = Path(path), overwrite
        self.frames_written = 0
        self._out, self._audio, self._tmp, self._done = None, None, None, False
        suffix = self._check_target(width, height)
        self.fps = _as_fraction(fps, "fps")
        self.time_base = _as_fraction(time_base, "time_base") if time_base else 1 / self.fps
        if audio_start is not None and audio_end is not None and audio_end <= audio_start:
            raise ConfigError(f"empty audio span [{audio_start}, {audio_end}) seconds")
        self.settings = settings.for_container(suffix)
        self.pix_fmt = self._pixel_format(_encoder(self.settings.codec), bit_depth)
        self._enc_tb = self._encoder_time_base(suffix)
        self._colours = _colours(color_from, suffix, self.settings.codec)
        self._audio = _AudioCopier.open(audio_from, audio_start, audio_end)
        try:
            self._tmp = temporary_path(self.path)  # now: a permission problem shows at once
            self._open_output(suffix, rotation)
        except BaseException:
            self.abort()
            raise

    # -- setup ---------------------------------------------------------------------------------

    def _check_target(self, width: int, height: int) -> str:
        """Check the path and the frame size (sets ``width``, ``height``); the suffix."""
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise InputError(
                f"{self.path}: unsupported video suffix (use one of {', '.join(VIDEO_SUFFIXES)})"
            )
        if self.path.exists() and not self.overwrite:
            raise InputError(f"{self.path} exists; refusing to overwrite it (use --overwrite)")
        if not (isinstance(width, int | np.integer) and isinstance(height, int | np.integer)):
            raise ConfigError(f"width and height must be integers, got {width!r}, {height!r}")
        if width <= 0 or height <= 0:
            raise ConfigError(f"invalid video size {width}×{height}")
        self.width, self.height = int(width), int(height)
        return suffix

    def _encoder_time_base(self, suffix: str) -> Fraction:
        """The caller's time base, except where the format cannot hold it."""
        if suffix == ".avi" or (
            self.settings.codec == "mpeg4" and self.time_base.denominator > 65535
        ):
            return 1 / self.fps  # AVI is constant-rate; MPEG-4 caps the denominator
        return self.time_base

    def _pixel_format(self, encoder: av.Codec, bit_depth: int) -> str:
        """The settings' ``pix_fmt`` checked against the encoder; by default yuv420p, or
        yuv420p10le for ``bit_depth`` > 8 where the encoder has it (else a warning). At an odd
        width or height, where 4:2:0 and 4:2:2 cannot halve the chroma, the 4:4:4 format of the
        same depth."""
        formats = {f.name for f in encoder.video_formats or ()}
        pix_fmt, codec = self.settings.pix_fmt, self.settings.codec
        chosen = pix_fmt or "yuv420p"
        if pix_fmt is None and bit_depth > 8:
            if "yuv420p10le" in formats:
                chosen = "yuv420p10le"
            else:
                warnings.warn(
                    f"{self.path}: the input has {bit_depth} bits per sample and {codec!r} "
                    "writes 8; use --codec libx264 (or libx265) to keep 10 bits",
                    stacklevel=3,
                )
        if self.width % 2 or self.height % 2:
            chosen = chosen.replace("420", "444").replace("422", "444")
        if formats and chosen not in formats:
            raise ConfigError(
                f"encoder {codec!r} cannot write {chosen} ({self.width}×{self.height}); "
                f"it writes {', '.join(sorted(formats))}"
            )
        return chosen

    def _open_output(self, suffix: str, rotation: int) -> None:
        codec = self.settings.codec
        options = {"movflags": "+faststart"} if suffix in (".mp4", ".mov") else {}
        try:
            self._out = av.open(str(self._tmp), "w", format=_MUXERS[suffix], options=options)
            stream = self._out.add_stream(codec, rate=self.fps)
        except ValueError as e:  # the muxer refuses the codec
            raise ConfigError(f"{self.path}: {_reason(e)}") from None
        except (av.FFmpegError, OSError) as e:
            raise ReblurError(f"cannot write {self.path}: {_reason(e)}") from None
        ctx = stream.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, self.pix_fmt
        ctx.time_base = self._enc_tb
        stream.time_base = self._enc_tb
        ctx.colorspace, ctx.color_primaries = self._colours.colorspace, self._colours.primaries
        ctx.color_trc, ctx.color_range = self._colours.trc, self._colours.range
        ctx.options = self.settings.encoder_options()
        if suffix == ".avi":
            ctx.max_b_frames = 0  # AVI stores no presentation time stamps
        if rotation % 360:
            if suffix == ".avi":
                warnings.warn(
                    f"{self.path}: AVI cannot store the display rotation ({rotation}°); "
                    "the video will play unrotated",
                    stacklevel=3,
                )
            else:
                stream.set_display_rotation(rotation)
        try:
            ctx.open()
        except (av.FFmpegError, OSError, ValueError) as e:
            hint = ""
            if any(f"_{hw}" in codec for hw in _HARDWARE):
                hint = " (a hardware encoder: it needs its device and driver on this machine)"
            raise InputError(f"cannot open video encoder {codec!r}: {_reason(e)}{hint}") from None
        self._video = stream

        if self._audio is not None:
            self._audio.add_streams(self._out, self.path)

    # -- writing -------------------------------------------------------------------------------

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        """Encode one H×W×3 RGB frame (uint8, or uint16 for deeper video); ``pts`` in
        ``time_base`` units (see module doc)."""
        if self._done or self._out is None:
            raise ReblurError(f"cannot write {self.path}: the writer is closed")
        shape = (self.height, self.width, 3)
        if (
            not isinstance(rgb, np.ndarray)
            or rgb.dtype not in (np.uint8, np.uint16)
            or rgb.shape != shape
        ):
            got = f"{rgb.shape} {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb)
            raise InputError(
                f"frame {self.frames_written} for {self.path}: expected a "
                f"{self.height}×{self.width}×3 uint8 or uint16 RGB array, got {got}"
            )
        if pts is None:
            pts = round(self.frames_written / self.fps / self.time_base)
        pts = int(pts)
        if self.frames_written == 0:
            self._pts0 = pts
            self._last_pts = None
            if self._audio is not None:
                self._audio.begin(pts * self.time_base)
        elif pts <= self._last_pts:
            raise InputError(
                f"frame {self.frames_written} for {self.path}: "
                f"pts {pts} is not after the previous {self._last_pts}"
            )
        self._last_pts = pts
        rel = (pts - self._pts0) * self.time_base  # seconds since the first frame
        enc_pts = round(rel / self._enc_tb)
        if self.frames_written and enc_pts <= self._last_enc_pts:
            enc_pts = self._last_enc_pts + 1  # rounding to a coarser (AVI) clock
        self._last_enc_pts = enc_pts

        layout = "rgb24" if rgb.dtype == np.uint8 else "rgb48le"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=layout)
        frame = frame.reformat(
            format=self.pix_fmt,
            dst_colorspace=self._colours.sws_matrix,
            dst_color_range=self._colours.sws_range,
        )
        frame.pts = enc_pts
        frame.time_base = self._enc_tb
        try:
            self._out.mux(self._video.encode(frame))
            if self._audio is not None:
                self._audio.mux(self._out, until=rel)
        except BaseException as e:
            self._fail(e)
        self.frames_written += 1

    def _fail(self, error: BaseException):
        """Delete the temporary file; re-raise write errors as one-line ReblurErrors."""
        self.abort()
        if isinstance(error, av.FFmpegError | OSError):
            raise ReblurError(f"cannot write {self.path}: {_reason(error)}") from None
        raise error

    # -- finishing -----------------------------------------------------------------------------

    def close(self) -> Path:
        """Flush the encoder, copy the remaining audio, finish the file and rename it."""
        if self._done:
            if self._tmp is None and self.path.exists():
                return self.path
            raise ReblurError(f"cannot write {self.path}: the writer was aborted")
        if self.frames_written == 0:
            self.abort()
            raise ReblurError(f"cannot write {self.path}: no frames were written")
        try:
            self._out.mux(self._video.encode(None))
            if self._audio is not None:  # up to the end of the last frame
                duration = (self._last_pts - self._pts0) * self.time_base + 1 / self.fps
                self._audio.finish(self._out, duration, self._last_pts * self.time_base)
            self._out.close()
            self._close_audio()
            if self.path.exists() and not self.overwrite:
                self.abort()
                raise InputError(f"{self.path} exists; refusing to overwrite it (use --overwrite)")
            os.replace(self._tmp, self.path)
        except BaseException as e:
            self._fail(e)
        self._tmp = None
        self._done = True
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the temporary file; nothing is left under the final name."""
        self._done = True
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()  # first: finishing an unlinked file is quick (no faststart pass)
        if self._out is not None:
            out, self._out = self._out, None
            with contextlib.suppress(Exception):
                out.close()
        self._close_audio()
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _close_audio(self) -> None:
        if self._audio is not None:
            audio, self._audio = self._audio, None
            audio.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):
                self.abort()
