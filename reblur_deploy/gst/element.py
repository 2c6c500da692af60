"""``reblurdeblur``: a GStreamer video filter that deblurs every frame with a ``Deblurrer``.

Loaded by GStreamer's Python plugin loader (see ``reblur_deploy.gst``), never imported by the
rest of the package. Caps: raw RGB or BGR video of any size and rate, the same on both sides
(put ``videoconvert`` around it for other formats; anything else fails negotiation, which
GStreamer reports as ``not-negotiated``). Buffers keep their time stamps, durations and flags
(GstBaseTransform copies them to the output buffer).

Properties, named as ``Deblurrer``'s keywords and ``reblur-run``'s options: ``weights``
(bundled name or file; default: the device's bundled model), ``device``, ``backend`` (auto,
torch, compile, onnxruntime, or an exported ``.onnx`` file), ``dtype``, ``tile``, ``tta-steps`` (0 =
none; ``Deblurrer(tta_steps=)``, ``--tta``), ``tta-video`` (the video mode, default on:
carry-over, one step a frame on crops), ``tta-lr``. ``tta`` is the old name of ``tta-steps``,
kept for one release with a GStreamer warning. The networks load when the pipeline starts; a
bad property is a GStreamer error with one line of text, not a traceback.

Flushing (a seek) and a new stream forget what TTA carried over. Latency: each frame is
processed in the streaming thread as it arrives, and the element reports no latency of its own
(GstBaseTransform passes the latency query through): its processing time makes frames late,
which a synchronising sink handles by its own rule (``sync=true`` drops late frames and sends
QoS upstream). For a live source that must not fall behind, put a leaky queue in front
(``queue leaky=downstream max-size-buffers=1``): frames that arrive while one is being
deblurred are then dropped instead of queued, so the output shows the newest frame.
"""

from __future__ import annotations

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
        blurb="auto (ONNX Runtime without TTA where it can run, else torch), torch, compile, "
        "onnxruntime, or an exported .onnx file",
    )
    dtype = GObject.Property(type=str, default="fp32", blurb="fp32, fp16 or bf16")
    tile = GObject.Property(
        type=int,
        default=0,
        minimum=0,
        maximum=65536,
        blurb="Tile size (0: whole frames, tiled only when memory is short)",
    )
    tta_steps = GObject.Property(
        type=int, default=0, minimum=0, maximum=1000, blurb="Test-time adaptation steps (0: none)"
    )
    tta = GObject.Property(  # the old name of tta-steps: goes in the next release
        type=int, default=0, minimum=0, maximum=1000, blurb="Deprecated: use tta-steps"
    )
    tta_video = GObject.Property(
        type=bool, default=True, blurb="TTA in the video mode (carry-over, a step a frame on crops)"
    )
    tta_lr = GObject.Property(type=float, default=3e-6, minimum=1e-12, maximum=1.0,
                              blurb="Adam learning rate of the TTA steps")  # fmt: skip

    def __init__(self):
        super().__init__()
        self.deblurrer = None
        self.info: GstVideo.VideoInfo | None = None

    # -- setup --------------------------------------------------------------------------------

    def _fail(self, text: str) -> None:
        """Post one GStreamer error with ``text`` (what gst-launch-1.0 prints after ERROR)."""
        error = GLib.Error.new_literal(Gst.CoreError.quark(), text, Gst.CoreError.FAILED)
        self.post_message(Gst.Message.new_error(self, error, text))

    def _warn(self, text: str) -> None:
        """Post one GStreamer warning (gst-launch-1.0 prints it after WARNING)."""
        error = GLib.Error.new_literal(Gst.CoreError.quark(), text, Gst.CoreError.FAILED)
        self.post_message(Gst.Message.new_warning(self, error, text))

    def do_start(self) -> bool:
        from reblur_deploy import Deblurrer, ReblurError, TTAConfig

        steps = self.tta_steps
        if self.tta:
            self._warn("reblurdeblur: tta is deprecated; use tta-steps")
            steps = steps or self.tta
        tta = None
        if steps:
            tta = TTAConfig(steps=steps, lr=self.tta_lr)
            tta = tta.for_video() if self.tta_video else tta
        backend, options = self.backend, {}
        if backend.endswith(".onnx"):
            backend, options = "onnxruntime", {"model": backend}
        try:
            self.deblurrer = Deblurrer(
                self.weights or None,
                device=self.device,
                dtype=self.dtype,
                tta=tta,
                batch_size=1,
                tile=self.tile or None,
                backend=backend,
                backend_options=options,
            )
        except (ReblurError, OSError) as e:
            self._fail(f"reblurdeblur: {e}")
            return False
        engine = f"reblurdeblur: engine {self.deblurrer.backend.describe()}"
        info = GLib.Error.new_literal(Gst.CoreError.quark(), engine, Gst.CoreError.FAILED)
        self.post_message(Gst.Message.new_info(self, info, engine))  # says which engine runs
        return True

    def do_stop(self) -> bool:
        self.deblurrer = None
        return True

    def do_set_caps(self, incaps: Gst.Caps, outcaps: Gst.Caps) -> bool:
        self.info = GstVideo.VideoInfo.new_from_caps(incaps)
        bgr = self.info.finfo.format == GstVideo.VideoFormat.BGR
        self.deblurrer.color = "bgr" if bgr else "rgb"
        return True

    def do_sink_event(self, event: Gst.Event) -> bool:
        restart = event.type in (Gst.EventType.FLUSH_STOP, Gst.EventType.STREAM_START)
        if restart and self.deblurrer is not None:
            self.deblurrer.reset()  # a seek or a new stream: no carry-over across it
        return GstBase.BaseTransform.do_sink_event(self, event)

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
            return rows[:, : info.width * 3].reshape(info.height, info.width, 3).copy()
        finally:
            buffer.unmap(mapped)

    def do_transform(self, inbuf: Gst.Buffer, outbuf: Gst.Buffer) -> Gst.FlowReturn:
        from reblur_deploy import ReblurError

        info = self.info
        try:
            sharp = self.deblurrer(self._frame(inbuf))
        except (ReblurError, RuntimeError) as e:
            self._fail(f"reblurdeblur: {e}")
            return Gst.FlowReturn.ERROR
        rows = np.zeros((info.height, info.stride[0]), np.uint8)
        rows[:, : info.width * 3] = sharp.reshape(info.height, -1)
        outbuf.fill(0, rows.tobytes())
        return Gst.FlowReturn.OK


GObject.type_register(ReblurDeblur)
FACTORY = ("reblurdeblur", Gst.Rank.NONE, ReblurDeblur)
