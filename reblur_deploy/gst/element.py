"""``reblurdeblur``: a GStreamer video filter that deblurs every frame with a ``Deblurrer``.

Loaded by GStreamer's Python plugin loader (see ``reblur_deploy.gst``), never imported by the
rest of the package. Caps: raw RGB or BGR video of any size and rate, the same on both sides
(put ``videoconvert`` around it for other formats; anything else fails negotiation, which
GStreamer reports as ``not-negotiated``). Buffers keep their time stamps, durations and flags
(GstBaseTransform copies them to the output buffer).

Properties, named as ``Deblurrer``'s keywords and ``reblur-run``'s options: ``weights``
(bundled name or file; default: the device's bundled model), ``device``, ``backend`` (auto,
torch, compile, onnxruntime, or an exported ``.onnx`` file or TensorRT ``.engine``), ``dtype``,
``tile``, ``tta-steps`` (0 = none; ``Deblurrer(tta_steps=)``, ``--tta``), ``tta-video`` (the
video mode, default on: carry-over, one step a frame on crops), ``tta-lr``, ``tta-interval``
(adapt every N-th frame, the frames between run on the carried weights), ``stats`` (an element
message per frame; ``stats-blur-score`` adds MR's blur score), ``share`` (one network for
every element of the same model). ``tta`` is the old name of ``tta-steps``, kept for one
release with a GStreamer warning. Properties are checked and the networks loaded when the
element goes to READY; ``reblur-gst-launch`` checks the same properties before the pipeline
starts (sinks open their files at READY too): a bad property or model is one error line and
leaves nothing behind.

Live pipelines (docs/DEPLOY.md): QoS is on (GstBaseTransform's ``qos`` property): a buffer that
the sink's QoS events say is already late is dropped before it is deblurred, and GStreamer
posts a QoS message for it; at end of stream the element posts one line with the frames
deblurred and dropped. The element answers the LATENCY query with its processing time (measured
on a warm-up frame when the caps are set, and raised, with a latency message, when frames take
longer). With TTA carry-over, a dropped frame is simply not seen: the carried weights continue
from the last frame deblurred (a scene cut is still detected against it).

Flushing (a seek) and a new stream forget what TTA carried over.
"""

from __future__ import annotations

import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
import numpy as np  # noqa: E402
from gi.repository import GLib, GObject, Gst, GstBase, GstVideo  # noqa: E402

Gst.init(None)

CAPS = Gst.Caps.from_string(
    "video/x-raw, format=(string){ RGB, BGR }, width=(int)[ 1, 32768 ], "
    "height=(int)[ 1, 32768 ], framerate=(fraction)[ 0/1, 2147483647/1 ]"
)


def _template(name: str, direction: Gst.PadDirection) -> Gst.PadTemplate:
    return Gst.PadTemplate.new(name, direction, Gst.PadPresence.ALWAYS, CAPS)


# Networks shared between elements of one process (``share``): (weights, device, dtype, backend,
# tile) → the Deblurrer, alive while an element uses it. Plain inference only: TTA changes its
# network's weights per stream.
_SHARED: dict[tuple, object] = {}
_USERS: dict[tuple, int] = {}
_SHARED_LOCK = threading.Lock()
LATENCY_MARGIN = 1.25  # the reported latency: the processing time seen, with this margin


