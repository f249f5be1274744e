#!/usr/bin/env bash
# Reproduce the `small` preset on one GPU machine, then measure the NTM speed-ups on its models.
#
# Usage (from anywhere): scripts/gpu_small.sh [RESULTS_DIR]      default RESULTS_DIR: results/small
#
# The machine's PyTorch is used as it is (never reinstalled). Packages it lacks travel as wheels in
# wheels/ at the repository root and are installed with --no-deps (nothing is fetched); for the small
# preset that is open_clip_torch, ftfy and wcwidth (the eval-CLIP of the fid suite), and diffusers and
# clean-fid for the pretrained adapters and Inception features, e.g. on a machine with an index:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels open_clip_torch ftfy wcwidth diffusers clean-fid
# This project is installed with `pip install --no-deps -e .`. `ntm-bench doctor` runs first and stops the
# script, listing every missing input, before any training. When $OUT is set, the results come back there
# as summary.md, bench.md, the log and one archive of the results folder without its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
results="${1:-results/small}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

shopt -s nullglob
wheels=(wheels/*.whl)
if ((${#wheels[@]})); then
    "$python" -m pip install --quiet --no-deps --no-index "${wheels[@]}"
fi
# the repository root is importable either way: `python -m cli` is the ntm-bench command's app
"$python" -m pip install --quiet --no-deps --no-build-isolation -e . \
    || echo "warning: 'pip install --no-deps -e .' failed; running from the source tree" >&2
"$python" - <<'EOF'
import importlib.util
import sys

needed = ("open_clip", "ftfy", "torchvision", "typer", "rich", "pandas")
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages {missing}: put their wheels in wheels/ (see the head of scripts/gpu_small.sh)")
EOF

log="$results.log"
mkdir -p "$(dirname "$results")"
set +e
{
    set -e
    "$python" -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    "$python" -m cli doctor --preset small --out "$results"
    start=$SECONDS
    "$python" -m cli reproduce --preset small --out "$results" --no-progress
    echo "reproduce --preset small: $((SECONDS - start)) s wall"
    "$python" -m cli bench --preset small --out "$results" --no-progress
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

if [[ -n "${OUT:-}" ]]; then
    cp "$log" "$OUT/gpu_small.log"
    for file in summary.md bench.md; do
        if [[ -f "$results/$file" ]]; then cp "$results/$file" "$OUT/$file"; fi
    done
    if [[ -d "$results" ]]; then
        tar -czf "$OUT/results-small.tar.gz" --exclude=checkpoints -C "$(dirname "$results")" "$(basename "$results")"
    fi
fi
exit "$status"
