#!/usr/bin/env bash
# On a GPU machine: run the gpu-marked tests and the full reblur-bench in one command and write
# one report; with --record, append the benchmark tables to docs/BENCHMARKS.md as well.
#
#   bash scripts/gpu_suite.sh [--record] [OUT_DIR] [-- extra reblur-bench options]
#
# OUT_DIR (default bench-report-<UTC date>-<host>) receives:
#   report.md        device, date, versions, the pytest summary and every benchmark table
#   bench.json       the raw benchmark report
#   pytest-gpu.txt   the full output of the gpu-marked tests
# Uses .venv/bin when present (make demo / make test create it), else the PATH.
set -uo pipefail
cd "$(dirname "$0")/.."

record=0
if [[ "${1:-}" == "--record" ]]; then record=1; shift; fi
out="${1:-bench-report-$(date -u +%Y%m%d-%H%M)-$(hostname -s)}"
[[ $# -gt 0 ]] && shift
[[ "${1:-}" == "--" ]] && shift
mkdir -p "$out"
bin=.venv/bin
[[ -x "$bin/python" ]] || bin="$(dirname "$(command -v python3)")"

"$bin/python" - <<'PY' || { echo "gpu_suite: torch sees no CUDA GPU" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
PY

echo "== gpu-marked tests" >&2
"$bin/python" -m pytest -m gpu -ra -q 2>&1 | tee "$out/pytest-gpu.txt"
tests_status=${PIPESTATUS[0]}

echo "== reblur-bench (full: 256², 720p, 1080p; batches 1, 4, 8)" >&2
"$bin/reblur-bench" --json "$out/bench.json" --md "$out/bench.md" "$@"
bench_status=$?

{
  echo "# reblur-deploy GPU report"
  echo
  echo "- host: $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo
  echo "## gpu-marked tests (exit status $tests_status)"
  echo
  echo '```'
  tail -n 25 "$out/pytest-gpu.txt"
  echo '```'
  echo
  echo "## reblur-bench (exit status $bench_status)"
  echo
  cat "$out/bench.md" 2>/dev/null
} > "$out/report.md"

if [[ $record -eq 1 && $bench_status -eq 0 ]]; then
  { echo; cat "$out/bench.md"; } >> docs/BENCHMARKS.md
  echo "appended the tables to docs/BENCHMARKS.md" >&2
fi
echo "report: $out/report.md" >&2
[[ $tests_status -eq 0 && $bench_status -eq 0 ]]
