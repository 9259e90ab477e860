#!/usr/bin/env bash
# The GPU check of a session that is lent one (the `device` tool: one H200, 15 minutes in all,
# no network there). One run, everything it prints saved under $OUT (default gpu-results/):
# the CUDA-only tests (tests/test_cuda.py), the training throughput of the paper's settings
# against ours on the Llama-3.2-1B shape (bench/train_throughput.py), and probe scoring
# (bench/probe_scoring.py). Copy the numbers into docs/performance.md afterwards.
#
# The device image has torch, transformers, peft, pytest, typer and rich, but not pydantic:
# carry it as wheels (in this repo's root, on the development machine; .whl/ is ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic pydantic-core annotated-types typing-inspection
# then: run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/machine.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py 2>&1 \
    | tee "$out/test_cuda.txt"
timeout 240 python3 bench/train_throughput.py --model both --steps 8 --warmup 3 2>&1 \
    | tee "$out/train_throughput.txt"
timeout 60 python3 bench/probe_scoring.py --repeat 5 2>&1 | tee "$out/probe_scoring.txt"
