#!/usr/bin/env python
"""A learning curve: test macro-F1 against the number of labelled training reviews, for the TF-IDF baseline, full
fine-tuning and LoRA (`specft.curve.learning_curve`, lesson 22).

For each size and seed, `specft.curve.stratified_subset` draws the training rows (stratified by label, nested: a
seed's smaller subsets lie inside its larger ones), and every method trains on those same rows (paired). Each model
is the pipeline's recipe (`RunConfig` defaults, each method's default learning rate) with no validation loader
(the validation rows are not used), its last epoch kept, nothing written to disk, and at least --min-steps
optimizer steps (`curve_epochs`: few-sample fine-tuning needs more steps than 5 epochs of 25 rows give; Mosbach et
al. 2021, Zhang et al. 2021). The floor of 100 steps was fixed before any score was seen; nothing is tuned. Each
model is scored once on the test split.

The reduced recipe other benches use for CPU time: reviews cut at --max-len 128 tokens (the pipeline's default is
320), the same for every method and size.

    python bench/learning_curve.py            # MiniLM; sizes 25 50 100 200 all; seeds 0 1 2; full and lora (what the lesson reads)
    python bench/learning_curve.py --methods lora --add   # LoRA's runs added to the file's full fine-tuning runs
    python bench/learning_curve.py --quick    # the tiny model, sizes 8 16, seed 0, max_len 32, min_steps 4: a smoke test
                                              # (seconds; its results go to a temporary file unless --out is given)
Writes bench/learning_curve_results.json; nbs/22_curve.ipynb reads it.
Data: the bundled drug reviews, a subset of the UCI Drug Review dataset (Gräßer, Kallumadi, Malberg and Zaunseder,
Digital Health 2018; CC BY 4.0; full citation in specft.corpus.DRUG_REVIEWS_CITATION).
"""
import argparse, dataclasses, json, sys, tempfile, time
from pathlib import Path
import pandas as pd, torch
from specft.core import device_name
from specft.pipeline import RunConfig, prepare_data, git_commit, resolved
from specft.curve import MIN_STEPS, learning_curve, curve_summary, crossing_point

QUICK = dict(model='tiny', sizes=['8', '16'], seeds=[0], max_len=32, min_steps=4)

def size(s:str):
    "A size on the command line: a whole number of rows, or 'all'"
    return s if s == 'all' else int(s)

def records(df)->list[dict]:
    "The rows of `df` as JSON-ready dicts (NaN as null)"
    return json.loads(df.to_json(orient='records', double_precision=15))

def log(r:dict):
    steps = '' if r['method'] == 'tfidf' else f", {r['epochs']} epochs = {r['steps']} steps"
    print(f"size {r['size']:4} seed {r['seed']} {r['method']:5}: macro-F1 {r['macro_f1']:.3f}, accuracy {r['accuracy']:.3f}"
          f"{steps}, {r['train_seconds']:.1f} s", flush=True)

