#!/usr/bin/env python
"""Which recipe, and which epoch of it? Test scores of every epoch of each recipe, and of each rule that picks one.

A run keeps the weights of one epoch, chosen by `select_metric`: the last one, or the best by a validation
metric. With 60 validation reviews (about 5 of them neutral) a validation-based choice is noisy. This study
trains the recipes in RECIPES (class weights and the logit-adjusted loss, on the schedule of then, STUDY; every other
setting is RunConfig's default) over several seeds with `specft.pipeline.run` and, at the end of every epoch, also scores the test
split (accuracy, macro-F1, per-class F1). The test scores are recorded for the study only and never feed back
into the run: the evaluation puts the training mode and torch's random state back (iterating a DataLoader draws
one number from torch's generator, which would shift every later dropout mask), so each run is exactly the run
`specft train` makes with the same settings. From the same runs it then scores each selection rule: the epoch
with the best validation macro-F1, accuracy or loss, or simply the last epoch. Writes
bench/selection_results.json; `nbs/09_pipeline.ipynb` reads it and checks that the defaults of then (today the
engine's TrainConfig defaults) are the recipe and rule it found best.

    python bench/selection.py                 # seeds 0 1 2, the recipes in RECIPES (about 35 minutes in bf16)
    python bench/selection.py --quick         # the tiny model, seed 0: a smoke test (results to a temporary file unless --out)
    python bench/selection.py --more --out /tmp/more.json   # the exploratory recipes in MORE
    python bench/selection.py --only 'tau 0.5' 'no class weights' --seeds 3 4 --out bench/selection_more_seeds.json
                                              # two recipes, two more seeds (lesson 09 reads it too)
"""
import argparse, dataclasses, json, statistics, sys, tempfile, time
from pathlib import Path
import torch
import specft.pipeline as pipeline
from specft.core import choose_precision, device_name
from specft.evaluate import compute_metrics
from specft.pipeline import RunConfig, check_config, prepare_data, run, FORMER_RECIPE
from specft.train import Callback, predict_logits

STUDY = {k: FORMER_RECIPE[k] for k in ('lr', 'epochs')}   # the study's schedule: RunConfig's defaults when it ran (since switched, lesson 09)
RECIPES = {name: dict(STUDY, **over) for name, over in {   # the other settings are RunConfig's defaults
    'inverse-frequency weights': dict(class_weights='auto', logit_adjust=0.0),
    'square-root weights': dict(class_weights='sqrt', logit_adjust=0.0),
    'no class weights': dict(class_weights='none', logit_adjust=0.0),
    'logit-adjusted, tau 0.25': dict(class_weights='none', logit_adjust=0.25),
    'logit-adjusted, tau 0.5': dict(class_weights='none', logit_adjust=0.5),
    'logit-adjusted, tau 1': dict(class_weights='none', logit_adjust=1.0),
}.items()}
MORE = {      # explored after the study: lower learning rates, more epochs (not in selection_results.json)
    'sqrt, lr 4e-5, 8 ep': dict(class_weights='sqrt', logit_adjust=0.0, lr=4e-5, epochs=8),
    'sqrt, lr 3e-5, head x30, 8 ep': dict(class_weights='sqrt', logit_adjust=0.0, lr=3e-5, head_lr_scale=30.0, epochs=8),
}
QUICK = {'tiny': dict(model='tiny', epochs=2, max_len=64, logit_adjust=0.0), 'tiny, tau 0.5': dict(model='tiny', epochs=2, max_len=64, logit_adjust=0.5)}
RULES = {'val macro_f1': ('macro_f1', max), 'val accuracy': ('accuracy', max), 'val loss': ('loss', min), 'last epoch': (None, None)}

class TestEveryEpoch(Callback):
    "After each epoch's validation, score the test split with the model being trained (for this study only)"
    def __init__(self, cfg, held):
        self.cfg, self.held, self.rows = cfg, held, []
    def on_epoch_end(self, s):
        if 'test' not in self.held:
            data = prepare_data(check_config(self.cfg))
            self.held['test'] = pipeline._encode(self.held['tok'], data.test, data.labels, self.cfg)
            self.held['y'], self.held['names'] = data.labels.encode(data.test['label']), data.labels.names
        with torch.random.fork_rng(devices=[]):   # iterating a DataLoader draws from torch's generator: put it back
            logits = predict_logits(self.held['model'], self.held['test'], device=self.cfg.device,
                                    precision=choose_precision(self.cfg.precision, self.cfg.device))
        m = compute_metrics(self.held['y'], logits.argmax(-1).tolist(), self.held['names'])
        self.rows.append({'epoch': s.epoch, 'val': {k: float(s.metrics[k]) for k in ('loss', 'accuracy', 'macro_f1')},
                          'test': {**{k: m[k] for k in ('accuracy', 'macro_f1')},
                                   'f1': {l: v['f1'] for l, v in m['per_class'].items()}}})

