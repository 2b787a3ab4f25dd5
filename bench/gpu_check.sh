#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one script that fits a 10-minute slot on a recent GPU:
#   1. the machine: GPU name, compute capability, memory; versions;
#   2. the engine's CUDA tests (tests/test_train_cuda.py: bf16, fp16 + GradScaler, out-of-memory retry, resume);
#   3. every lesson top to bottom in plain Python with its `slow` and `cuda` cells (tools/run_cells.py), all at
#      once on the one GPU (one CPU thread each); the end of each notebook's log is kept;
#   4. a tiny end-to-end run in each precision through `specft.pipeline.run`;
#   5. bench/train_throughput.py on the GPU in bf16 (specft against transformers.Trainer, three rounds and medians, alone on the
#      GPU), with its ratio lines and the share of the GPU's measured matrix-multiply peak (model FLOPs utilisation).
#   6. a 2-process DDP run through torchrun and the specft command: NCCL with two GPUs or more, else two processes
#      sharing one GPU with gloo (specft.distributed picks the backend), then its distributed.json and a Predictor load.
# Usage (specft importable, bundled model and data installed): bash bench/gpu_check.sh [OUT_DIR]
# It writes OUT_DIR/gpu_check.log (the summary) and OUT_DIR/notebooks.log (the end of each notebook's output).
set -uo pipefail
out=${1:-bench/gpu_check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
exec > >(tee "$out/gpu_check.log") 2>&1
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "1. machine"
date -u
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, specft, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| transformers', transformers.__version__, '| specft', specft.__version__, '| bf16', torch.cuda.is_bf16_supported())"

step "2. tests/test_train_cuda.py"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_train_cuda.py 2>&1 | tail -15

step "3. every lesson with its slow and cuda cells (tools/run_cells.py, all at once)"
nbs=$(ls nbs/*.ipynb nbs/lessons/*.ipynb 2>/dev/null | grep -v index.ipynb)
# the longest first, so that the slot is used evenly
nbs=$(for nb in $nbs; do echo "$(grep -c '#| slow' "$nb") $nb"; done | sort -rn | cut -d' ' -f2)
mkdir -p "$out/nb"
printf '%s\n' $nbs | OMP_NUM_THREADS=1 xargs -P 16 -I{} bash -c \
    'log="$0/nb-$(basename {} .ipynb).log"; if (cd "$(dirname {})" && timeout 210 python3 "$1/tools/run_cells.py" "$(basename {})" --flags slow cuda) >"$log" 2>&1;
     then echo "PASS {}: $(tail -1 "$log")"; else echo "FAIL {} (exit $?): $(grep -E "Error|error" "$log" | tail -2)"; fi' "$(cd "$out/nb" && pwd)" "$here"
for f in "$out"/nb/*.log; do echo "##### $f"; tail -n 40 "$f"; done > "$out/notebooks.log" && rm -r "$out/nb"
step "4. tiny end-to-end runs in each precision"
timeout 90 python3 - <<'PY'
import tempfile, torch
from specft.pipeline import RunConfig, run
for p in ('auto', 'bf16', 'fp16', 'fp32'):
    r = run(RunConfig(model='tiny', epochs=1, max_len=64, max_train_rows=200, precision=p, out=tempfile.mkdtemp() + '/r'))
    print(f"precision {p}: macro-F1 {r.metrics['macro_f1']:.3f}, steps {r.state.step}, finite loss {r.state.loss == r.state.loss}")
PY

step "5. training throughput on the GPU, bf16 (bench/train_throughput.py --device cuda --repeats 3)"
OMP_NUM_THREADS=8 timeout 200 python3 bench/train_throughput.py --device cuda --precision bf16 --repeats 3 --threads 8 2>&1 \
    | grep -v -i -E 'warn|it/s\]|^\s*$' | tail -40

step "6. a 2-process DDP run (torchrun -m specft train; NCCL with 2+ GPUs, else gloo with both processes on one GPU)"
python3 -c "import torch; n = torch.cuda.device_count(); print(f'GPUs: {n}; backend: {\"nccl\" if n >= 2 else \"gloo\"}')"
rm -rf "$out/ddp"
OMP_NUM_THREADS=4 timeout 180 python3 -m torch.distributed.run --nproc_per_node 2 --master_port 29517 -m specft train --model tiny --epochs 2 \
    --max-len 64 --max-train-rows 400 --device cuda --precision auto --out "$out/ddp" 2>&1 | grep -v -i -E 'warn|it/s\]|^\s*$' | tail -12
cat "$out/ddp/distributed.json" && echo
timeout 60 python3 -c "from specft.pipeline import Predictor; print(Predictor.load('$out/ddp').predict(['It helped a lot.'])[0]['label'])"

step "done"
