"""The quality bar of a bundled model, on the GOPRO pairs held out of its training.

    python scripts/quality_bar.py [--weights unet-lite --baseline unet-lite-l1 --min-gain 1.0]
    python scripts/quality_bar.py --weights unet-reblur --baseline unet-reblur-l1 --min-gain 1.5
    python scripts/quality_bar.py ... --real ../shared/data/real_blur_noGT   # + photos without GT

The held-out pairs are those the model's provenance lists as validation items (``train.main
--val``) that exist under ``--data``: the model is never scored on what it trained on. Full
frames. Rows: the blurry input, the L1-only twin, the model trained with L1 + L_Reblur, and that
model with TTA. PSNR, SSIM and NIQE are ``reblur_deploy.eval.measure``'s, as in
``reblur-eval``. Every blur score is measured with the model's MR, so the rows are comparable.
The bars (exit status 1 when one fails), from the paper's claims:

1. the model's PSNR is above the input's on every pair, and by ``--min-gain`` dB on average;
2. it has lower NIQE than its L1 twin by at least 0.15, at a PSNR cost of at most 0.3 dB;
3. TTA lowers the mean NIQE by at least 0.05 and the blur score on at least 80 % of the pairs,
   at a mean PSNR cost of at most 0.3 dB;
4. its MR sees blur: re-creates it (``mr_gain`` ≥ 1 dB), ranks blurry > deblurred > sharp on
   at least 90 % of the pairs with blurry scored at least twice sharp (``train.figures.MR_BARS``);
5. a sharp frame given as input is left alone: PSNR(MD(S), S) ≥ ``SHARP_KEPT`` dB on every pair,
   without and with TTA (a deblurring tool must not degrade what has no blur to remove);
6. a mildly blurred frame is not made worse: on a synthetic camera shake of each held-out sharp
   frame (``MILD``: 7–9 sub-frames over 3 and 8 pixels), the model's PSNR is at least the
   input's on every frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reblur_deploy import Deblurrer, TTAConfig, blur_score, load_weights
from reblur_deploy.eval import measure
from reblur_deploy.io import array_to_tensor, read_image, write_image
from reblur_deploy.io.pairs import list_images, paired_data
from reblur_deploy.metrics.distortion import psnr
from reblur_deploy.train.figures import MR_BARS, mr_figures, summarize
from reblur_deploy.train.synthetic import BlurParams, synthesize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = [SHARED / "gopro", SHARED / "gopro_more"]
FIGURE = ("blur_04.png", 120, 640)  # name, top, left: fence posts, strong horizontal blur
ROWS = ("input", "baseline", "model", "tta")  # the keys of --json's rows
SHARP_KEPT = 35.0  # dB, bar 5: an RMS change of at most 4.5 levels of 255
MILD = (3, 8)  # bar 6: the shakes' largest shifts, pixels (inputs of about 40 and 34 dB)


def held_out(weights: str, folders: list[Path]) -> list:
    """The pairs under ``folders`` that the model's provenance lists as validation items."""
    provenance = load_weights(weights).metadata.get("provenance", {})
    names = provenance.get("data", {}).get("val_items", [])
    found = [pair for f in folders for pair in paired_data(f) if pair.name in names]
    if not found:
        where = ", ".join(str(f) for f in folders)
        raise SystemExit(f"error: none of {weights}'s held-out items {names} is in {where}")
    return found


