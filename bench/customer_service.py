#!/usr/bin/env python
"""The customer-service case on the construction FAQ: routing (question -> service area) and matching (question -> answer).

Routing: `specft.pipeline.run` with `--data construction-faq` (its default recipe), for each seed, the fine-tuned
model next to the TF-IDF + logistic-regression baseline trained on the same rows (accuracy, macro-F1, per-area F1).
Matching: `specft.matching.run_matching` for each seed (each seed is another split of the questions): recall@1,
recall@5, MRR and nDCG@10 of BM25, the untuned encoder and the fine-tuned bi-encoder on the held-out questions, ranked
against all 497 answers, and the hand-to-human threshold (chosen on validation) with its coverage and accuracy on test.
With --lrs, the first seed also tries other learning rates, and the one with the best validation MRR is reported
(the test split is never used to choose). Writes bench/customer_service_results.json; the lesson
nbs/lessons/customer_service.ipynb reads and plots it.

    python bench/customer_service.py                 # MiniLM, 3 seeds: about 9 CPU-minutes (17 minutes on a busy 2-core machine)
    python bench/customer_service.py --lrs 2e-5,5e-5,1e-4   # also choose the learning rate on seed 0's validation MRR
    python bench/customer_service.py --quick         # the tiny model, 1 epoch, 1 seed: a smoke test (to a temporary file)
Data: Swedish Construction FAQ by Zaragoza AB, CC BY 4.0 (zaragoza-construction-faq 1.2.1, doi:10.5281/zenodo.19630803).
"""
import argparse, dataclasses, json, platform, statistics, sys, tempfile, time
from pathlib import Path
import torch
from specft.matching import MatchConfig, run_matching
from specft.pipeline import RunConfig, run

def routing(model:str, seed:int, out:Path, epochs:int|None)->dict:
    "One routing run: test metrics of the model and the baseline"
    cfg = RunConfig(data='construction-faq', model=model, seed=seed, out=str(out), overwrite=True,
                    **({'epochs': epochs} if epochs else {}))
    r = run(cfg)
    pick = lambda m: {'accuracy': m['accuracy'], 'macro_f1': m['macro_f1'], 'f1': {k: v['f1'] for k, v in m['per_class'].items()},
                      'support': {k: v['support'] for k, v in m['per_class'].items()}}
    return {'seed': seed, 'model': pick(r.metrics), 'baseline': pick(r.baseline), 'n_test': r.metrics['n_test'],
            'n_train': r.metrics['n_train'], 'best_epoch': r.metrics['best_epoch']}

def matching(model:str, seed:int, out:Path, **kw)->dict:
    "One matching run: val and test metrics of BM25, untuned, fine-tuned; the threshold; the coverage curves"
    res = run_matching(MatchConfig(model=model, seed=seed, out=str(out), overwrite=True, **kw))
    curves = {s: res.curves[res.curves.split == s][['threshold', 'coverage', 'accuracy']].round(4).to_dict('list') for s in ('val', 'test')}
    return {'seed': seed, **{k: v for k, v in kw.items()}, 'metrics': res.metrics, 'curves': curves,
            'loss_first': res.losses[0], 'loss_last': res.losses[-1], 'steps': len(res.losses)}

def mean_sd(xs):
    "Mean, population sd and count of `xs` (None for an empty list: e.g. no seed's threshold answered any test query)"
    return {'mean': statistics.fmean(xs), 'sd': statistics.pstdev(xs), 'n': len(xs)} if xs else {'mean': None, 'sd': None, 'n': 0}

def summarise(route:list, match:list)->dict:
    "Mean and population sd over the seeds"
    out = {'routing': {w: {k: mean_sd([r[w][k] for r in route]) for k in ('accuracy', 'macro_f1')} for w in ('model', 'baseline')}}
    out['matching'] = {w: {k: mean_sd([m['metrics']['test'][w][k] for m in match]) for k in ('recall_at_1', 'recall_at_5', 'mrr', 'ndcg_at_10')}
                       for w in ('bm25', 'untuned', 'finetuned')}
    out['threshold'] = {k: mean_sd([m['metrics']['threshold'][k] for m in match if m['metrics']['threshold'][k] is not None])
                        for k in ('threshold', 'coverage', 'test_coverage', 'test_accuracy')}
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='tiny model, 1 epoch, 1 seed; results to a temporary file unless --out')
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--lrs', default='', help='comma-separated learning rates to try on the first seed (chosen on validation MRR)')
    ap.add_argument('--out', help='results file (default: bench/customer_service_results.json; --quick: a temporary file)')
    a = ap.parse_args(argv)
    model, seeds = ('tiny', 1) if a.quick else ('minilm', a.seeds)
    kw = {'epochs': 1} if a.quick else {}
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp())/'customer_service_results.json' if a.quick else
                                     Path(__file__).with_name('customer_service_results.json'))
    work, t0 = Path(tempfile.mkdtemp()), time.time()
    lr_trials, lr, first = [], MatchConfig.lr, None
    if a.lrs:   # choose the learning rate on the first seed's validation MRR; that run is the first seed's result
        runs = {float(x): matching(model, 0, work/f'lr-{x}', lr=float(x), **kw) for x in a.lrs.split(',')}
        lr_trials = [{'lr': x, 'val_mrr': m['metrics']['val']['finetuned']['mrr'], 'val_recall_at_1': m['metrics']['val']['finetuned']['recall_at_1']}
                     for x, m in runs.items()]
        lr = max(lr_trials, key=lambda t: t['val_mrr'])['lr']
        first = runs[lr]
    match = [first if s == 0 and first else matching(model, s, work/f'match-{s}', lr=lr, **kw) for s in range(seeds)]
    route = [routing(model, s, work/f'route-{s}', 1 if a.quick else None) for s in range(seeds)]
    res = {'command': 'python bench/customer_service.py' + (' --quick' if a.quick else '') + (f' --seeds {a.seeds}' if a.seeds != 3 else '')
                      + (f' --lrs {a.lrs}' if a.lrs else ''),
           'model': model, 'seeds': seeds, 'match_config': {**dataclasses.asdict(MatchConfig()), 'lr': lr, **kw, 'out': None},
           'lr_trials': lr_trials, 'summary': summarise(route, match), 'routing': route, 'matching': match,
           'machine': {'python': platform.python_version(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
                       'cuda': torch.cuda.is_available()}, 'seconds': round(time.time() - t0, 1)}
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res['summary'], indent=1)); print(f"wrote {out} ({res['seconds']} s)")

if __name__ == '__main__': sys.exit(main())
