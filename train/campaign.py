"""``python -m train.campaign FILE --minutes M``: one session's share of a training campaign.

A campaign is a long ``train.main`` run (and its twins) that no single session can finish: each
session resumes it for a wall-clock budget and stops with a checkpoint, and the run folders live
in the repository (a few MB for ``unet-lite``) so that the next session, on any machine, goes on
from there. The campaign file (TOML) holds the options every member shares and each member's own:

    [common]                  # train.main options of every member
    iters = 100000
    data = ["paired:../shared/data/gopro@0.2", ...]
    [members.joint]           # the first member leads and takes most of the time
    mode = "joint"
    init = "unet-lite"
    [members.l1]              # the others follow it to the same iteration
    mode = "baseline"
    init = "unet-lite-l1"
    [score]                   # optional: more arguments of scripts/quality_bar.py
    args = ["--data", "runs/x4/gopro", "--scale", "1"]

A campaign may begin with stages (``[stages.NAME]``, e.g. an L1 model, then MR alone): each is
trained to its last iteration, in order, before any member starts, and ``init = "@NAME"`` (in a
stage or a member) starts from that stage's final weights, which are committed with the
campaign. Member NAME's run folder is ``<FILE without .toml>/NAME``, a stage's
``<FILE without .toml>/stages/NAME``. After training,
``scripts/quality_bar.py`` scores the leader against the second member on the held-out frames
and one JSON line (iteration, CPU-hours so far, the figures) is appended to
``<folder>/curve.jsonl``: the learning curve of docs/TRAINING.md. ``<folder>/ledger.jsonl``
records every session's training (machine, wall and CPU seconds per member).
``--curve`` prints the learning curve as the Markdown table docs/TRAINING.md copies. A member
that resumes keeps its checkpoint's configuration but takes the options that do not change what
is computed (``TrainConfig.HARMLESS``: memory layout, checkpoint interval, ...) from the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

from reblur_deploy.device import cpu_name

from . import checkpoint
from .config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LEAD_SHARE = 0.8  # of the minutes: the followers cost a fraction of a joint iteration
# A campaign shares the machine with other work: OpenMP threads that spin while they wait for a
# busy core waste it (tests/conftest.py measured 60x on this 2-core machine); waiting threads
# sleep instead. A value set by the user wins.
SHARING_ENV = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
HARMLESS = TrainConfig.HARMLESS  # options a resumed member takes from the file, not its checkpoint


def iteration(out: Path) -> int:
    found = checkpoint.list_checkpoints(out)
    return found[-1][0] if found else 0


def run_member(out: Path, options: dict, stop: list[str], log) -> dict:
    """Start or resume one member; returns its wall and CPU seconds and iterations."""
    start = iteration(out)
    with tempfile.TemporaryDirectory() as tmp:
        if start:  # the checkpoint's options, but the file's say how (layout, checkpoints, ...)
            options = {k: v for k, v in options.items() if k.replace("-", "_") in HARMLESS}
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({**options, "out": str(out)}))
        argv = ["--config", str(config)] + (["--resume"] if start else [])
        begin = time.time()
        child = subprocess.Popen(
            [sys.executable, "-m", "train.main", *argv, "--no-progress", *stop],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=SHARING_ENV,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"error: {out.name} failed (exit {code}); see the log")
    return {
        "from": start,
        "to": iteration(out),
        "wall_s": round(time.time() - begin, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def with_init(options: dict, folder: Path) -> dict:
    """``init = "@NAME"`` → the final weights of stage NAME."""
    init = options.get("init")
    if isinstance(init, str) and init.startswith("@"):
        return {**options, "init": str(folder / "stages" / init[1:] / "last.safetensors")}
    return options


def options_of(spec: dict, table: str, name: str, folder: Path) -> dict:
    """The train.main options of ``[table.name]``: ``[common]``, then its own, ``@`` resolved."""
    return with_init({**spec.get("common", {}), **spec[table][name]}, folder)


def run_stages(folder: Path, spec: dict, deadline: float, log, record: dict) -> bool:
    """Trains the stages in order, each to its end, within the budget; True when all are done."""
    for name in spec.get("stages", {}):
        out = folder / "stages" / name
        options = options_of(spec, "stages", name, folder)
        left = (deadline - time.time()) / 60
        if iteration(out) < options["iters"] and left >= 1:
            stop = ["--stop-after", f"{left:.1f}"]
            record["members"][f"stages/{name}"] = run_member(out, options, stop, log)
        if iteration(out) < options["iters"]:
            return False
    return True


def cpu_hours(folder: Path) -> float:
    ledger = folder / "ledger.jsonl"
    if not ledger.exists():
        return 0.0
    sessions = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return sum(m["cpu_s"] for s in sessions for m in s["members"].values()) / 3600


def score(folder: Path, lead: str, twin: str, extra: list[str], log) -> dict:
    """The quality bar of the leader against its twin, as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bar.json"
        weights = [str(folder / name / "last.safetensors") for name in (lead, twin)]
        subprocess.run(
            [sys.executable, "scripts/quality_bar.py", "--weights", weights[0],
             "--baseline", weights[1], "--json", str(out), *extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
        return json.loads(out.read_text()) if out.exists() else {}


def curve_table(folder: Path) -> str:
    """The learning curve (``curve.jsonl``) as the Markdown table docs/TRAINING.md copies."""
    path = folder / "curve.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist: no session of this campaign was scored")
    lines = [
        "| iterations (twin) | CPU-h | PSNR input / model / twin | NIQE model / twin | "
        "TTA: NIQE, blur lower | MR: re-creates, B > L > S, B/S | sharp input kept, lowest |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for line in path.read_text().splitlines():
        point = json.loads(line)
        rows, mr = point["rows"], point["mr"]
        sharper = point.get("tta_sharper")
        kept = point.get("sharp_kept", {}).get("plain", {}).get("psnr_min")
        lines.append(
            f"| {point['iteration']:,} ({point['twin_iteration']:,}) | {point['cpu_hours']:.2f} | "
            f"{rows['input']['psnr']:.2f} / {rows['model']['psnr']:.2f} / "
            f"{rows['baseline']['psnr']:.2f} | {rows['model']['niqe']:.3f} / "
            f"{rows['baseline']['niqe']:.3f} | "
            f"{rows['tta']['niqe'] - rows['model']['niqe']:+.3f}, "
            f"{'—' if sharper is None else f'{sharper:.0%}'} | {mr['mr_gain']:+.2f} dB, "
            f"{mr['mr_ranked']:.0%}, {mr['mr_ratio']:.2f} | "
            f"{'—' if kept is None else f'{kept:.2f} dB'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="the campaign's TOML file")
    parser.add_argument("--minutes", type=float, help="this session's budget (required to train)")
    parser.add_argument("--log", type=Path, help="training output [default: FOLDER/session.log]")
    parser.add_argument("--no-score", action="store_true", help="skip the quality bar")
    parser.add_argument("--curve", action="store_true",
                        help="print the learning curve as a Markdown table and stop")  # fmt: skip
    args = parser.parse_args(argv)
    folder = args.campaign.with_suffix("")
    if args.curve:
        print(curve_table(folder))
        return 0
    if args.minutes is None or not args.minutes > 0:
        parser.error("--minutes must be given, and positive, to train (or --curve)")
    spec = tomllib.loads(args.campaign.read_text())
    folder.mkdir(exist_ok=True)
    members = list(spec["members"])
    deadline = time.time() + args.minutes * 60
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "members": {}}
    with open(args.log or folder / "session.log", "a") as log:
        ready = run_stages(folder, spec, deadline, log, record)
        for rank, name in enumerate(members if ready else []):
            options = options_of(spec, "members", name, folder)
            left = (deadline - time.time()) / 60
            if rank == 0:
                stop = ["--stop-after", f"{max(1.0, left * LEAD_SHARE):.1f}"]
            else:  # follow the leader to its iteration, within what is left
                target = iteration(folder / members[0])
                if iteration(folder / name) >= target:
                    continue
                stop = ["--stop-at", str(target), "--stop-after", f"{max(1.0, left):.1f}"]
            record["members"][name] = run_member(folder / name, options, stop, log)
            log.flush()
        with open(folder / "ledger.jsonl", "a") as ledger:
            ledger.write(json.dumps(record) + "\n")
        if ready and not args.no_score and len(members) > 1:
            lead, twin = members[:2]
            extra = spec.get("score", {}).get("args", [])
            figures = score(folder, lead, twin, extra, log)
            point = {"iteration": iteration(folder / lead),
                     "twin_iteration": iteration(folder / twin),
                     "cpu_hours": round(cpu_hours(folder), 3), "date": record["date"],
                     "cpu": record["cpu"], "score_args": extra, **figures}  # fmt: skip
            with open(folder / "curve.jsonl", "a") as curve:
                curve.write(json.dumps(point) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