def measure_row(images: list[np.ndarray], sharp: list[np.ndarray], mr, scale: int | None
                ) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-image PSNR, SSIM, NIQE (as reblur-eval measures them) and blur score under ``mr``."""
    values = [measure(x, s) for x, s in zip(images, sharp, strict=True)]
    row = {key: np.array([v[key] for v in values]) for key in ("psnr", "ssim", "niqe")}
    row["blur"] = np.array([blur_score(x, mr, scale) for x in images])
    return row


def table_lines(names, label, labels, table, figures) -> list[str]:
    lines = [
        f"Held-out GOPRO pairs ({len(names)}, full frames): {', '.join(names)}; blur scores "
        f"under the MR of {label}.",
        "",
        "| model | PSNR↑ | per pair | SSIM↑ | NIQE↓ | blur score↓ |",
        "|---|---|---|---|---|---|",
    ]
    for key, m in table.items():
        pairs = " / ".join(f"{p:.2f}" for p in m["psnr"])
        lines.append(f"| {labels[key]} | {m['psnr'].mean():.2f} | {pairs} | "
                     f"{m['ssim'].mean():.4f} | {m['niqe'].mean():.3f} | "
                     f"{m['blur'].mean():.3e} |")  # fmt: skip
    return [
        *lines,
        "",
        f"MR of {label} on (blurry B, deblurred L, sharp S): re-creates blur "
        f"{figures['mr_gain']:+.2f} dB (PSNR(MR(L), B) − PSNR(L, B)); mean blur scores B "
        f"{figures['blur_input']:.3e}, L {figures['blur_output']:.3e}, S "
        f"{figures['blur_sharp']:.3e}; ranked B > L > S on {100 * figures['mr_ranked']:.0f} %; "
        f"median B/S {figures['mr_ratio']:.2f}; PSNR(MR(S), S) {figures['mr_sharp_psnr']:.1f} dB.",
    ]


def sharp_kept_line(kept: dict[str, np.ndarray], sharp: list[np.ndarray], label: str) -> str:
    """Bar 5's figures: the sharp frames as input, PSNR against themselves and NIQE."""
    niqe_s = np.mean([measure(x, None)["niqe"] for x in sharp])
    runs = ", ".join(f"{name} {v['psnr'].mean():.2f} dB (lowest {v['psnr'].min():.2f}), NIQE "
                     f"{v['niqe'].mean():.3f}" for name, v in kept.items())  # fmt: skip
    return (
        f"Sharp frames as input (nothing to deblur; their NIQE {niqe_s:.3f}), PSNR(MD(S), S) "
        f"of {label}: {runs}."
    )


def mild_blur(sharp: list[np.ndarray]) -> dict[int, list[np.ndarray]]:
    """Bar 6's inputs: each sharp frame shaken over ``MILD`` pixels (seeded by its position)."""
    out = {}
    for shift in MILD:
        params = BlurParams(frames=(7, 9), max_shift=shift, max_rotation=0.2)
        out[shift] = [np.rint(synthesize(x, np.random.default_rng(i), params)[0] * 255)
                      .astype(np.uint8) for i, x in enumerate(sharp)]  # fmt: skip
    return out


