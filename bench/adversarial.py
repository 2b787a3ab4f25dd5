#!/usr/bin/env python
"""What adversarial training on the word embeddings buys on perturbed text, and what it costs on clean text.

Fine-tunes the default recipe (`specft train`'s RunConfig defaults, MiniLM, the bundled drug-review rating task)
with and without `--adversarial fgm` (and, with --pgd, `--adversarial pgd`), on the same seeds: each seed fixes the
split, the head's initial weights and the batch order, so the runs of one seed differ only in the attack (and in the
dropout masks, which the attack's extra passes draw from the same generator). Each run is scored once on the test
split, clean and with typing slips (`specft.custom.perturb_texts`, 'typos', at each --rates, seeded): accuracy and
macro-F1, with the per-seed paired differences and their mean. The training seconds per epoch are the cost.

epsilon is chosen on VALIDATION only: FGM at each --eps-grid value on the first seed, the value with the best
validation macro-F1 of the last epoch (ties: the one closest to 1.0); the grid run with the chosen value is that
seed's FGM run (same settings, not rerun). The test split never takes part in the choice. epsilon is a length in
embedding space: a MiniLM review's word embeddings have an L2 norm of about 12 (lesson 21), so 0.1 and 0.3 move it
by about 1 % and 2.5 %. (A first, untuned try at 1.0, 8 %, with the full 5-epoch recipe ended on the majority class.)

The committed results: `--epochs 3 --eps-grid 0.1 0.3`. On the 2 CPU cores shared with other jobs an FGM epoch of
the default recipe took about 185 s and a plain one about 90 s, so 3 seeds x 2 arms + the grid at 5 epochs did not
fit the ~35 minutes given; the recipe is the default but for 3 epochs instead of 5, in both arms alike.

    python bench/adversarial.py --epochs 3 --eps-grid 0.1 0.3   # what made the committed file
    python bench/adversarial.py              # the default recipe (5 epochs), eps chosen from {0.1, 0.3, 1}
    python bench/adversarial.py --pgd        # and PGD (K=3) with the chosen epsilon: its steps cost K+1 passes
    python bench/adversarial.py --add-pgd    # PGD runs added to an existing results file (its seeds, its chosen epsilon)
    python bench/adversarial.py --quick      # the tiny model on 120 rows, 1 epoch, 1 seed: a smoke test (seconds)
                                             # (its results go to a temporary file unless --out is given)
Writes bench/adversarial_results.json; nbs/21_adversarial.ipynb reads it.
Data: the bundled drug reviews, a subset of the UCI Drug Review dataset (Gräßer, Kallumadi, Malberg and Zaunseder,
Digital Health 2018; CC BY 4.0; full citation in specft.corpus.DRUG_REVIEWS_CITATION).
"""
import argparse, dataclasses, json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from specft.core import device_name
from specft.pipeline import RunConfig, Predictor, prepare_data, run
from specft.custom import robustness_report
from specft.train import Callback

QUICK = dict(model='tiny', epochs=1, max_len=64, max_train_rows=120)

class Clock(Callback):
    "Seconds from the start of training to its end (validation of each epoch included)"
    def on_train_begin(self, state): self.t0 = time.time()
    def on_train_end(self, state): self.seconds = time.time() - self.t0

def one_run(cfg:RunConfig, rates, tmp:str)->dict:
    "Train `cfg`, then score it on the clean test split and on typo-perturbed copies at each rate"
    clock = Clock()
    res = run(dataclasses.replace(cfg, out=f'{tmp}/{cfg.adversarial}-{cfg.adv_eps}-{cfg.seed}'), callbacks=[clock])
    data = prepare_data(cfg)   # the same split and preprocessing (seeded): its test rows are the run's
    pred = Predictor.load(res.run_dir, device=cfg.device)
    scores = {'clean': {k: res.metrics[k] for k in ('accuracy', 'macro_f1')}}
    for rate in rates:
        rep = robustness_report(pred, data.test.text, data.test.label, kinds=('typos',), rate=rate, seed=cfg.seed)
        scores[f'typos@{rate}'] = {k: float(rep.loc['typos', k]) for k in ('accuracy', 'macro_f1', 'predictions_changed')}
    epochs = cfg.train_config().epochs   # None in cfg: the method's default
    return {'adversarial': cfg.adversarial, 'adv_eps': cfg.adv_eps, 'seed': cfg.seed, 'epochs': epochs,
            'val_macro_f1': res.state.metrics.get('macro_f1'), 'train_seconds': round(clock.seconds, 1),
            'seconds_per_epoch': round(clock.seconds / epochs, 1), 'scores': scores,
            'baseline_tfidf': {k: res.baseline[k] for k in ('accuracy', 'macro_f1')}}

def choose_eps(grid_runs:list[dict])->float:
    "The epsilon of the best validation macro-F1 (ties: the one closest to 1.0)"
    return max(grid_runs, key=lambda r: (round(r['val_macro_f1'], 6), -abs(r['adv_eps'] - 1.0)))['adv_eps']

