#!/usr/bin/env python
"""Cross-validation of the default recipe and its fold ensemble on the real model, for the model-selection lesson.

Runs `specft.custom.run_cv` (K-fold cross-validation on the training split of the bundled drug-review rating task,
the package's default recipe on MiniLM), then `ensemble_report`, which scores each fold model and their ensemble
(the mean of the members' probabilities) on the test split once. `nbs/13_custom.ipynb` reads the results file and
draws the tables and the plot without training anything. Writes bench/cv_ensemble_results.json.

    python bench/cv_ensemble.py                # 3 folds of MiniLM, about 4 minutes per fold on 2 CPU cores
    python bench/cv_ensemble.py --quick        # the tiny model, 2 folds of 1 epoch on 120 rows: a smoke test
                                               # (its results go to a temporary file unless --out is given)
"""
import argparse, dataclasses, json, sys, tempfile, time
from pathlib import Path
import torch
from specft.core import device_name
from specft.pipeline import RunConfig
from specft.custom import run_cv, ensemble_report

QUICK = dict(model='tiny', epochs=1, max_len=64, max_train_rows=120)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 2 folds of 1 epoch; results to a temporary file')
    ap.add_argument('--folds', type=int, default=None, help='K (default 3; 2 with --quick)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None, help='default: bench/cv_ensemble_results.json; with --quick a temporary file')
    a = ap.parse_args(argv)
    folds = a.folds or (2 if a.quick else 3)
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/cv_ensemble_quick.json' if a.quick else
                      str(Path(__file__).with_name('cv_ensemble_results.json')))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(**(QUICK if a.quick else {}), seed=a.seed, out=f'{tmp}/cv')
        cv = run_cv(cfg, folds=folds)
        cv_seconds = time.time() - t0
        report = ensemble_report(cv.cv_dir, dataclasses.replace(cfg, out=None))
    res = {'command': 'python bench/cv_ensemble.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'threads': torch.get_num_threads(), 'config': dataclasses.asdict(cfg) | {'out': None},
           'folds': folds, 'seconds_cv': round(cv_seconds, 1), 'seconds_total': round(time.time() - t0, 1),
           'cv': {'scores': cv.scores, 'baseline': cv.baseline, 'per_fold': cv.per_fold.to_dict('records'),
                  'per_epoch': None if cv.per_epoch is None else cv.per_epoch.to_dict('records')},
           'ensemble_report': report.reset_index().to_dict('records')}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"out of fold: model {cv.scores['macro_f1']:.3f} macro-F1, baseline {cv.baseline['macro_f1']:.3f}")
    print(report.round(3).to_string())
    print(f'wrote {a.out}')

if __name__ == '__main__':
    main()