def judge(table, figures, kept, mild, min_gain: float, steps: int) -> list[tuple[str, bool, str]]:
    """The bars of issue 27: (name, passed, the numbers)."""
    inputs, base, model, tta = (table[key] for key in ROWS)
    gains = model["psnr"] - inputs["psnr"]
    niqe_gain = base["niqe"].mean() - model["niqe"].mean()
    cost_vs_l1 = base["psnr"].mean() - model["psnr"].mean()
    tta_niqe = model["niqe"].mean() - tta["niqe"].mean()
    tta_sharper = float(np.mean(tta["blur"] < model["blur"]))
    tta_cost = model["psnr"].mean() - tta["psnr"].mean()
    return [
        ("PSNR above the input on every pair", bool((gains > 0).all()),
         "gains " + ", ".join(f"{g:+.2f}" for g in gains) + " dB"),
        (f"mean PSNR gain ≥ {min_gain} dB", gains.mean() >= min_gain, f"{gains.mean():+.2f} dB"),
        ("NIQE ≥ 0.15 below the L1 twin at ≤ 0.3 dB PSNR cost",
         niqe_gain >= 0.15 and cost_vs_l1 <= 0.3,
         f"NIQE {model['niqe'].mean():.3f} vs {base['niqe'].mean():.3f}, "
         f"PSNR cost {cost_vs_l1:+.2f} dB"),
        (f"TTA {steps} lowers NIQE ≥ 0.05, the blur score on ≥ 80 %, at ≤ 0.3 dB cost",
         tta_niqe >= 0.05 and tta_sharper >= 0.8 and tta_cost <= 0.3,
         f"NIQE {-tta_niqe:+.3f}".replace("-", "−") + f", blur score lower on "
         f"{100 * tta_sharper:.0f} %, "
         f"PSNR cost {tta_cost:+.2f} dB"),
        ("MR sees blur (gain, B > L > S, B/S)",
         all(figures[key] >= bar for key, bar in MR_BARS.items()),
         f"{figures['mr_gain']:+.2f} dB, {100 * figures['mr_ranked']:.0f} %, "
         f"{figures['mr_ratio']:.2f}x"),
        (f"sharp input left alone: PSNR(MD(S), S) ≥ {SHARP_KEPT:g} dB on every pair, with TTA too",
         all(v["psnr"].min() >= SHARP_KEPT for v in kept.values()),
         ", ".join(f"{name}: lowest {v['psnr'].min():.2f} dB" for name, v in kept.items())),
        ("mild blur never made worse: PSNR gain ≥ 0 on every frame (3 and 8 px shakes)",
         all((gains >= 0).all() for gains in mild.values()),
         ", ".join(f"{shift} px: {g.mean():+.2f} dB, worse on {np.sum(g < 0)} of {len(g)}"
                   for shift, g in mild.items())),
    ]  # fmt: skip


def real_photos_line(
    folder: Path, label: str, model, adapted, steps: int, scale: int | None
) -> str:
    """TTA's effect on photos without ground truth: NIQE and blur score before → after."""
    photos = [read_image(path) for path in list_images(folder).values()]
    before, after = [model(x) for x in photos], [adapted(x) for x in photos]
    n_b, n_a = (np.array([measure(x, None)["niqe"] for x in xs]) for xs in (before, after))
    s_b, s_a = (np.array([blur_score(x, model.reblur, scale) for x in xs])
                for xs in (before, after))  # fmt: skip
    return (
        f"Real photos without ground truth ({len(photos)}, {folder.name}), {label} before → "
        f"after TTA {steps}: NIQE {n_b.mean():.3f} → {n_a.mean():.3f} (lower on "
        f"{100 * np.mean(n_a < n_b):.0f} %), blur score {s_b.mean():.3e} → {s_a.mean():.3e} "
        f"(lower on {100 * np.mean(s_a < s_b):.0f} %)."
    )


def json_figures(table, figures, kept, mild, bars) -> str:
    """--json: a campaign's learning-curve point (train.campaign reads it)."""
    rows = {key: {name: float(values.mean()) for name, values in m.items()}
            for key, m in table.items()}  # fmt: skip
    sharper = table["tta"]["blur"] < table["model"]["blur"]
    tta_better = float(np.mean((table["tta"]["niqe"] < table["model"]["niqe"]) & sharper))
    mr = {key: float(value) for key, value in figures.items()}
    bars = {name: bool(ok) for name, ok, _ in bars}
    sharp_kept = {name: {"psnr": float(v["psnr"].mean()), "psnr_min": float(v["psnr"].min()),
                         "niqe": float(v["niqe"].mean())} for name, v in kept.items()}  # fmt: skip
    mild_gain = {str(shift): {"mean": float(g.mean()), "min": float(g.min())}
                 for shift, g in mild.items()}  # fmt: skip
    return json.dumps({"rows": rows, "mr": mr, "tta_better": tta_better,
                       "tta_sharper": float(np.mean(sharper)), "sharp_kept": sharp_kept,
                       "mild_gain": mild_gain, "bars": bars}, indent=1)  # fmt: skip


