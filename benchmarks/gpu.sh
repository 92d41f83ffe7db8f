#!/usr/bin/env bash
# The guided-generation benchmark on a lent GPU machine (the `device` tool), SD 2.1-base at 512 px.
#
# That machine has torch/transformers/accelerate but not diffusers or open_clip: they travel as wheels
# in the git-ignored .whl/ folder (diffusers 0.42.1, open_clip_torch 3.3.0, timm 1.0.31, ftfy, wcwidth,
# importlib_metadata; fetch them with `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .whl ...`). Call:
#   run(command="bash benchmarks/gpu.sh --seeds 8", carry=[".whl"])
# Extra arguments go to `python -m benchmarks.guidance`; results (JSON, markdown, RESULTS.md) are
# copied to $OUT so they come back.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# /tmp/site holds only those third-party wheels (pip --target has no other way in); braindive and benchmarks
# come from the working directory, the repository root (python3 -m)
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m benchmarks.guidance --config sd21 --device cuda --batch 8 "$@"
mkdir -p "${OUT:-/tmp/out}"
cp benchmarks/results/guidance_sd21.json benchmarks/results/guidance_sd21.md benchmarks/RESULTS.md "${OUT:-/tmp/out}/"
