"""The quality bar of a bundled model, on the GOPRO pairs held out of its training.

    python scripts/quality_bar.py [--weights unet-lite --baseline unet-lite-l1 --min-gain 1.0]
    python scripts/quality_bar.py --weights unet-reblur --baseline unet-reblur-l1 --min-gain 1.5
    python scripts/quality_bar.py ... --real ../shared/data/real_blur_noGT   # + photos without GT

The held-out pairs are those the model's provenance lists as validation items (``train.main
--val``) that exist under ``--data``: the model is never scored on what it trained on. Full
frames. Rows: the blurry input, the L1-only twin, the model trained with L1 + L_Reblur, and that
model with TTA. Every blur score is measured with the model's MR, so the rows are comparable.
The bars (exit status 1 when one fails), from the paper's claims:

1. the model's PSNR is above the input's on every pair, and by ``--min-gain`` dB on average;
2. it has lower NIQE than its L1 twin by at least 0.1, at a PSNR cost of at most 0.3 dB;
3. TTA lowers both NIQE and the blur score on at least 80 % of the pairs, at a mean PSNR cost
   of at most 0.3 dB;
4. its MR sees blur: re-creates it (``mr_gain`` ≥ 1 dB), ranks blurry > deblurred > sharp on
   at least 90 % of the pairs with blurry scored at least twice sharp (``train.figures.MR_BARS``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reblur_deploy import Deblurrer, blur_score, load_weights
from reblur_deploy.io import array_to_tensor, read_image, write_image
from reblur_deploy.io.pairs import list_images
from reblur_deploy.metrics import niqe, psnr, ssim
from reblur_deploy.train.figures import MR_BARS, mr_figures, summarize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = [SHARED / "gopro", SHARED / "gopro_more"]
FIGURE = ("blur_04.png", 120, 640)  # name, top, left: fence posts, strong horizontal blur


def held_out(weights: str, folders: list[Path]) -> list[Path]:
    """The model's validation items that are blurry frames under ``folder``/blur."""
    provenance = load_weights(weights).metadata.get("provenance", {})
    names = provenance.get("data", {}).get("val_items", [])
    found = [f / "blur" / name for name in names for f in folders if (f / "blur" / name).is_file()]
    if not found:
        where = ", ".join(str(f) for f in folders)
        raise SystemExit(f"error: none of {weights}'s held-out items {names} is in {where}")
    return found


