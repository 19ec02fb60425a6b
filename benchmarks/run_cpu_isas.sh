#!/usr/bin/env bash
# The CPU benchmarks for every instruction-set variant this machine runs: bench_cpu (fp32 and bf16),
# bench_conv and bench_train_step, each with --isa (our kernels' variant, and torch limited to the
# same set), results under benchmarks/results/cpu-<variant>/.  Nothing else may run meanwhile.
#
#   benchmarks/run_cpu_isas.sh [variant ...]     # default: every variant `rigl_sparse.info` lists as runnable
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
  read -r -a variants <<< "$($PY -c 'from rigl_sparse.ops import cpu_extension as c; print(*c.isa_status()["runnable"])')"
fi
for isa in "${variants[@]}"; do
  echo "=== $isa"
  if [ "$isa" = baseline ]; then  # slow: one block size, two densities
    $PY benchmarks/bench_cpu.py --isa "$isa" --blocks 32 --densities 0.5 0.1
    $PY benchmarks/bench_cpu.py --isa "$isa" --blocks 32 --densities 0.5 0.1 --dtype bfloat16 --baseline-dtype float32
    $PY benchmarks/bench_conv.py --isa "$isa" --blocks 32 --densities 0.1
    $PY benchmarks/bench_train_step.py --isa "$isa" --models transformer --densities 0.1
  else
    $PY benchmarks/bench_cpu.py --isa "$isa" --blocks 16 32 64 --densities 0.5 0.25 0.1 0.05
    # Without AVX512_BF16 torch's own bf16 matmul is slower than its fp32 one: compare with fp32 there.
    bf16_base=$(grep -q avx512_bf16 /proc/cpuinfo && [ "$isa" = avx512 ] && echo same || echo float32)
    $PY benchmarks/bench_cpu.py --isa "$isa" --blocks 16 32 64 --densities 0.5 0.1 --dtype bfloat16 \
      --baseline-dtype "$bf16_base"
    $PY benchmarks/bench_conv.py --isa "$isa" --blocks 16 32 --densities 0.2 0.1 0.05
    $PY benchmarks/bench_train_step.py --isa "$isa" --models transformer,mlp --densities 0.1,0.05
  fi
done