def same_recipe(a:RunConfig, b:RunConfig, methods:list)->bool:
    "Whether `a` and `b` train `methods` alike: every field equal, but those a method resolves (`BY_METHOD`) compared as each method resolves them"
    one = lambda c, m: dataclasses.asdict(resolved(dataclasses.replace(c, method=m)))
    return all(one(a, m) == one(b, m) for m in methods)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, sizes 8 16, seed 0, max_len 32, min_steps 4; results to a temporary file')
    ap.add_argument('--model', default=None, help='default minilm (tiny with --quick)')
    ap.add_argument('--sizes', nargs='+', default=None, help="labelled rows per point; 'all' = every training row (default 25 50 100 200 all)")
    ap.add_argument('--seeds', type=int, nargs='+', default=None, help='default 0 1 2')
    ap.add_argument('--methods', nargs='+', default=['full', 'lora'], help='fine-tuning methods (the tfidf baseline is always added)')
    ap.add_argument('--max-len', type=int, default=None, help='tokens kept per review (default 128, reduced from 320 for CPU time)')
    ap.add_argument('--min-steps', type=int, default=None, help=f'the floor on optimizer steps per run (default {MIN_STEPS})')
    ap.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    ap.add_argument('--out', default=None, help='default: bench/learning_curve_results.json; with --quick a temporary file')
    ap.add_argument('--add', action='store_true', help="keep the other methods' runs already in --out (same settings, sizes, seeds and "
                                                       "subsets, checked) and add these methods' runs to them")
    a = ap.parse_args(argv)
    q = QUICK if a.quick else {}
    sizes = [size(s) for s in (a.sizes or q.get('sizes') or ['25', '50', '100', '200', 'all'])]
    seeds = a.seeds or q.get('seeds') or [0, 1, 2]
    min_steps = a.min_steps if a.min_steps is not None else q.get('min_steps', MIN_STEPS)
    cfg = RunConfig(model=a.model or q.get('model', 'minilm'), max_len=a.max_len or q.get('max_len', 128), device=a.device)
    out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/learning_curve_quick.json' if a.quick else
                    str(Path(__file__).with_name('learning_curve_results.json')))
    t0 = time.time()
    old = json.loads(Path(out).read_text()) if a.add and Path(out).is_file() else None
    if old and (not same_recipe(RunConfig(**old['config']), cfg, old['methods']) or (old['seeds'], old['min_steps']) != (seeds, min_steps)):
        sys.exit(f'--add: {out} was made with other settings, seeds or step floor; run its methods again with these instead.')
    data = prepare_data(cfg)
    methods = [m for m in a.methods if m != 'tfidf']
    runs = learning_curve(cfg, sizes, seeds, methods, min_steps, progress=log, data=data)
    made = {'command': 'python bench/learning_curve.py ' + ' '.join(argv if argv is not None else sys.argv[1:]), 'device': device_name(),
            'torch': torch.__version__, 'threads': torch.get_num_threads(), 'git_commit': git_commit(),
            'minutes_total': round((time.time() - t0) / 60, 2)}
    by_method = {m: made for m in methods}
    if old:   # the earlier methods' runs, on the very same subsets (the TF-IDF baseline's rows are redone here: checked equal)
        key = lambda r: (r['size'], r['seed'], r['method'])
        was = {key(r): r for r in old['runs']}
        now = {key(r): r for r in records(runs) if r['method'] == 'tfidf'}
        if was.keys() & now.keys() != now.keys() or any(was[k]['subset'] != r['subset'] or abs(was[k]['macro_f1'] - r['macro_f1']) > 1e-9
                                                         for k, r in now.items()):
            sys.exit(f'--add: the subsets or baseline scores differ from those in {out}; run every method again instead.')
        earlier = old.get('by_method') or {m: {k: old[k] for k in made if k in old} for m in old['methods']}
        by_method = {**{m: v for m, v in earlier.items() if m not in methods}, **by_method}
        runs = pd.concat([runs, pd.DataFrame([r for r in old['runs'] if r['method'] not in methods and r['method'] != 'tfidf'])],
                         ignore_index=True)
        methods = list(by_method)
    summary = curve_summary(runs)
    res = {**made, 'config': dataclasses.asdict(cfg), 'sizes': sorted(int(n) for n in runs['size'].unique()), 'seeds': seeds,
           'methods': methods, 'by_method': by_method, 'min_steps': min_steps,
           'n_train': len(data.train), 'n_test': len(data.test),
           'runs': records(runs), 'summary': records(summary),
           'crossing_points': {m: crossing_point(summary, m) for m in methods}}
    Path(out).write_text(json.dumps(res, indent=1))
    print(f"crossing points (smallest size from which the mean macro-F1 stays above tfidf's): {res['crossing_points']}")
    print(f"{res['minutes_total']} minutes; wrote {out}", flush=True)

if __name__ == '__main__':
    main()