def scores(images: list[np.ndarray], mr) -> list[float]:
    return [blur_score(x, mr) for x in images]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        help="folder with blur/ and sharp/, repeatable [default: ../shared/data/gopro, gopro_more]",
    )
    parser.add_argument("--weights", default="unet-lite", help="the L1 + L_Reblur model")
    parser.add_argument("--baseline", default="unet-lite-l1", help="its L1-only twin")
    parser.add_argument("--min-gain", type=float, default=1.0, help="bar 1, dB over the input")
    parser.add_argument("--tta", type=int, default=5, help="TTA steps of the last row")
    parser.add_argument("--real", type=Path, help="also TTA on these photos without ground truth")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--json", type=Path, help="also write the figures and bars as JSON here")
    parser.add_argument(
        "--figure",
        type=Path,
        help="also write a PNG of one 256² crop of blur_04: each row's image, then the sharp one",
    )
    args = parser.parse_args()

    paths = held_out(args.weights, args.data or DATA)
    names = [path.name for path in paths]
    blurry = [read_image(path) for path in paths]
    sharp = [
        read_image(path.parents[1] / "sharp" / path.name.replace("blur", "sharp")) for path in paths
    ]
    model = Deblurrer(args.weights, device="cpu")
    adapted = Deblurrer(args.weights, device="cpu", tta_steps=args.tta)
    baseline = Deblurrer(args.baseline, device="cpu")
    mr = model.reblur
    label = Path(args.weights).stem  # a bundled name stays as it is
    rows = {
        "blurry input": blurry,
        f"L1 baseline ({Path(args.baseline).stem})": baseline(blurry),
        f"L1 + L_Reblur ({label})": model(blurry),
        f"L1 + L_Reblur ({label}), TTA {args.tta}": [adapted(x) for x in blurry],
    }
    table = {}
    for row, images in rows.items():
        table[row] = {
            "psnr": np.array([psnr(x, s) for x, s in zip(images, sharp, strict=True)]),
            "ssim": float(np.mean([ssim(x, s) for x, s in zip(images, sharp, strict=True)])),
            "niqe": np.array([niqe(x) for x in images]),
            "blur": np.array(scores(images, mr)),
        }
    inputs, base, shipped, tta = table.values()
    figures = summarize(
        [
            mr_figures(mr, *(array_to_tensor(x)[0] for x in (out, s, b)))
            for out, s, b in zip(rows[f"L1 + L_Reblur ({label})"], sharp, blurry, strict=True)
        ]
    )

    lines = [
        f"Held-out GOPRO pairs ({len(names)}, full frames): {', '.join(names)}; blur scores "
        f"under the MR of {label}.",
        "",
        "| model | PSNR↑ | per pair | SSIM↑ | NIQE↓ | blur score↓ |",
        "|---|---|---|---|---|---|",
    ]
    for row, m in table.items():
        pairs = " / ".join(f"{p:.2f}" for p in m["psnr"])
        lines.append(f"| {row} | {m['psnr'].mean():.2f} | {pairs} | {m['ssim']:.4f} | "
                     f"{m['niqe'].mean():.3f} | {m['blur'].mean():.3e} |")  # fmt: skip
    lines += [
        "",
        f"MR of {label} on (blurry B, deblurred L, sharp S): re-creates blur "
        f"{figures['mr_gain']:+.2f} dB (PSNR(MR(L), B) − PSNR(L, B)); mean blur scores B "
        f"{figures['blur_input']:.3e}, L {figures['blur_output']:.3e}, S "
        f"{figures['blur_sharp']:.3e}; ranked B > L > S on {100 * figures['mr_ranked']:.0f} %; "
        f"median B/S {figures['mr_ratio']:.2f}; PSNR(MR(S), S) {figures['mr_sharp_psnr']:.1f} dB.",
    ]
    gains = shipped["psnr"] - inputs["psnr"]
    cost_vs_l1 = base["psnr"].mean() - shipped["psnr"].mean()
    tta_cost = shipped["psnr"].mean() - tta["psnr"].mean()
    tta_better = float(np.mean((tta["niqe"] < shipped["niqe"]) & (tta["blur"] < shipped["blur"])))
    bars = [
        ("PSNR above the input on every pair", bool((gains > 0).all()),
         "gains " + ", ".join(f"{g:+.2f}" for g in gains) + " dB"),
        (f"mean PSNR gain ≥ {args.min_gain} dB", gains.mean() >= args.min_gain,
         f"{gains.mean():+.2f} dB"),
        ("NIQE ≥ 0.1 below the L1 twin at ≤ 0.3 dB PSNR cost",
         base["niqe"].mean() - shipped["niqe"].mean() >= 0.1 and cost_vs_l1 <= 0.3,
         f"NIQE {shipped['niqe'].mean():.3f} vs {base['niqe'].mean():.3f}, "
         f"PSNR cost {cost_vs_l1:+.2f} dB"),
        (f"TTA {args.tta} lowers NIQE and blur score on ≥ 80 % at ≤ 0.3 dB cost",
         tta_better >= 0.8 and tta_cost <= 0.3,
         f"{100 * tta_better:.0f} % of pairs, PSNR cost {tta_cost:+.2f} dB"),
        ("MR sees blur (gain, B > L > S, B/S)",
         all(figures[key] >= bar for key, bar in MR_BARS.items()),
         f"{figures['mr_gain']:+.2f} dB, {100 * figures['mr_ranked']:.0f} %, "
         f"{figures['mr_ratio']:.2f}x"),
    ]  # fmt: skip
    lines += ["", "| bar | result | numbers |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {numbers} |" for name, ok, numbers in bars]
    if args.real:
        photos = [read_image(path) for path in list_images(args.real).values()]
        before = [model(x) for x in photos]
        after = [adapted(x) for x in photos]
        n_b, n_a = np.array([niqe(x) for x in before]), np.array([niqe(x) for x in after])
        s_b, s_a = np.array(scores(before, mr)), np.array(scores(after, mr))
        lines += [
            "",
            f"Real photos without ground truth ({len(photos)}, {args.real.name}), {label} "
            f"before → after TTA {args.tta}: NIQE {n_b.mean():.3f} → {n_a.mean():.3f} (lower on "
            f"{100 * np.mean(n_a < n_b):.0f} %), blur score {s_b.mean():.3e} → {s_a.mean():.3e} "
            f"(lower on {100 * np.mean(s_a < s_b):.0f} %).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:  # e.g. a point of a training campaign's learning curve (train.campaign)
        rows_json = {
            key: {"psnr": float(m["psnr"].mean()), "ssim": m["ssim"],
                  "niqe": float(m["niqe"].mean()), "blur": float(m["blur"].mean())}
            for key, m in zip(("input", "baseline", "model", "tta"), table.values(), strict=True)
        }  # fmt: skip
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows_json,
                    "mr": {k: float(v) for k, v in figures.items()},
                    "tta_better": tta_better,
                    "bars": {name: bool(ok) for name, ok, _ in bars},
                },
                indent=1,
            )
        )
    if args.figure:
        name, top, left = FIGURE
        index = names.index(name) if name in names else 0
        panels = [images[index] for images in rows.values()] + [sharp[index]]
        crops = np.hstack([x[top : top + 256, left : left + 256] for x in panels])
        write_image(args.figure, crops, overwrite=True)  # this script's own figure
    return 0 if all(ok for _, ok, _ in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
