#!/usr/bin/env python
"""Which fine-tuning recipe beats the baseline on the bundled drug reviews?

Runs each candidate recipe over several seeds with `specft.pipeline.run` (full runs: the bundled MiniLM,
the shipped test split, validation-based best-epoch choice) and records, for every run, the model's and
the paired baseline's test accuracy and macro-F1 (the baseline is trained on exactly the model's
training rows, in the same run). Writes bench/recipe_results.json; `nbs/09_pipeline.ipynb` plots it.

    python bench/recipe.py                       # the candidates, seeds 0 1 2 (about 25 minutes on 2 CPU cores in bf16)
    python bench/recipe.py --more                # and the ablations (for a GPU)
    python bench/recipe.py --precisions          # the defaults in fp32 and in bf16 -> bench/precision_results.json
    python bench/recipe.py --quick               # the tiny model, 1 epoch, 2 candidates, seed 0: a smoke test
                                                 # (its results go to a temporary file unless --out is given)
    python bench/recipe.py --only defaults --add # run one candidate again, keeping the others' results
"""
import argparse, dataclasses, json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from specft.core import choose_precision, device_name
from specft.pipeline import RunConfig, run

# Each candidate changes a few settings of RunConfig; everything else stays at the default, except that every
# candidate keeps the epoch with the best validation macro-F1 and trains on plain cross-entropy, as they ran
# before the logit-adjusted loss existed (SELECT). MORE adds ablations. bench/selection.py compares the later
# recipes (the logit adjustment, the last epoch) with these.
SELECT = dict(select_metric='macro_f1', logit_adjust=0.0)
CANDIDATES = {
    'plain (cls, lr 5e-5, 4 ep, len 256)': dict(pooling='cls', class_weights='none', lr=5e-5, head_lr_scale=1.0, epochs=4, max_len=256, **SELECT),
    'mean pooling + class weights': dict(pooling='mean', class_weights='auto', lr=5e-5, head_lr_scale=1.0, epochs=4, max_len=256, **SELECT),
    'mean + cw + lr 8e-5, head x10, 5 ep, len 320': dict(pooling='mean', class_weights='auto', lr=8e-5, head_lr_scale=10.0, epochs=5, max_len=320, **SELECT),
    'same, sqrt class weights': dict(pooling='mean', class_weights='sqrt', lr=8e-5, head_lr_scale=10.0, epochs=5, max_len=320, **SELECT),
    'sqrt cw, lr 5e-5, 8 ep': dict(pooling='mean', class_weights='sqrt', lr=5e-5, head_lr_scale=10.0, epochs=8, max_len=320, **SELECT),
    # where bench/selection.py ended up: RunConfig's defaults (this candidate keeps the last epoch)
    'defaults: logit-adjusted tau 0.5, last epoch': dict(pooling='mean', class_weights='none', logit_adjust=0.5, lr=8e-5,
                                                          head_lr_scale=10.0, epochs=5, max_len=320, select_metric='last'),
}
MORE = {
    'plain + class weights': dict(pooling='cls', class_weights='auto', lr=5e-5, head_lr_scale=1.0, epochs=4, max_len=256, **SELECT),
    'recipe, cls pooling': dict(pooling='cls', class_weights='auto', lr=8e-5, head_lr_scale=10.0, epochs=5, max_len=320, **SELECT),
    'recipe, no class weights': dict(pooling='mean', class_weights='none', lr=8e-5, head_lr_scale=10.0, epochs=5, max_len=320, **SELECT),
    'recipe, 8 epochs': dict(pooling='mean', class_weights='auto', lr=8e-5, head_lr_scale=10.0, epochs=8, max_len=320, **SELECT),
}
# --precisions: the defaults (whatever RunConfig holds) trained in fp32 and in bf16, for the precision comparison
PRECISION = {'defaults, fp32': dict(precision='fp32'), 'defaults, bf16': dict(precision='bf16')}
QUICK = {'tiny A': dict(model='tiny', epochs=1, max_len=64), 'tiny B': dict(model='tiny', epochs=1, max_len=64, pooling='cls')}

