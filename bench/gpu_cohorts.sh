#!/usr/bin/env bash
# Issue 27's GPU acceptance in one command, from the project root on a CUDA machine:
#   bash bench/gpu_cohorts.sh
# 1. bench/train_overhead.py --cuda-graph --reduce-overhead: fit() with train.cuda_graph off and
#    on, and with train.compile: reduce-overhead, vs the DataLoader bare loop and the on-device
#    bare loop (CBR-Small 28 px, batch 64, 200 steps; target fit/on-device >= 0.95; it says which
#    of the CUDA graph and reduce-overhead measures better);
# 2. bench/study_throughput.py: the 64-run CBR-Small study (random, gabor × 32 seeds, 200 steps)
#    with cohorts vs one run per process at 8 and 1 runs per device, and the fused-limit probe
#    (target cohort / solo-8 >= 10).
# Logs go to $OUT (default ./gpu-logs). Reads nothing outside the checkout: RetinaMNIST is taken
# from $TRANSFUSE_DATA (default ./.gpudata, an ignored folder the session carries, holding
# retinamnist.npz); without it the study runs on builtin:brain_tissue and says so.
# Budget: under 9 minutes (run it with timeout_s 600); about 5-6 expected on an H100/H200.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$PWD"
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export TRANSFUSE_DATA=${TRANSFUSE_DATA:-$PWD/.gpudata}
# the built-in datasets' cache that bench/gpu_prepare.sh built (no pydicom-data needed here)
[ -d "$PWD/.gpudata/cache" ] && export TRANSFUSE_CACHE=${TRANSFUSE_CACHE:-$PWD/.gpudata/cache}
PY=${PY:-python3}
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
DATA="medmnist:retinamnist@28"
if [ ! -f "$TRANSFUSE_DATA/retinamnist.npz" ]; then
  DATA="builtin:brain_tissue"; echo "no $TRANSFUSE_DATA/retinamnist.npz: using $DATA" | tee "$OUT/data.txt"
fi
el "fit (CUDA graph off / on) vs bare loops"
timeout 200 $PY bench/train_overhead.py --device cuda --model cbr_small --size 28 --batch 64 \
  --steps 200 --repeats 3 --cuda-graph --reduce-overhead 2>&1 | tail -n 20 | tee "$OUT/train_overhead.log"
el "64-run study: cohorts, solo-8, solo-1 (16 runs), probe"
timeout 360 $PY bench/study_throughput.py --device cuda --data "$DATA" --seeds 32 --solo1-seeds 8 \
  --steps 200 --batch 64 --timeout 200 2>&1 | tee "$OUT/study_throughput.log"
el done
