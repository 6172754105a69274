#!/usr/bin/env bash
# Every benchmark, one after another, into one results file: bash bench/all.sh [RESULTS_FILE]
# On a machine with a GPU the device-aware benches (--device auto) measure it; the others are CPU-only by nature
# (thread counts, process memory, gloo ranks, faiss-cpu). Run it on a quiet machine: each bench alternates its two
# sides, but a machine busy with other work still widens the spread.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/results-$(date -u +%Y%m%dT%H%M%SZ).txt}
mkdir -p "$(dirname "$out")"
run() {
  echo "=== $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out"
  "$@" 2>&1 | tee -a "$out"
}
{ uname -a; lscpu | grep -E "Model name|^CPU\(s\)"; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee -a "$out"
run python -m bench.extract_throughput --backbones resnet18 --images 128 --device auto
run python -m bench.extract_throughput --backbones resnet152 --images 16 --batch-size 4 --device auto
run python bench/eval_speed.py --device auto
run python bench/search_speed.py
run python bench/serve_load.py
run python bench/report_metrics.py
run python bench/train_step.py --device auto
run python bench/train_input.py --mode train --device auto
run python bench/train_input.py --mode finetune --device auto
run python bench/train_speed.py
run python bench/train_memory.py
run python bench/train_memory.py --regions 36
run python bench/pool_step.py --embed-dim 256 --word-dim 128 --rounds 3
run python bench/distributed_train.py --batch-sizes 128,1024
run python bench/shard_merge.py
echo "results in $out"