def summarise(runs):
    "Mean and spread (population sd, min, max) of each metric, for the model and its paired baseline"
    out = {}
    for who in ('model', 'baseline'):
        for k in ('accuracy', 'macro_f1'):
            xs = [r[who][k] for r in runs]
            out[f'{who}_{k}'] = {'mean': statistics.fmean(xs), 'sd': statistics.pstdev(xs), 'min': min(xs), 'max': max(xs)}
    out['gap_macro_f1'] = out['model_macro_f1']['mean'] - out['baseline_macro_f1']['mean']
    out['gap_accuracy'] = out['model_accuracy']['mean'] - out['baseline_accuracy']['mean']
    return out

def summary_line(s:dict)->str:
    "One line of `summarise`'s output: the model's mean test macro-F1 (with its sd) and accuracy, and the baseline's"
    return (f"F1 {s['model_macro_f1']['mean']:.3f}±{s['model_macro_f1']['sd']:.3f} acc {s['model_accuracy']['mean']:.3f}"
            f" | baseline F1 {s['baseline_macro_f1']['mean']:.3f} acc {s['baseline_accuracy']['mean']:.3f}")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--only', nargs='*', help='run only the candidates whose names contain one of these')
    ap.add_argument('--quick', action='store_true', help='the tiny model, 1 epoch, 2 candidates, seed 0; results to a temporary file')
    ap.add_argument('--more', action='store_true', help='also the ablations in MORE (a GPU makes them minutes)')
    ap.add_argument('--precisions', action='store_true', help='run PRECISION (the defaults in fp32 and bf16) instead')
    ap.add_argument('--precision', default='auto', help="for every candidate; 'auto' is specft's choice for this machine")
    ap.add_argument('--out', default=None, help='default: bench/recipe_results.json, or precision_results.json; with --quick a temporary file')
    ap.add_argument('--add', action='store_true', help='keep the candidates already in --out and add (or redo) these')
    a = ap.parse_args(argv)
    if a.quick: a.seeds = a.seeds[:1]
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/recipe_quick.json' if a.quick else
                      str(Path(__file__).with_name('precision_results.json' if a.precisions else 'recipe_results.json')))
    cands = QUICK if a.quick else PRECISION if a.precisions else {**CANDIDATES, **(MORE if a.more else {})}
    if a.only: cands = {k: v for k, v in cands.items() if any(o in k for o in a.only)}
    res = {'command': 'python bench/recipe.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'precision': choose_precision(a.precision, 'auto'), 'defaults': dataclasses.asdict(RunConfig()), 'candidates': {}}
    if a.add and Path(a.out).is_file():
        old = json.loads(Path(a.out).read_text())
        res['candidates'] = {k: v for k, v in old['candidates'].items() if k not in cands}
        res['command'] = f"{old['command']}; {res['command']}"
    res['candidates'].update({name: {'settings': over, 'runs': []} for name, over in cands.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:              # seed by seed, so a cut-short benchmark still compares every candidate
            for i, (name, over) in enumerate(cands.items()):
                t0 = time.time()
                cfg = RunConfig(**{'precision': choose_precision(a.precision, 'auto'), **over}, seed=seed, out=f'{tmp}/{i}-{seed}')
                r = run(cfg)
                runs = res['candidates'][name]['runs']
                runs.append({'seed': seed, 'precision': cfg.precision, 'seconds': round(time.time() - t0, 1), 'best_epoch': r.metrics['best_epoch'],
                             'model': {k: r.metrics[k] for k in ('accuracy', 'macro_f1')},
                             'baseline': {k: r.baseline[k] for k in ('accuracy', 'macro_f1')}})
                res['candidates'][name]['summary'] = summarise(runs)
                print(f"{name} seed {seed}: model {runs[-1]['model']} baseline {runs[-1]['baseline']} "
                      f"best epoch {runs[-1]['best_epoch']} ({runs[-1]['seconds']} s)", flush=True)
                Path(a.out).write_text(json.dumps(res, indent=2))
    for name, c in res['candidates'].items():
        s = c['summary']
        print(f"{name:48s} model F1 {s['model_macro_f1']['mean']:.3f}±{s['model_macro_f1']['sd']:.3f} "
              f"acc {s['model_accuracy']['mean']:.3f} | baseline F1 {s['baseline_macro_f1']['mean']:.3f} "
              f"acc {s['baseline_accuracy']['mean']:.3f} | gap F1 {s['gap_macro_f1']:+.3f} acc {s['gap_accuracy']:+.3f}")

if __name__ == '__main__':
    main()
