#!/usr/bin/env python
"""Remedies for a small training set, each compared with the default recipe, chosen without the test split.

The remedies that are settings of `RunConfig` on top of the defaults of then (bench/recipe_cv.py's DEFAULTS, since replaced by the CV's choice): the
condition as a second segment (`--text-pair-col condition`, lesson 20), the bundled example rules as learned logit
offsets (`--rules drug_rules.csv --rules-mode offset`, lesson 20), and parameter-efficient tuning (LoRA with its own
default recipe, lesson 07). The protocol is part 1's (bench/recipe_cv.py, lesson 13):

1. every remedy and the defaults are cross-validated on the training split only (K stratified folds of its 600 rows,
   the same folds for all: fold seed 0, as in bench/recipe_cv.py, so a CV in one of its results files with the same
   settings, made in the precision the runs here train in, is reused: `REUSE`). Each remedy's out-of-fold (OOF)
   macro-F1 and accuracy minus the defaults', with a paired bootstrap 95 % interval over the 600 OOF rows
   (`specft.evaluate.paired_bootstrap`; a reused CV kept no rows, so it has none);
2. the remedies whose OOF macro-F1 beat the defaults' are combined, and the combination is cross-validated too;
3. the choice, by part 1's rule at each recipe's own last epoch (the epoch count is part 1's question, not this one):
   the highest OOF macro-F1 among the recipes whose OOF accuracy is at least the paired TF-IDF baseline's;
4. the choice and the defaults are trained on the whole training split with seeds 0 1 2 (each paired with the same
   split's baseline) and scored on the test split once: the paired per-seed differences, their mean and a 95 %
   t-interval, and issue 14's bar: the choice's mean test macro-F1 at least 0.58, its mean accuracy no lower than
   the baseline's.

Left out, with their own benchmarks: task-adaptive pretraining (bench/pretrain.py: an MLM stage per fold would be
needed to keep the held-out texts out of it) and FGM and PGD (bench/adversarial.py: two to four passes per step),
each lower than the defaults in its paired test on the test split, at a reduced recipe to fit the CPU time; and
augmentation (bench/augment.py), which is not a `RunConfig` setting (it extends the training frame before the
pipeline) and was measured on a quarter of the training rows only (+0.016 macro-F1 there, 3 seeds). Ensembles of the
K fold models: bench/cv_ensemble.py.

    python bench/remedies.py            # MiniLM, 3 folds, seeds 0 1 2, one run at a time on all cores
                                        # (about 80 minutes on 2 idle AMD EPYC cores without bf16: a CV
                                        # 12-13, a test run 4.5; the committed run took 124, sharing them)
    python bench/remedies.py --quick    # the tiny model, 2 folds of 2 epochs on 120 rows, seed 0: a smoke test
                                        # (its results go to a temporary file unless --out is given)

Writes bench/remedies_results.json (after each stage, so a stopped run keeps what it finished); `nbs/13_custom.ipynb`
reads it.
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path
import torch
from specft.core import device_name
from specft.knowledge import DRUG_RULES
from recipe_cv import CANDIDATES, DEFAULTS, QUICK, cv_job, test_job, pool_map, choose
from recipe import summarise, summary_line

HERE = Path(__file__).parent
BAR = 0.58                                           # issue 14: the chosen combination's mean test macro-F1
# each remedy: the settings it changes on top of the defaults
REMEDIES = {'condition as a second segment': dict(text_pair_col='condition'),
            'rules as learned offsets': dict(rules=DRUG_RULES.name, rules_mode='offset')}
# LoRA's default recipe (lesson 07): its own learning rate, 10 epochs, no dropout on the branch or in the backbone;
# every other setting is the defaults'. It is not combined with the others: it is another way to train, not an addition.
LORA = dict(method='lora', lr=3e-3, epochs=10, lora_dropout=0.0, model_dropout=0.0)
# CVs of bench/recipe_cv.py's files that ran in the precision named, on the same folds: reused where this machine
# trains in that precision too (a CV in another precision is not paired with these: lesson 07 saw it move 0.011)
REUSE = {('recipe_cv_lora_cheaper_results.json', "LoRA q,v r8, lr 3e-3, 10 ep, without LoRA dropout, without the backbone's dropout"): 'fp32'}

def earlier_cvs(folds:int)->list:
    "The CVs of `REUSE` with `folds` folds (fold seed 0, as here) whose precision is this machine's, for `pool_map` to reuse"
    from specft.core import choose_precision
    done = []
    for (f, name), precision in REUSE.items():
        p = HERE/f
        if not p.is_file() or precision != choose_precision('auto', 'auto'): continue   # where the runs here train
        old = json.loads(p.read_text())
        steps = old.get('cheaper_cv') or []
        done += [{'folds': old['folds'], **c, 'reused_from': f'bench/{f}', 'precision': precision}
                 for c in [*old.get('cv', []), *steps] if c['name'] == name and old['folds'] == folds]
    return done

def last_epoch(c:dict)->dict:
    "A CV result reduced to its last epoch, for part 1's rule (`choose`) at the recipe's own schedule"
    return {**c, 'per_epoch': [e for e in c['per_epoch'] if e['epoch'] == max(x['epoch'] for x in c['per_epoch'])]}

def versus(c:dict, base:dict, n_labels:int)->dict:
    "OOF macro-F1 and accuracy of `c` minus `base`'s, with paired bootstrap 95 % intervals where both kept their rows"
    out = {f'{k}_difference': c['oof'][k] - base['oof'][k] for k in ('macro_f1', 'accuracy')}
    if 'oof_rows' in c and 'oof_rows' in base and c['oof_rows']['row'] == base['oof_rows']['row']:
        from specft.evaluate import paired_bootstrap
        y = c['oof_rows']['label']
        for k in ('macro_f1', 'accuracy'):
            b = paired_bootstrap(y, c['oof_rows']['predicted'], base['oof_rows']['predicted'], n_labels, metric=k)
            out[f'{k}_ci95'], out[f'{k}_p_better'] = [b['lo'], b['hi']], b['p_a_better']
    return out

def t_interval(d:list)->dict:
    "Mean of the paired differences `d` and its 95 % t-interval"
    from scipy import stats   # scikit-learn's own dependency
    n, m = len(d), statistics.fmean(d)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(d) / n ** 0.5 if n > 1 else float('nan')
    return {'per_seed': d, 'mean': m, 'ci95': [m - half, m + half]}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 2 folds of 2 epochs on 120 rows, seed 0; results to a temporary file')
    ap.add_argument('--folds', type=int, default=None, help='K (default 3; 2 with --quick)')
    ap.add_argument('--seeds', type=int, nargs='+', default=None, help='test seeds (default 0 1 2; 0 with --quick)')
    ap.add_argument('--no-reuse', action='store_true', help="cross-validate everything here, even recipes bench/recipe_cv.py's files hold")
    ap.add_argument('--out', default=None, help='default: bench/remedies_results.json; with --quick a temporary file')
    a = ap.parse_args(argv)
    folds, seeds = a.folds or (2 if a.quick else 3), a.seeds or ([0] if a.quick else [0, 1, 2])
    out = Path(a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/remedies_quick.json' if a.quick else HERE/'remedies_results.json'))
    base = {**(QUICK['tiny A'] if a.quick else CANDIDATES[DEFAULTS]), 'select_metric': 'last'}
    rules = {'rules': str(DRUG_RULES)}   # the file's path on this machine; the results name it by its file name
    cands = {'defaults': base, **{n: {**base, **s} for n, s in REMEDIES.items()},
             'LoRA (its default recipe)': {**base, **LORA, **({'epochs': base['epochs']} if a.quick else {})}}
    threads, t0 = max(1, os.cpu_count() or 1), time.time()
    done = [] if a.quick or a.no_reuse else earlier_cvs(folds)
    res = {'command': 'python bench/remedies.py ' + ' '.join(argv if argv is not None else sys.argv[1:]), 'device': device_name(),
           'torch': torch.__version__, 'folds': folds, 'threads_per_run': threads, 'defaults': base, 'remedies': REMEDIES, 'lora': LORA}
    def save(**more):
        res.update(more); out.write_text(json.dumps({**res, 'minutes': round((time.time() - t0) / 60, 1)}, indent=1) + '\n')
    def jobs(names): return [dict(name=n, settings={**cands[n], **(rules if 'rules' in cands[n] else {})}, folds=folds,
                                  threads=threads, oof_rows=True) for n in names]
    def named(cvs): return [{**c, 'settings': cands[c['name']]} for c in cvs]   # the rule file by its name, as in REMEDIES
    print(f'cross-validating the defaults and {len(cands) - 1} remedies, {folds} folds each, on the training split', flush=True)
    cvs = sorted(named(pool_map(cv_job, jobs(cands), 1, done)), key=lambda c: list(cands).index(c['name'])); save(cv=cvs)
    by = {c['name']: c for c in cvs}
    n_labels = len(by['defaults']['oof_rows']['labels'])
    helped = [n for n in REMEDIES if by[n]['oof']['macro_f1'] > by['defaults']['oof']['macro_f1']]
    if len(helped) >= 2:   # the remedies that helped, together
        name = ' + '.join(helped)
        cands[name] = {**base, **{k: v for n in helped for k, v in REMEDIES[n].items()}}
        cvs += named(pool_map(cv_job, jobs([name]), 1, done)); by = {c['name']: c for c in cvs}
    for c in cvs:
        if c['name'] != 'defaults': c['vs_defaults'] = versus(c, by['defaults'], n_labels)
    pick = choose([last_epoch(c) for c in cvs])
    print(f"chosen by {folds}-fold CV: {pick['name']} (OOF macro-F1 {pick['macro_f1']:.3f}, accuracy {pick['accuracy']:.3f})", flush=True)
    save(cv=cvs, combined=helped if len(helped) >= 2 else None, choice=pick)
    arms = {'chosen by CV': pick['name'], **({'defaults': 'defaults'} if pick['name'] != 'defaults' else {})}
    tests = pool_map(test_job, [dict(name=arm, settings={**cands[n], **(rules if 'rules' in cands[n] else {})}, seed=s, threads=threads)
                                for s in seeds for arm, n in arms.items()], 1)
    test = {arm: {'recipe': n, 'runs': sorted([t for t in tests if t['name'] == arm], key=lambda t: t['seed'])} for arm, n in arms.items()}
    for v in test.values(): v['summary'] = summarise(v['runs'])
    chosen = test['chosen by CV']
    if 'defaults' in test:
        pairs = list(zip(chosen['runs'], test['defaults']['runs']))
        test['difference'] = {k: t_interval([c['model'][k] - d['model'][k] for c, d in pairs]) for k in ('macro_f1', 'accuracy')}
    s = chosen['summary']
    bar = {'macro_f1': s['model_macro_f1']['mean'], 'accuracy': s['model_accuracy']['mean'], 'baseline_accuracy': s['baseline_accuracy']['mean'],
           'needed_macro_f1': BAR}
    bar['met'] = bar['macro_f1'] >= BAR and bar['accuracy'] >= bar['baseline_accuracy']
    save(test=test, bar=bar)
    for c in cvs:
        v = c.get('vs_defaults', {})
        ci = ' [{:+.3f}, {:+.3f}]'.format(*v['macro_f1_ci95']) if 'macro_f1_ci95' in v else ''
        print(f"{c['name']:48s} OOF F1 {c['oof']['macro_f1']:.3f} acc {c['oof']['accuracy']:.3f}"
              + (f" | vs defaults F1 {v['macro_f1_difference']:+.3f}{ci}" if v else '') + (' (reused)' if 'reused_from' in c else ''))
    for arm, v in test.items():
        if 'summary' in v:
            print(f"test, {arm} ({v['recipe']}): {summary_line(v['summary'])}")
    print(f"bar (mean test macro-F1 >= {BAR}, accuracy >= the baseline's): {'met' if bar['met'] else 'not met'}")
    print(f'wrote {out}')

if __name__ == '__main__':
    main()