def pick(rows, rule):
    "The row (epoch) a selection rule keeps; ties go to the earlier epoch, as in the engine"
    key, best = RULES[rule]
    if key is None: return rows[-1]
    target = best(r['val'][key] for r in rows)
    return next(r for r in rows if r['val'][key] == target)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 2 epochs, seed 0; results to a temporary file')
    ap.add_argument('--more', action='store_true', help='run the recipes in MORE instead (give another --out)')
    ap.add_argument('--only', nargs='*', help='run only the recipes whose names contain one of these (give another --out)')
    ap.add_argument('--precision', default='auto', help="'auto' is specft's choice for this machine")
    ap.add_argument('--out', default=None, help='default: bench/selection_results.json; with --quick a temporary file')
    a = ap.parse_args(argv)
    if a.quick: a.seeds = a.seeds[:1]
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/selection_quick.json' if a.quick
                      else str(Path(__file__).with_name('selection_results.json')))
    recipes = QUICK if a.quick else MORE if a.more else RECIPES
    if a.only: recipes = {k: v for k, v in recipes.items() if any(o in k for o in a.only)}
    precision = choose_precision(a.precision, 'auto')
    res = {'command': 'python bench/selection.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'precision': precision, 'defaults': dataclasses.asdict(RunConfig()), 'recipes': {}}
    held, build = {}, pipeline.build_classifier
    def capture(*args, **kw):                     # keep a handle on the model `run` builds
        held['model'], held['tok'] = build(*args, **kw)
        return held['model'], held['tok']
    pipeline.build_classifier = capture
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for i, (name, over) in enumerate(recipes.items()):
                held.clear(); t0 = time.time()
                cfg = RunConfig(**{'precision': precision, **over}, seed=seed, out=f'{tmp}/{i}-{seed}')
                cb = TestEveryEpoch(cfg, held)
                r = run(cfg, callbacks=[cb])
                kept = next(e for e in cb.rows if e['epoch'] == r.metrics['best_epoch'])
                assert {k: kept['test'][k] for k in ('accuracy', 'macro_f1')} == {k: r.metrics[k] for k in ('accuracy', 'macro_f1')}, \
            'the study must see what the run kept'
                entry = res['recipes'].setdefault(name, {'settings': over, 'runs': []})
                entry['runs'].append({'seed': seed, 'seconds': round(time.time() - t0, 1), 'epochs': cb.rows,
                                      'best_epoch': r.metrics['best_epoch'],
                                      'model': {k: r.metrics[k] for k in ('accuracy', 'macro_f1')},
                                      'baseline': {**{k: r.baseline[k] for k in ('accuracy', 'macro_f1')},
                                                   'f1': {l: v['f1'] for l, v in r.baseline['per_class'].items()}}})
                print(f"{name} seed {seed}: " + '; '.join(f"ep {e['epoch']} val f1 {e['val']['macro_f1']:.3f} loss "
                      f"{e['val']['loss']:.3f} test {e['test']['accuracy']:.3f}/{e['test']['macro_f1']:.3f}" for e in cb.rows)
                      + f" | baseline {r.baseline['accuracy']:.3f}/{r.baseline['macro_f1']:.3f}", flush=True)
                Path(a.out).write_text(json.dumps(res, indent=2))
    for name, c in res['recipes'].items():
        c['rules'] = {}
        for rule in RULES:
            picked = [pick(r['epochs'], rule) for r in c['runs']]
            gap = lambda k: statistics.fmean(p['test'][k] - r['baseline'][k] for p, r in zip(picked, c['runs']))
            c['rules'][rule] = {'epochs': [p['epoch'] for p in picked],
                                'accuracy': statistics.fmean(p['test']['accuracy'] for p in picked),
                                'macro_f1': statistics.fmean(p['test']['macro_f1'] for p in picked),
                                'gap_accuracy': gap('accuracy'), 'gap_macro_f1': gap('macro_f1')}
            s = c['rules'][rule]
            print(f"{name:32s} {rule:13s} epochs {s['epochs']} test acc {s['accuracy']:.3f} F1 {s['macro_f1']:.3f} "
                  f"| gap acc {s['gap_accuracy']:+.3f} F1 {s['gap_macro_f1']:+.3f}")
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f'results: {a.out}')

if __name__ == '__main__':
    main()
