#!/usr/bin/env python
"""Recommendation from item text on MovieLens 100K: popularity and item-kNN against a text two-tower.

One `specft.recommend.run_recommend` run on every user: the leave-last-out split (the last liked rating of each
user is test, the liked one before it validation; liked = 4 or 5 stars), 10% of the items made cold (every training
rating removed), popularity and item-kNN, then MiniLM as a two-tower, untuned and fine-tuned with in-batch
negatives (the epoch kept is chosen on validation HR@10; epoch 0 is the untuned model), the test targets scored
once. Records HR@10 and NDCG@10 overall and per item-popularity bucket (cold, 0-5, 6-20, 21-100, >100 training
ratings). Writes bench/recommendation_results.json; `nbs/lessons/recommendation.ipynb` plots it.

    python bench/recommendation.py            # MiniLM, all 943 users, RecommendConfig's recipe (about 20 min on one shared CPU thread)
    python bench/recommendation.py --quick    # the tiny model, 40 users, 1 epoch: a smoke test (results to a temporary file)

Flags after these are RecommendConfig's fields (as in `specft recommend`), e.g. `--epochs 3 --lr 5e-5`.
Data: MovieLens 100K (F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context.
ACM TiiS 5(4): 19), read from the files recbole==1.2.1 ships; never copied into this repository.
"""
import argparse, dataclasses, json, sys, tempfile
from pathlib import Path
import torch
from specft.core import device_name
from specft.cli import add_config_flags, config_from_args
from specft.recommend import RecommendConfig, run_recommend

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny model, 40 users, 1 epoch, max_len 32')
    ap.add_argument('--results', default=None, help='default: bench/recommendation_results.json; with --quick a temporary file')
    add_config_flags(ap, RecommendConfig)
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix='specft-bench-')
    cfg = config_from_args(a, RecommendConfig)
    if a.quick: cfg = dataclasses.replace(cfg, model='tiny', max_users=40, epochs=1, max_len=32)
    cfg = dataclasses.replace(cfg, out=cfg.out or f'{tmp}/run')   # the encoder is not committed
    results = a.results or (f'{tmp}/recommendation_quick.json' if a.quick else str(Path(__file__).with_name('recommendation_results.json')))
    res = run_recommend(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    keep = {k: v for k, v in res.items() if k not in ('ranks', 'model', 'out')}
    keep |= {'command': 'python bench/recommendation.py ' + ' '.join(argv),
             'device': device_name(),
             'torch': torch.__version__, 'threads': torch.get_num_threads(),
             'test_ranks': res['ranks'].drop(columns=['rating', 'timestamp']).to_dict('list')}
    Path(results).write_text(json.dumps(keep, indent=1, default=int))
    print(f'results: {results}', file=sys.stderr)
    return keep

if __name__ == '__main__':
    main()