class ReblurDeblur(GstBase.BaseTransform):
    __gtype_name__ = "GstReblurDeblur"  # instances are then named reblurdeblur0, ...
    __gstmetadata__ = (
        "Deblur (Clean Images are Hard to Reblur)",
        "Filter/Effect/Video",
        "Removes motion blur with the deblurring module of reblur-deploy, optionally with its "
        "self-supervised test-time adaptation",
        "reblur-deploy",
    )
    __gsttemplates__ = (_template("src", Gst.PadDirection.SRC),
                        _template("sink", Gst.PadDirection.SINK))  # fmt: skip

    weights = GObject.Property(
        type=str,
        default="",
        nick="weights",
        blurb="Bundled model name or weight file [default: per device]",
    )
    device = GObject.Property(type=str, default="auto", blurb="auto, cpu, cuda, cuda:1, ...")
    backend = GObject.Property(
        type=str,
        default="auto",
        blurb="auto (the fastest engine within 1/255 of torch; torch with TTA), torch, compile, "
        "onnxruntime, an exported .onnx file or a TensorRT .engine",
    )
    dtype = GObject.Property(type=str, default="fp32", blurb="fp32, fp16 or bf16")
    # Integer and float properties take any value here and are checked when the element goes
    # to READY: GObject's own range check only warns and keeps the old value.
    tile = GObject.Property(
        type=int, default=0, blurb="Tile size (0: whole frames, tiled only when memory is short)"
    )
    tta_steps = GObject.Property(type=int, default=0, blurb="TTA steps per frame (0: none)")
    tta = GObject.Property(type=int, default=0, blurb="Deprecated: use tta-steps")
    tta_video = GObject.Property(
        type=bool, default=True, blurb="TTA in the video mode (carry-over, a step a frame on crops)"
    )
    tta_lr = GObject.Property(
        type=float, default=0.0, blurb="Adam rate of TTA steps (0: the rate the weights recommend)"
    )
    tta_interval = GObject.Property(
        type=int, default=1, blurb="Video mode: adapt every N-th frame, carry the weights between"
    )
    stats = GObject.Property(
        type=bool,
        default=False,
        blurb="Post a 'reblurdeblur-frame' element message per frame (time stamp, seconds, TTA "
        "steps and loss)",
    )
    stats_blur_score = GObject.Property(
        type=bool,
        default=False,
        blurb="Add MR's blur score of each output to the stats messages (one MR pass a frame: "
        "about 3x unet-lite's inference)",
    )
    share = GObject.Property(
        type=bool,
        default=True,
        blurb="Without TTA, share one network with the other elements of the same model",
    )

    def __init__(self):
        super().__init__()
        self.set_qos_enabled(True)  # late buffers are dropped before they are deblurred
        self.deblurrer = None
        self._key: tuple | None = None
        self.info: GstVideo.VideoInfo | None = None
        self._bgr = False  # the caps' channel order (the Deblurrer, maybe shared, takes RGB)
        self._latency = 0  # nanoseconds, what the LATENCY query is told
        self._slowest = 0.0  # the longest processing time seen since the last report, seconds
        self._counts = {"in": 0, "deblurred": 0}
        probe = Gst.PadProbeType.QUERY_UPSTREAM | Gst.PadProbeType.PULL  # once answered
        self.get_static_pad("src").add_probe(probe, self._answer_latency)

    # -- setup --------------------------------------------------------------------------------

    def _fail(self, text: str) -> None:
        """Post one GStreamer error with ``text`` (what gst-launch-1.0 prints after ERROR)."""
        error = GLib.Error.new_literal(Gst.CoreError.quark(), text, Gst.CoreError.FAILED)
        self.post_message(Gst.Message.new_error(self, error, text))

    def _warn(self, text: str) -> None:
        """Post one GStreamer warning (gst-launch-1.0 prints it after WARNING)."""
        error = GLib.Error.new_literal(Gst.CoreError.quark(), text, Gst.CoreError.FAILED)
        self.post_message(Gst.Message.new_warning(self, error, text))

    def _inform(self, text: str) -> None:
        """Post one GStreamer info message (gst-launch-1.0 prints it after INFO)."""
        info = GLib.Error.new_literal(Gst.CoreError.quark(), text, Gst.CoreError.FAILED)
        self.post_message(Gst.Message.new_info(self, info, text))

    def _tta_config(self):
        """The TTAConfig of the properties (None: no TTA), after checking every property."""
        from reblur_deploy import TTAConfig
        from reblur_deploy.gst import check_properties

        names = ("weights", "device", "dtype", "backend", "tile", "tta-steps", "tta",
                 "tta-interval", "tta-lr")  # fmt: skip
        check_properties({name: self.get_property(name) for name in names})
        steps = self.tta_steps
        if self.tta:
            self._warn("reblurdeblur: tta is deprecated; use tta-steps")
            steps = steps or self.tta
        if not steps:
            return None
        tta = TTAConfig(steps=steps, lr=self.tta_lr or None, interval=self.tta_interval)
        return tta.for_video() if self.tta_video else tta

    def _load(self) -> bool:
        """Check the properties and load the networks (shared where they can be)."""
        from reblur_deploy import Deblurrer, ReblurError

        backend, options = self.backend, {}
        if backend.endswith(".onnx"):
            backend, options = "onnxruntime", {"model": backend}
        elif backend.endswith((".engine", ".plan")):  # as reblur-run --engine
            backend, options = "tensorrt", {"engine": backend}
        try:
            tta = self._tta_config()
            key = (self.weights, self.device, self.dtype, self.backend, self.tile)
            with _SHARED_LOCK:
                shared = _SHARED.get(key) if self.share and tta is None else None
                self.deblurrer = shared or Deblurrer(
                    self.weights or None, device=self.device, dtype=self.dtype, tta=tta,
                    batch_size=1, tile=self.tile or None, backend=backend,
                    backend_options=options,
                )  # fmt: skip
                if self.share and tta is None:
                    _SHARED[key] = self.deblurrer
                    _USERS[key] = _USERS.get(key, 0) + 1
                    self._key = key
        except (ReblurError, OSError) as e:
            self._fail(f"reblurdeblur: {e}")
            return False
        engine = self.deblurrer.backend.describe()
        self._inform(f"reblurdeblur: engine {engine}" + (" (shared)" if shared else ""))
        return True

    def _unload(self) -> None:
        with _SHARED_LOCK:
            if self._key is not None:
                _USERS[self._key] -= 1
                if not _USERS[self._key]:
                    del _SHARED[self._key], _USERS[self._key]
            self._key = None
        self.deblurrer = None

    def do_change_state(self, transition: Gst.StateChange) -> Gst.StateChangeReturn:
        # Load at NULL → READY: a pipeline takes every element to READY before any to PAUSED,
        # where sinks open their files, so a bad model leaves no empty output behind.
        if transition == Gst.StateChange.NULL_TO_READY and not self._load():
            return Gst.StateChangeReturn.FAILURE
        result = Gst.Element.do_change_state(self, transition)
        if transition == Gst.StateChange.READY_TO_NULL:
            self._unload()
        return result

    def do_set_caps(self, incaps: Gst.Caps, outcaps: Gst.Caps) -> bool:
        self.info = GstVideo.VideoInfo.new_from_caps(incaps)
        self._bgr = self.info.finfo.format == GstVideo.VideoFormat.BGR
        self._warm_up()
        return True

    def _warm_up(self) -> None:
        """Run two frames of the negotiated size (the first sets up kernels; with TTA the second
        is a carried frame) and report the second's time as the latency; TTA then starts
        afresh."""
        import time

        blank = np.full((self.info.height, self.info.width, 3), 128, np.uint8)
        self.deblurrer(blank)
        start = time.perf_counter()
        self.deblurrer(blank)
        self._report_latency(time.perf_counter() - start)
        self.deblurrer.reset()

    def _report_latency(self, seconds: float) -> None:
        self._latency = int(seconds * LATENCY_MARGIN * Gst.SECOND)
        self._slowest = 0.0
        self.post_message(Gst.Message.new_latency(self))  # the pipeline asks again

    def _answer_latency(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        """After upstream answered a LATENCY query at the source pad, add the element's own.
        (A pad probe: PyGObject cannot override ``query``, which both GstElement and
        GstBaseTransform declare.)"""
        query = info.get_query()
        if query.type == Gst.QueryType.LATENCY:
            live, low, high = query.parse_latency()
            high = high if high == Gst.CLOCK_TIME_NONE else high + self._latency
            query.set_latency(live, low + self._latency, high)
        return Gst.PadProbeReturn.OK

    def do_sink_event(self, event: Gst.Event) -> bool:
        restart = event.type in (Gst.EventType.FLUSH_STOP, Gst.EventType.STREAM_START)
        if restart and self.deblurrer is not None:
            self.deblurrer.reset()  # a seek or a new stream: no carry-over across it
        if event.type == Gst.EventType.EOS and self._counts["in"]:
            counts = self._counts
            dropped = counts["in"] - counts["deblurred"]
            self._inform(f"reblurdeblur: {counts['deblurred']} frame(s) deblurred, {dropped} "
                         "dropped as late (QoS)")  # fmt: skip
        return GstBase.BaseTransform.do_sink_event(self, event)

    def do_submit_input_buffer(self, is_discont: bool, buffer: Gst.Buffer) -> Gst.FlowReturn:
        self._counts["in"] += 1  # every buffer offered, dropped later by QoS or not
        return GstBase.BaseTransform.do_submit_input_buffer(self, is_discont, buffer)

    # -- frames -------------------------------------------------------------------------------

    def _frame(self, buffer: Gst.Buffer) -> np.ndarray:
        """The H×W×3 frame of ``buffer`` (rows may be padded to the caps' stride)."""
        info = self.info
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if not ok:
            raise RuntimeError("cannot map an input buffer")
        try:
            rows = np.frombuffer(mapped.data, np.uint8, count=info.stride[0] * info.height)
            rows = rows.reshape(info.height, info.stride[0])
            frame = rows[:, : info.width * 3].reshape(info.height, info.width, 3)
            return np.ascontiguousarray(frame[..., ::-1] if self._bgr else frame)
        finally:
            buffer.unmap(mapped)

    def do_transform(self, inbuf: Gst.Buffer, outbuf: Gst.Buffer) -> Gst.FlowReturn:
        import time

        from reblur_deploy import ReblurError

        info = self.info
        start = time.perf_counter()
        try:
            frame = self._frame(inbuf)
            sharp = self.deblurrer(frame)
        except (ReblurError, RuntimeError) as e:
            self._fail(f"reblurdeblur: {e}")
            return Gst.FlowReturn.ERROR
        rows = np.zeros((info.height, info.stride[0]), np.uint8)
        out = sharp[..., ::-1] if self._bgr else sharp
        rows[:, : info.width * 3] = out.reshape(info.height, -1)
        outbuf.fill(0, rows.tobytes())
        seconds = time.perf_counter() - start
        self._counts["deblurred"] += 1
        self._slowest = max(self._slowest, seconds)
        if self._slowest * Gst.SECOND > self._latency:  # slower than reported: tell the sinks
            self._report_latency(self._slowest)
        if self.stats:
            self._post_stats(inbuf, sharp, seconds)
        return Gst.FlowReturn.OK

    def _post_stats(self, buffer: Gst.Buffer, sharp: np.ndarray, seconds: float) -> None:
        """One element message per frame: what an application reads without parsing logs."""
        from reblur_deploy import blur_score

        fields = Gst.Structure.new_empty("reblurdeblur-frame")
        pts = -1.0 if buffer.pts == Gst.CLOCK_TIME_NONE else buffer.pts / Gst.SECOND
        fields.set_value("time", float(pts))  # the frame's time stamp in seconds (-1: none)
        fields.set_value("seconds", float(seconds))
        stats = self.deblurrer.tta_stats
        steps = stats.steps[0] if stats is not None and stats.steps else 0
        fields.set_value("tta-steps", int(steps))
        if stats is not None and stats.losses and stats.losses[0]:
            fields.set_value("tta-loss", float(stats.losses[0][-1]))
        if self.stats_blur_score and self.deblurrer.reblur is not None:
            fields.set_value("blur-score", float(blur_score(sharp, self.deblurrer.reblur)))
        self.post_message(Gst.Message.new_element(self, fields))


GObject.type_register(ReblurDeblur)
FACTORY = ("reblurdeblur", Gst.Rank.NONE, ReblurDeblur)
