#!/usr/bin/env python
"""Where a MiniLM training step spends its time on the CPU: torch.profiler over a few steps, top operators.

Trains the bundled MiniLM (from `build_classifier`) on length-bucketed batches of the drug-review training
split, batch 16, max length 256, with fused AdamW, and prints the operators by their own CPU time. With
`--stock-dropout` the model keeps torch's dropout, which shows `aten::bernoulli_` (one generator call per
mask element) and the attention falling back from the fused kernel to `bmm`; without it, specft's
`fast_dropout`. Lesson 05 quotes the fp32 stock profile.

    python bench/profile_step.py --stock-dropout            # torch's dropout, fp32
    python bench/profile_step.py --precision bf16           # specft's dropout, bf16 autocast
    python bench/profile_step.py --quick                    # the tiny model, 2 steps at length 64: a smoke test
"""
import argparse, os, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    ap.add_argument('--stock-dropout', action='store_true', help="keep torch's nn.Dropout and sdpa attention")
    ap.add_argument('--steps', type=int, default=7)
    ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument('--quick', action='store_true', help='a smoke test in seconds: the tiny model, 2 steps, max length 64')
    a = ap.parse_args(argv)
    model_name, max_len = ('tiny', 64) if a.quick else ('minilm', 256)
    if a.quick: a.steps = min(a.steps, 2)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import prepare
    from specft.batch import make_loader
    from specft.model import build_classifier
    tok, _, train, _ = prepare(max_len)
    model, _ = build_classifier(model_name, 3, seed=0, fast_dropout=not a.stock_dropout)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    batches = list(make_loader(*train, 16, tok.pad_token_id, shuffle=True, seed=0))[:a.steps + 1]
    def step(b):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.precision == 'bf16'):
            logits = model(b['input_ids'], b['attention_mask'])
        F.cross_entropy(logits.float(), b['labels']).backward(); opt.step(); opt.zero_grad(set_to_none=True)
    step(batches[0])   # warm-up, not profiled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for b in batches[1:]: step(b)
        seconds = time.perf_counter() - t
    tokens = sum(int(b['attention_mask'].sum()) for b in batches[1:])
    print(f"# {a.steps} steps, {tokens} real tokens, {seconds:.2f} s ({tokens / seconds:.0f} tokens/s); precision {a.precision}, "
          f"{'torch' if a.stock_dropout else 'specft fast'} dropout, {torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12))

if __name__ == '__main__':
    main()