def write_figure(path: Path, names: list[str], outputs: dict, sharp: list[np.ndarray]) -> None:
    """One 256² crop of blur_04 (or the first pair): each row's image, then the sharp one."""
    name, top, left = FIGURE
    index = names.index(name) if name in names else 0
    panels = [images[index] for images in outputs.values()] + [sharp[index]]
    crops = np.hstack([x[top : top + 256, left : left + 256] for x in panels])
    write_image(path, crops, overwrite=True)  # this script's own figure


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append",
                        help="folder with blur/ and sharp/, repeatable "
                             "[default: ../shared/data/gopro, gopro_more]")  # fmt: skip
    parser.add_argument("--weights", default="unet-lite", help="the L1 + L_Reblur model")
    parser.add_argument("--baseline", default="unet-lite-l1", help="its L1-only twin")
    parser.add_argument("--min-gain", type=float, default=1.5, help="bar 1, dB over the input")
    parser.add_argument("--tta", type=int, default=5, help="TTA steps of the last row")
    parser.add_argument("--tta-lr", type=float, default=TTAConfig.lr, help="their learning rate")
    parser.add_argument("--scale", type=int, default=TTAConfig.scale,
                        help="MR judges images shrunk by this (blur score, TTA) [default: "
                             "losses.blur_scale of the frame, 2 at 720p]")  # fmt: skip
    parser.add_argument("--real", type=Path, help="also TTA on these photos without ground truth")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--json", type=Path, help="also write the figures and bars as JSON here")
    parser.add_argument("--figure", type=Path, help="also write a PNG of one 256² crop of "
                        "blur_04: each row's image, then the sharp one")  # fmt: skip
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    pairs = held_out(args.weights, args.data or DATA)
    names = [pair.name for pair in pairs]
    blurry = [read_image(pair.source) for pair in pairs]
    sharp = [read_image(pair.gt) for pair in pairs]
    model = Deblurrer(args.weights, device="cpu")
    tta = TTAConfig(steps=args.tta, lr=args.tta_lr, scale=args.scale)
    adapted = Deblurrer(args.weights, device="cpu", tta=tta)
    label = Path(args.weights).stem  # a bundled name stays as it is
    model_label = f"L1 + L_Reblur ({label})"
    baseline_label = f"L1 baseline ({Path(args.baseline).stem})"
    tta_label = f"{model_label}, TTA {args.tta}"
    labels = dict(zip(ROWS, ("blurry input", baseline_label, model_label, tta_label), strict=True))
    outputs = {"input": blurry, "baseline": Deblurrer(args.baseline, device="cpu")(blurry),
               "model": model(blurry), "tta": [adapted(x) for x in blurry]}  # fmt: skip
    table = {key: measure_row(images, sharp, model.reblur, args.scale)
             for key, images in outputs.items()}  # fmt: skip
    tensors = [[array_to_tensor(x)[0] for x in xs] for xs in (outputs["model"], sharp, blurry)]
    figures = summarize([mr_figures(model.reblur, *t, scale=args.scale)
                         for t in zip(*tensors, strict=True)])  # fmt: skip
    kept = {name: measure_row(images, sharp, model.reblur, args.scale)
            for name, images in (("plain", model(sharp)),
                                 (f"TTA {args.tta}", [adapted(x) for x in sharp]))}  # fmt: skip
    mild = {shift: np.array([psnr(y, s) - psnr(x, s) for x, y, s in zip(xs, model(xs), sharp,
                                                                        strict=True)])
            for shift, xs in mild_blur(sharp).items()}  # fmt: skip
    bars = judge(table, figures, kept, mild, args.min_gain, args.tta)
    lines = table_lines(names, label, labels, table, figures)
    lines += ["", sharp_kept_line(kept, sharp, label)]
    lines += ["", "| bar | result | numbers |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {numbers} |" for name, ok, numbers in bars]
    if args.real:
        lines += ["", real_photos_line(args.real, label, model, adapted, args.tta, args.scale)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json_figures(table, figures, kept, mild, bars))
    if args.figure:
        write_figure(args.figure, names, outputs, sharp)
    return 0 if all(ok for _, ok, _ in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
