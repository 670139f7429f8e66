#!/usr/bin/env bash
# The reduced-scale CPU rows of the README's results table, rerun on this machine so that each has its test/acc_dedup:
# JOBS trainings at a time (default 2), one thread each, then `python -m fakedetect.results readme=README.md`.
# The full-scale rows (cnnv3, cnnv3_robust: 30 epochs) are separate commands (docs/evaluation.md, Robustness), timed alone.
#   CIFAKE=../shared/data/cifake/cifake.tar.gz JOBS=2 bash scripts/results_cpu.sh [EXPERIMENT...]   (default: all)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
export CIFAKE="${CIFAKE:-$(realpath ../shared/data/cifake/cifake.tar.gz)}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
small="data.train_limit=10000 data.test_limit=2000 trainer.max_epochs=2"
runs=(
    "experiment=ae_conv trainer.max_epochs=5"
    "experiment=ae_focal $small"
    "experiment=ae_greyscale $small"
    "experiment=ae_transfer_hybrid $small"
    "experiment=ae_youden $small"
    "experiment=cnnv3 data.train_limit=20000 data.test_limit=2000 trainer.max_epochs=4"
    "experiment=cnnv3_blurjpeg data.train_limit=20000 data.test_limit=2000 trainer.max_epochs=4"
    "experiment=effnet_lite0_pretrained model.input_size=64 $small"
    "experiment=effnet_lite0_scratch model.input_size=64 $small"
    "experiment=resnet18_scratch $small"
)
only="^experiment=($(IFS="|"; echo "${*:-[a-z0-9_]+}")) "
printf '%s\n' "${runs[@]}" | grep -E "$only" | xargs -P "${JOBS:-2}" -I{} sh -c 'python -m fakedetect.train {} print_config=false >/dev/null 2>>outputs/results_cpu.log && echo "done: {}" || echo "FAILED: {}"'
python -m fakedetect.results readme=README.md
