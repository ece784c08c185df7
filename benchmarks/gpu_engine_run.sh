#!/bin/bash
# One device call: GPU engine tests, synthetic 8B models, kamado bench and batched decode (docs/GPU.md, "The engine on the GPU").
# Run from the repo root on the GPU machine with .whl carried: bash benchmarks/gpu_engine_run.sh
# (test_openmp.py is a CPU test of the 2-core CI machine: on the 16-core device one of its thread counts came out one
# higher, 2026-12-03 session 7; not investigated there.)
# Decode runs from CUDA graphs (kamado/engine/cuda_graph.py); BASELINE='VAR=value ...' adds a pp512 + tg128 run under those settings
# (e.g. KAMADO_CUDA_GRAPHS=0: eager; KAMADO_CUDA_GEMV=0: the Triton GEMVs),
# PROFILE=1 a torch.profiler table of graphed decode steps and a 512-token prefill (benchmarks/profile_gpu_decode.py),
# TIMELINE='1 8' the host/GPU split of a graphed decode step for those row counts (benchmarks/gpu_step_timeline.py).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; M=/tmp/synth; mkdir -p $M
KAMADO=(python3 -c 'import sys; from kamado.cli.main import main; sys.exit(main())')  # the device has no `kamado` command
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee $OUT/gpu.txt
timeout ${TEST_LIMIT:-150} python3 -m pytest tests/kernels tests/engine/test_gpu.py -q -rs -x --ignore=tests/kernels/test_openmp.py 2>&1 | tee $OUT/tests.txt
for T in ${TYPES:-Q4_K_M Q4_0 Q8_0 F16}; do
  s=$SECONDS
  timeout 120 python3 -m kamado.synthetic --shape llama3-8b --type $T -o $M/llama3-8b-$T.gguf --device cuda
  echo "synthetic $T: $((SECONDS - s)) s, $(du -h $M/llama3-8b-$T.gguf | cut -f1)" | tee -a $OUT/synth.txt
  timeout 60 "${KAMADO[@]}" bench -m $M/llama3-8b-$T.gguf -ngl 99 -p 0 -n 16 -r 1 > /dev/null 2>&1  # fills Triton's disk cache
  timeout 120 "${KAMADO[@]}" bench -m $M/llama3-8b-$T.gguf -ngl 99 -p 512 -n 128 -r ${REPS:-3} -o json > $OUT/bench-$T.json
  python3 -c "import json, statistics as s, sys; [print(f'{sys.argv[1]} {r[\"test\"] if \"test\" in r else (r[\"n_prompt\"], r[\"n_gen\"])}: mean {r[\"avg_ts\"]:.1f} ± {r[\"stddev_ts\"]:.1f}, median {s.median(r[\"samples_ts\"]):.1f} t/s; runs', ', '.join(f'{t:.1f}' for t in r['samples_ts'])) for r in json.load(open(sys.argv[2]))]" $T $OUT/bench-$T.json | tee -a $OUT/bench.md
  if [ "$T" = Q4_K_M ] && [ -n "${NPL:-}" ]; then
    timeout ${BATCHED_LIMIT:-200} python3 benchmarks/bench_gpu_batched.py -m $M/llama3-8b-$T.gguf --npl $NPL 2>&1 | tee -a $OUT/batched.md
  fi
  if [ -n "${BASELINE:-}" ]; then
    env $BASELINE timeout 90 "${KAMADO[@]}" bench -m $M/llama3-8b-$T.gguf -ngl 99 -p 512 -n 128 -r ${REPS:-3} 2>&1 | tee -a $OUT/baseline.md
  fi
  if [ -n "${PROFILE:-}" ]; then
    timeout 120 python3 benchmarks/profile_gpu_decode.py -m $M/llama3-8b-$T.gguf --steps 8 --prefill 512 2>&1 | tee -a $OUT/profile.txt
  fi
  for R in ${TIMELINE:-}; do
    timeout 120 python3 benchmarks/gpu_step_timeline.py -m $M/llama3-8b-$T.gguf --rows $R 2>&1 | tee -a $OUT/timeline.txt
  done
  rm -f $M/llama3-8b-$T.gguf
done
