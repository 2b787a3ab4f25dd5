#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short script (minutes on a recent GPU):
#   1. the engine's CUDA tests (bf16 and fp16 + GradScaler, out-of-memory retry, resume);
#   2. every notebook's `cuda` cells (and its ordinary cells) in plain Python;
#   3. a tiny end-to-end run in each precision through `specft.pipeline.run`;
#   4. the recipe benchmark (bench/recipe.py --more: with the ablations) over 3 seeds, fp32 like the CPU default;
#   5. the augmentation benchmark (bench/augment.py) over 3 seeds.
# Usage (specft importable, bundled model and data installed): bash bench/gpu_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-bench}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_train_cuda.py 2>&1 | tail -15
timeout 150 python3 tools/run_cells.py $(grep -l '#| cuda' nbs/*.ipynb) --flags cuda 2>&1 | tail -15
python3 - <<'PY'
import tempfile, torch
from specft.pipeline import RunConfig, run
for p in ('auto', 'bf16', 'fp16', 'fp32'):
    r = run(RunConfig(model='tiny', epochs=1, max_len=64, max_train_rows=200, precision=p, out=tempfile.mkdtemp() + '/r'))
    print(f"precision {p}: macro-F1 {r.metrics['macro_f1']:.3f}, steps {r.state.step}, finite loss {r.state.loss == r.state.loss}")
PY
python3 bench/recipe.py --more --out "$out/recipe_results.json" 2>&1 | grep -v -i warn | tail -40
python3 bench/augment.py --seeds 0 1 2 --out "$out/augment_results.json" 2>&1 | grep -v -i warn | tail -20
