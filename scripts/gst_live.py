"""The GStreamer element in live pipelines: per-frame latency (median and 99th percentile) and
throughput at 360p and 720p, with and without TTA, and what a leaky queue in front changes for
the capture thread. Prints a Markdown table for docs/BENCHMARKS.md.

Each run is ``videotestsrc is-live=true`` at 30 fps (a moving ball) → [leaky queue] →
videoconvert → reblurdeblur (unet-lite) → fakesink sync=true qos=true, in GStreamer's own
Python (Debian's, which has the bindings) with the element's environment. Measured with pad
probes on the pipeline clock: latency = when a frame reaches the sink less its time stamp
(processing and waiting, before the sink's own wait); source lateness = when the source pushes
a frame less its time stamp (how long the capture thread was held up); frames deblurred and
dropped (by QoS, or by the leaky queue).

    python scripts/gst_live.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from reblur_deploy.gst import plugin_env  # noqa: E402

RUN = """
import json, sys, time
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
pipeline = Gst.parse_launch(sys.argv[1])
seen = {"sink": [], "source": []}

def probe(name):
    def record(pad, info):
        clock = pipeline.get_clock()
        if clock is not None:
            now = clock.get_time() - pipeline.get_base_time()
            seen[name].append((now - info.get_buffer().pts) / 1e6)
        return Gst.PadProbeReturn.OK
    return record

pipeline.get_by_name("sink").get_static_pad("sink").add_probe(
    Gst.PadProbeType.BUFFER, probe("sink"))
pipeline.get_by_name("source").get_static_pad("src").add_probe(
    Gst.PadProbeType.BUFFER, probe("source"))
bus = pipeline.get_bus()
pipeline.set_state(Gst.State.PLAYING)
deblurred = 0
while True:
    kinds = Gst.MessageType.EOS | Gst.MessageType.ERROR | Gst.MessageType.INFO
    message = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, kinds)
    if message.type == Gst.MessageType.ERROR:
        sys.exit(str(message.parse_error()[0]))
    if message.type == Gst.MessageType.EOS:
        break
    text = message.parse_info()[1] or ""
    if "frame(s) deblurred" in text:  # the element's count at end of stream
        deblurred = int(text.split("reblurdeblur: ")[1].split()[0])
pipeline.set_state(Gst.State.NULL)
print(json.dumps({"sink": seen["sink"], "source": seen["source"], "deblurred": deblurred}))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def run(height: int, width: int, tta: int, queue: bool, frames: int) -> dict:
    leaky = "queue leaky=downstream max-size-buffers=1 ! " if queue else ""
    pipeline = (
        f"videotestsrc name=source is-live=true pattern=ball num-buffers={frames} ! "
        f"video/x-raw,width={width},height={height},framerate=30/1 ! {leaky}videoconvert ! "
        f"reblurdeblur weights=unet-lite tta-steps={tta} ! "
        "fakesink name=sink sync=true qos=true"
    )
    done = subprocess.run(["/usr/bin/python3", "-c", RUN, pipeline], env=plugin_env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    latency, lateness = seen["sink"][1:], seen["source"][1:]  # the first waits for start-up
    return {
        "size": f"{width}×{height}",
        "tta": tta,
        "leaky queue": "yes" if queue else "no",
        "deblurred": f"{seen['deblurred']} of {frames}",
        "frames/s": seen["deblurred"] / (frames / 30),
        "latency median ms": percentile(latency, 0.5),
        "latency p99 ms": percentile(latency, 0.99),
        "source late p99 ms": percentile(lateness, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="media per run")
    args = parser.parse_args()
    frames = round(args.seconds * 30)
    rows = [run(h, w, tta, queue, frames) for h, w in ((360, 640), (720, 1280))
            for tta in (0, 5) for queue in (False, True)]  # fmt: skip
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