def paired(runs:list[dict], method:str, eps:float)->dict:
    "Per seed and mean difference (method - none) of each score"
    base = {r['seed']: r for r in runs if r['adversarial'] == 'none'}
    mine = {r['seed']: r for r in runs if r['adversarial'] == method and r['adv_eps'] == eps}
    seeds = sorted(set(base) & set(mine))
    out = {}
    for split in base[seeds[0]]['scores']:
        for k in ('accuracy', 'macro_f1'):
            d = [mine[s]['scores'][split][k] - base[s]['scores'][split][k] for s in seeds]
            out[f'{split} {k}'] = {'per_seed': dict(zip(seeds, d)), 'mean': statistics.fmean(d)}
    cost = [mine[s]['seconds_per_epoch'] / base[s]['seconds_per_epoch'] for s in seeds]
    out['seconds_per_epoch ratio'] = {'per_seed': dict(zip(seeds, cost)), 'mean': statistics.fmean(cost)}
    return out

def log(r): print(f"{r['adversarial']:4} eps={r['adv_eps']} seed={r['seed']}: val F1 {r['val_macro_f1']:.3f}, "
                  + ', '.join(f"{s} F1 {v['macro_f1']:.3f}" for s, v in r['scores'].items())
                  + f", {r['seconds_per_epoch']} s/epoch", flush=True)

def add_pgd(a, base:RunConfig, argv):
    "PGD runs with the chosen epsilon of an existing results file, on its seeds and rates, added to it"
    res = json.loads(Path(a.out).read_text())
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in res['seeds']:
            r = one_run(dataclasses.replace(base, adversarial='pgd', adv_eps=res['chosen_eps'], seed=seed), res['rates'], tmp)
            res['runs'].append(r); log(r)
    res['paired']['pgd'] = paired(res['runs'], 'pgd', res['chosen_eps'])
    res['command'] += ' && python bench/adversarial.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    res['seconds_total'] = round(res['seconds_total'] + time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(res, indent=1))
    for k, v in res['paired']['pgd'].items(): print(f"  pgd - none, {k}: {v['mean']:+.3f}")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 1 epoch, 1 seed; results to a temporary file')
    ap.add_argument('--seeds', type=int, nargs='+', default=None, help='default 0 1 2 (0 with --quick)')
    ap.add_argument('--eps-grid', type=float, nargs='+', default=[0.1, 0.3, 1.0], help='FGM epsilons tried on the first seed')
    ap.add_argument('--rates', type=float, nargs='+', default=[0.1, 0.2], help='typo rates of the perturbed test copies')
    ap.add_argument('--pgd', action='store_true', help='also PGD (K=adv_steps, alpha=adv_alpha defaults) with the chosen epsilon')
    ap.add_argument('--epochs', type=int, default=None, help="override the recipe's epochs (both arms alike)")
    ap.add_argument('--add-pgd', action='store_true', help='add PGD runs to the results file --out (its seeds, rates and chosen eps)')
    ap.add_argument('--out', default=None, help='default: bench/adversarial_results.json; with --quick a temporary file')
    a = ap.parse_args(argv)
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/adversarial_quick.json' if a.quick else
                      str(Path(__file__).with_name('adversarial_results.json')))
    base = RunConfig(**(QUICK if a.quick else {}), device='cpu' if a.quick else 'auto')
    if a.epochs: base = dataclasses.replace(base, epochs=a.epochs)
    t0, runs = time.time(), []
    if a.add_pgd: return add_pgd(a, base, argv)
    with tempfile.TemporaryDirectory() as tmp:
        grid = []
        for eps in a.eps_grid:     # 1. epsilon on validation, first seed only
            grid.append(one_run(dataclasses.replace(base, adversarial='fgm', adv_eps=eps, seed=seeds[0]), a.rates, tmp)); log(grid[-1])
        eps = choose_eps(grid)
        runs += [r for r in grid if r['adv_eps'] == eps]
        for seed in seeds:         # 2. the paired runs
            todo = [('none', base.adv_eps)] + [('fgm', eps)] * (seed != seeds[0]) + [('pgd', eps)] * a.pgd
            for method, e in todo:
                runs.append(one_run(dataclasses.replace(base, adversarial=method, adv_eps=e, seed=seed), a.rates, tmp)); log(runs[-1])
    res = {'command': 'python bench/adversarial.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'threads': torch.get_num_threads(),
           'config': dataclasses.asdict(base) | {'out': None}, 'seeds': seeds, 'rates': a.rates,
           'eps_grid': a.eps_grid, 'eps_grid_runs': grid, 'chosen_eps': eps, 'runs': runs,
           'paired': {m: paired(runs, m, eps) for m in ('fgm', 'pgd') if any(r['adversarial'] == m for r in runs)},
           'seconds_total': round(time.time() - t0, 1)}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"chosen eps {eps}; mean paired differences (fgm - none):")
    for k, v in res['paired']['fgm'].items(): print(f"  {k}: {v['mean']:+.3f}")
    print(f'wrote {a.out}')

if __name__ == '__main__':
    main()
