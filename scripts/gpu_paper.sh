#!/usr/bin/env bash
# The `paper` preset on one GPU machine (one or several GPUs): fine-tune the NTM row from SD3.5-medium, then score
# every row (the seven published few-step pipelines and the NTM) with the preset's suites.
#
# Usage (from anywhere): scripts/gpu_paper.sh [PRESET] [RESULTS_DIR]
#   PRESET       default: paper (its /data paths are placeholders: pass an edited copy, e.g. my-paper.toml)
#   RESULTS_DIR  default: results/paper
#   NPROC=N      processes (GPUs) for torchrun; default: every GPU torch sees. NPROC=1 runs without torchrun.
#   SMOKE=1      first run scripts/ntm_diffusers_smoke.py: the same NTM path on a tiny random SD3 pipeline
#                (bf16, CUDA), which prints its throughput and memory, before the real weights are touched.
#
# As in scripts/gpu_small.sh: the machine's PyTorch is used as it is; packages it lacks travel as wheels in
# wheels/ at the repository root and are installed with --no-deps (nothing is fetched), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels diffusers transformers tokenizers safetensors clean-fid open_clip_torch ftfy wcwidth
# `ntm-bench doctor` runs first and stops the script, listing every missing weight folder, caption folder and
# asset, before any training. The NTM row's training resumes from its last checkpoint when the script is run
# again. When $OUT is set, summary.md, the log and an archive of the results folder without checkpoints go there.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-paper}"
results="${2:-results/paper}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

shopt -s nullglob
wheels=(wheels/*.whl)
if ((${#wheels[@]})); then
    "$python" -m pip install --quiet --no-deps --no-index "${wheels[@]}"
fi
"$python" -m pip install --quiet --no-deps --no-build-isolation -e . \
    || echo "warning: 'pip install --no-deps -e .' failed; running from the source tree" >&2
"$python" - <<'PY'
import importlib.util
import sys

needed = ("diffusers", "transformers", "tokenizers", "safetensors", "cleanfid", "open_clip", "ftfy", "torchvision",
          "typer", "rich", "pandas")
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages {missing}: put their wheels in wheels/ (see the head of scripts/gpu_paper.sh)")
PY

nproc="${NPROC:-$("$python" -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
if ((nproc > 1)); then
    launch=("$python" -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m cli)
else
    launch=("$python" -m cli)
fi

log="$results.log"
mkdir -p "$(dirname "$results")"
set +e
{
    set -e
    "$python" -c "import torch; print(torch.__version__, torch.cuda.device_count(), 'GPU(s)', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    if [[ "${SMOKE:-0}" == 1 ]]; then
        start=$SECONDS
        if ((nproc > 1)); then
            "$python" -m torch.distributed.run --standalone --nproc-per-node "$nproc" scripts/ntm_diffusers_smoke.py \
                --device cuda --out "$results-smoke"
        else
            "$python" scripts/ntm_diffusers_smoke.py --device cuda --out "$results-smoke"
        fi
        echo "ntm-diffusers smoke run: $((SECONDS - start)) s wall"
    fi
    "$python" -m cli doctor --preset "$preset" --out "$results"
    start=$SECONDS
    "${launch[@]}" train ntm-diffusers --preset "$preset" --out "$results" --no-progress
    echo "train ntm-diffusers ($nproc process(es)): $((SECONDS - start)) s wall"
    start=$SECONDS
    "${launch[@]}" reproduce --preset "$preset" --out "$results" --no-progress
    echo "reproduce --preset $preset ($nproc process(es)): $((SECONDS - start)) s wall"
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

if [[ -n "${OUT:-}" ]]; then
    cp "$log" "$OUT/gpu_paper.log"
    if [[ -f "$results/summary.md" ]]; then cp "$results/summary.md" "$OUT/summary.md"; fi
    if [[ -f "$results-smoke/report.json" ]]; then cp "$results-smoke/report.json" "$OUT/smoke-report.json"; fi
    if [[ -d "$results" ]]; then
        tar -czf "$OUT/results-paper.tar.gz" --exclude=checkpoints -C "$(dirname "$results")" "$(basename "$results")"
    fi
fi
exit "$status"
