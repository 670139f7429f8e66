#!/usr/bin/env bash
# Run the open stages of the GPU suite (conf/suite/gpu.yaml) on the lent GPU machine, in one device `run` call:
#   command: bash scripts/gpu_suite.sh      carry: [".device"]      timeout_s: 600
# after `bash scripts/stage_gpu_suite.sh` here. It installs the staged wheels,
# runs `stage=open` on the staged CIFAKE while the command's 10 minutes allow (stages start only if their budget
# still fits), and copies docs/bench-gpu.{json,md} and the log to $OUT. Back here: copy those two files into
# docs/ and commit them; the next call (a later session's too) goes on with the next open stage. STAGE=K runs
# one stage again.
set -uo pipefail
limit=${LIMIT_S:-570}  # seconds this command may take in all, inside the device tool's 600
out=${OUT:-outputs/gpu_suite}
mkdir -p "$out"
bash .device/install.sh && export PYTHONPATH=/tmp/site:$PWD || exit
[ -d .device/weights ] && mkdir -p ../shared && ln -sfn "$PWD/.device/weights" ../shared/weights
export PYTHONUNBUFFERED=1
python3 -m fakedetect.bench suite=gpu "stage=${STAGE:-open}" "suite.deadline_s=$((limit - SECONDS))" \
    data.root=.device/data/cifake.tar.gz "$@" 2>&1 | tee "$out/gpu_suite.log"
status=${PIPESTATUS[0]}
cp docs/bench-gpu.json docs/bench-gpu.md "$out/" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$out/gpu_suite.log" 2>&1
exit "$status"
