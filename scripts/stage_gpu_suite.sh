#!/usr/bin/env bash
# Stage what scripts/gpu_suite.sh needs on the GPU machine in .device/ (git-ignored, carried by the device tool):
# the wheels and CIFAKE (../shared/device/prepare.sh data); pillow-heif, which every decode imports but which neither
# the GPU machine's image nor ../shared/device/wheels holds (downloaded here for its Python 3.12, at the version
# installed here); and experiment=cifake_top's ImageNet weights, stored in half precision (9 MiB instead of 18).
# The data audit's wheels (ImageHash, PyWavelets: 4.8 MB) are left out, as no stage runs the audit, to stay under
# the tool's 64 MiB; so is litdata (with boto3 and obstore, over 20 MB): data.loader=litdata does not run there.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p "$(git rev-parse --git-dir)/info"  # prepare.sh appends its ignore line there
../shared/device/prepare.sh data
rm -f .device/wheels/ImageHash-*.whl .device/wheels/pywavelets-*.whl
heif=$(python -c "import importlib.metadata as m; print(m.version('pillow-heif'))")
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .device/wheels "pillow-heif==$heif"
mkdir -p .device/weights
python - <<'PY'
import torch

name = "tf_efficientnet_lite0_in1k.pth"
state = torch.load(f"../shared/weights/{name}", map_location="cpu", weights_only=True)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, f".device/weights/{name}")
PY
# what the device tool carries: tracked and untracked, not ignored files, and .device
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$(( $(du -sb .device | cut -f1) + tree ))
echo "carried: $((total / 1048576)) MiB (.device and the working tree) of the device tool's 64"
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "error: .device and the working tree are $((total / 1048576)) MiB, over the device tool's 64 MiB: stage less" >&2
    exit 1
fi
