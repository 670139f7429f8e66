#!/usr/bin/env bash
# Stage what scripts/gpu_suite.sh needs on the GPU machine in .device/ (git-ignored, carried by the device tool):
# the wheels and CIFAKE (../shared/device/prepare.sh data) and experiment=cifake_top's ImageNet weights, stored in
# half precision (9 MiB instead of 18) so that .device/ and the checkout stay under the tool's 64 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p "$(git rev-parse --git-dir)/info"  # prepare.sh appends its ignore line there
../shared/device/prepare.sh data
mkdir -p .device/weights
python - <<'PY'
import torch

name = "tf_efficientnet_lite0_in1k.pth"
state = torch.load(f"../shared/weights/{name}", map_location="cpu", weights_only=True)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, f".device/weights/{name}")
PY
du -sh .device
