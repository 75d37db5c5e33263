#!/usr/bin/env bash
# Every GPU figure of issue 18, in one run of about 8 minutes on one GPU. Not yet run:
# no GPU was lent to the session that wrote it (see docs/performance.md).
#
# Before the run, from the project root on the machine with the data:
#   cp -r ../shared/data/cifar10_subset .gpu-data/      # 13 MB; .gpu-data/ is git-ignored
# then on the GPU machine (the device tool: carry [".venv", ".gpu-data"]):
#   bash benchmarks/gpu_checks.sh                       # results under $OUT (or gpu-checks/)
#
# Each stage has its own time limit, so one slow stage cannot eat the others'; each
# writes its console output (and JSON where the benchmark has it) under $OUT.
set -u
cd "$(dirname "$0")/.."
mkdir -p "${OUT:-gpu-checks}"
OUT=$(cd "${OUT:-gpu-checks}" && pwd)  # absolute: the benchmark stages run from benchmarks/
export PYTHONUNBUFFERED=1 COLUMNS=160
[ -f .venv/bin/activate ] && . .venv/bin/activate
CIFAR_ROOT=${CIFAR_ROOT:-$PWD/.gpu-data}

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s): $*"
  local started=$SECONDS
  timeout -s INT "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "   exit $?, $((SECONDS - started))s; tail:"
  tail -n 14 "$OUT/$name.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# 1. The GPU tests: CUDA graphs against the eager step, and set_sync_debug_mode("error")
#    over the steady state of an epoch (eager and graphed), besides the existing ones.
stage tests 80 python -m pytest -q -x tests/test_gpu.py -k "graphs or synchronises or precisions"

# 2. Training images/s against the plain fp32 loop (target: fp32+graphs >= 5x at batch 100).
cd benchmarks
stage train_b100 100 python train_throughput.py --device cuda --steps 200 --rounds 3 \
  --variants fp32 bf16 bf16+compile fp32+graphs bf16+graphs --json "$OUT/train_b100.json"
stage train_b1000 50 python train_throughput.py --device cuda --steps 50 --batch-size 1000 --rounds 3 \
  --variants fp32 fp32+graphs bf16+graphs --json "$OUT/train_b1000.json"

# 3. IWAE at K=5000: the ratio on 1,000 images, then the whole test set (target: under 60 s).
stage iwae_ratio 45 python iwae_eval.py --device cuda --images 1000 --samples 5000 --rounds 1 \
  --plain-chunk 100 --json "$OUT/iwae_ratio.json"
stage iwae_full 70 python iwae_eval.py --device cuda --images 10000 --samples 5000 --rounds 1 \
  --loops fp32 --json "$OUT/iwae_full.json"

# 4. Aggregate images/s of N runs on the GPU.
stage concurrent 60 python concurrent_runs.py --device cuda --jobs 1 8 --steps 200 --variant fp32+graphs \
  --json "$OUT/concurrent.json"
cd ..

# 5. configs/cifar_iaf.yaml at full size on the CIFAR-10 subset, without and with the
#    graphed step: images/s and bits/dim from metrics.jsonl, peak memory at the end.
for graphs in false true; do
  stage "cifar_graphs_$graphs" 50 python - "$graphs" "$CIFAR_ROOT" "$OUT" <<'EOF'
import atexit, json, sys, torch
graphs, root, out = sys.argv[1:]
def report():
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
atexit.register(report)
from flowzoo.experiment import train
try:
    train("configs/cifar_iaf.yaml", [f"trainer.cuda_graphs={graphs}", f"data.root={root}", "trainer.log_every=20",
                                     "trainer.picture_count=0", f"output_dir={out}/cifar_runs_{graphs}"])
except KeyboardInterrupt:
    print("stopped by the stage's time limit")
EOF
  find "$OUT/cifar_runs_$graphs" -name metrics.jsonl -exec python -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["kind"] in ("train", "valid"):
        print(r["kind"], r["step"], r.get("images_per_second"), r.get("bpd"), r.get("bpd_elbo"), r.get("loss"))
' {} \; | tee "$OUT/cifar_curve_$graphs.txt" | tail -n 5
done
echo "done in ${SECONDS}s"
