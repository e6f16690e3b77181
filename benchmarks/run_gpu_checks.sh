#!/usr/bin/env bash
# GPU checks and benchmarks in one go (one lease of a GPU machine), with the package installed:
#   1. tests/test_cuda.py (CUDA vs CPU parity, bf16/fp16, attention kernels, torch.compile, pipelines, the shipped
#      model in half precision, bf16 mixed-precision training, LLaVA in bf16);
#   2. bench_reconstruct.py on the release configuration (448 px): float32, bf16 autocast, bf16 + torch.compile;
#   3. the whole test suite with the GPU visible.
# Usage: bash benchmarks/run_gpu_checks.sh [LOG_DIR]   (logs and JSON rows go to LOG_DIR, default gpu-logs)
set -uo pipefail
LOG=${1:-gpu-logs}
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG/gpu.txt"
python3 -c "import torch, transformers, diffusers, peft, accelerate, datasets; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, \
'accelerate', accelerate.__version__, 'datasets', datasets.__version__)" | tee -a "$LOG/gpu.txt"

python3 -m pytest tests/test_cuda.py -v -rs -p no:cacheprovider 2>&1 | tee "$LOG/test_cuda.log"

bench="python3 benchmarks/bench_reconstruct.py --release --device cuda --repeats 5 --pipeline-batch-sizes"
{
  $bench --batch-sizes 1 8 32 --dtype float32 --pipeline-batch-sizes 1 64 256 --json "$LOG/bench_float32.json"
  $bench --batch-sizes 1 8 32 --dtype bfloat16 --autocast --json "$LOG/bench_bfloat16.json"
  $bench --batch-sizes 8 32 --dtype bfloat16 --autocast --compile --json "$LOG/bench_bfloat16_compile.json"
  $bench --batch-sizes 32 --steps 1 4 --dtype bfloat16 --autocast --ops encode decode reconstruct --json "$LOG/bench_ops.json"
} 2>&1 | tee "$LOG/bench.log"

python3 -m pytest tests -q -p no:cacheprovider -n "${WORKERS:-8}" 2>&1 | tee "$LOG/suite.log"
