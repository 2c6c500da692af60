#!/usr/bin/env bash
# One call on a lent GPU machine: train unet-reblur from scratch for a fixed wall-clock budget,
# with its L1 twin, package both and measure them on the held-out pairs.
#
#   python scripts/gpu_data.py                      # here, beside ../shared: the data subset
#   bash scripts/gpu_train.sh OUT_DIR [MINUTES]     # there (default 8 minutes of training)
#
# The campaign's recipe (docs/TRAINING.md), nothing inherited from a bundled file: MD with L1
# from scratch (40 % of the budget), MR alone on lengthened synthetic blur (10 %), then joint
# training (L1 + L_Reblur, MR on L_Blur + L_Sharp; 40 %) and, for the same number of iterations,
# its twin with L1 alone from the same MD (a fraction of a joint iteration's cost), the quality
# bar's baseline. bf16, channels-last, torch.compile on a GPU. OUT_DIR receives the runs (base,
# mr, joint, l1), unet-reblur.safetensors (float16 storage) and quality_bar.md.
# DEVICE=cpu COMPILE=0 runs the same steps on a CPU; the test does, with a tiny budget, small
# crops (CROP=32 BATCH=2 VAL_CROP=64) and QUALITY=0 (no quality bar: full frames through the
# paper's U-Net with TTA take minutes on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash scripts/gpu_train.sh OUT_DIR [MINUTES]}"
minutes="${2:-8}"
device="${DEVICE:-cuda}"
data="${GPU_DATA:-scripts/gpu_data}"  # the layout scripts/gpu_data.py writes
bin=.venv/bin
[[ -x "$bin/python" ]] || bin="$(dirname "$(command -v python3)")"
[[ -d "$data/train" ]] || { echo "gpu_train: $data missing: run python scripts/gpu_data.py" >&2; exit 2; }
if [[ "$device" == cuda ]]; then
  "$bin/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
    { echo "gpu_train: torch sees no CUDA GPU (DEVICE=cpu to run on the CPU)" >&2; exit 2; }
fi
compile=$([[ "${COMPILE:-1}" == 1 && "$device" == cuda ]] && echo --compile || echo --no-compile)
mkdir -p "$out"
split() { "$bin/python" -c "print(round($minutes * $1, 3))"; }

common=(--device "$device" --amp bf16 --channels-last "$compile" --crop "${CROP:-256}"
        --batch-size "${BATCH:-16}" --val-crop "${VAL_CROP:-512}"
        --data "paired:$data/train/gopro@0.4" --data "paired:$data/train/reds@0.2"
        --data "synthetic:$data/train/photos@0.4" --val "paired:$data/val"
        --syn-frames 9,25 --syn-shift 24 --syn-rotation 1 --syn-zoom 0.01 --syn-noise 0.01
        --syn-soften 1.0 --sharp-share 0.2 --keep-mean --mr-blocks 2 --mr-width 64
        --no-progress --tensorboard off
        --log-every 20 --checkpoint-every 200 --val-every 400)
train() { "$bin/python" -m train.main "${common[@]}" "$@"; }
train --mode baseline --lr 1e-4 --minutes "$(split 0.4)" --out "$out/base"
train --mode mr --init "$out/base/last.safetensors" --lr 1e-3 --minutes "$(split 0.1)" --out "$out/mr"
train --mode joint --init "$out/mr/last.safetensors" --lr 1e-4 --minutes "$(split 0.4)" --out "$out/joint"
# the twin: as many iterations as the joint run made, so that its schedule is the same
iters="$("$bin/python" -c 'import sys; from reblur_deploy import load_weights
print(load_weights(sys.argv[1]).metadata["provenance"]["iterations"])' "$out/joint/last.safetensors")"
train --mode baseline --init "$out/base/last.safetensors" --lr 1e-4 --iters "$iters" --out "$out/l1"
"$bin/python" -m train.package "$out/joint/last.safetensors" unet-reblur --fp16 --assets "$out"
[[ "${QUALITY:-1}" == 1 ]] || exit 0
"$bin/python" scripts/quality_bar.py --weights "$out/unet-reblur.safetensors" \
  --baseline "$out/l1/last.safetensors" --min-gain 1.5 --data "$data/val" --tta 5 \
  --out "$out/quality_bar.md" || echo "gpu_train: a quality bar failed (see $out/quality_bar.md)" >&2
