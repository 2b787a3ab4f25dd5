#!/usr/bin/env python
"""How much does a random split overstate ICD-10-CM chapter classification, against a split by 3-character category?

For each seed, the capped `--data icd10-cm` corpus (chapter task, `specft.domains.load_icd10`) is split twice by
`specft.split.split_corpus`: at random (the group column dropped) and by group (whole categories). Both are cut to
the same number of training and test rows, written as csv files, and run through `specft.pipeline.run` like any user
file (`--data pool.csv --test-data test.csv`): the same cleaning, the same leak filter (test rows with a training text
of Jaccard similarity >= 0.8 are removed, and counted), the same model and recipe, the TF-IDF + logistic regression
baseline on the same rows. The validation split inside the pool is random in both arms; it picks nothing (the last
epoch is kept). Before the runs, it counts the test rows with a near-duplicate in train at several thresholds.
Writes bench/medical_coding_results.json; `nbs/lessons/medical_coding.ipynb` reads it.

    python bench/medical_coding.py            # MiniLM, 3 epochs, seeds 0 1 2: 6 fine-tunes (about 10 minutes on 2 CPU cores)
    python bench/medical_coding.py --quick    # the tiny model, 1 epoch, seed 0, 200 training rows: a smoke test
                                              # (its results go to a temporary file unless --out is given)
Data: ICD-10-CM April 2026 (NCHS/CDC) as shipped in simple-icd-10-cm 1.5.0 (MIT); citation in specft.domains.ICD10_CITATION.
"""
import argparse, json, platform, statistics, sys, tempfile, time
from pathlib import Path
import pandas as pd, torch
from specft.corpus import Corpus, load_corpus
from specft.pipeline import RunConfig, run
from specft.split import find_leaks, split_corpus

THRESHOLDS = (0.5, 0.6, 0.7, 0.8)

def splits(corpus:Corpus, seed:int)->dict:
    "The random and the group split of `corpus`, each as (pool, test) frames cut to the same sizes"
    plain = Corpus(corpus.name, corpus.train.drop(columns='group'), None, corpus.source)
    out = {}
    for name, c in (('random', plain), ('group', corpus)):
        s = split_corpus(c, seed=seed, remove_leaks=False)
        out[name] = (pd.concat([s.train, s.val]), s.test)
    n_pool, n_test = (min(len(p[i]) for p in out.values()) for i in (0, 1))
    return {k: (p.sample(n_pool, random_state=seed).sort_values('row'), t.sample(n_test, random_state=seed).sort_values('row'))
            for k, (p, t) in out.items()}

def one_arm(name:str, pool:pd.DataFrame, test:pd.DataFrame, seed:int, args, tmp:Path)->dict:
    "Near-duplicate counts, then a pipeline run on (pool, test): test metrics of the model and of the paired baseline"
    near = {str(t): len(find_leaks(pool, test, t)) for t in THRESHOLDS}
    d = tmp/f'{name}-{seed}'; d.mkdir()
    pool[['text', 'label']].to_csv(d/'pool.csv', index=False); test[['text', 'label']].to_csv(d/'test.csv', index=False)
    cfg = RunConfig(data=str(d/'pool.csv'), test_data=str(d/'test.csv'), model=args.model, epochs=args.epochs,
                    max_len=args.max_len, seed=seed, out=str(d/'run'), max_train_rows=args.max_train_rows)
    t0 = time.time()
    res = run(cfg)
    m, b = res.metrics, res.baseline
    return {'split': name, 'seed': seed, 'n_pool': len(pool), 'n_test_before_leak_filter': len(test),
            'n_train': m['n_train'], 'n_test': m['n_test'], 'n_leaked_test': m['n_leaked_test'],
            'test_rows_with_near_duplicate_in_train': near, 'accuracy': m['accuracy'], 'macro_f1': m['macro_f1'],
            'baseline': {k: b[k] for k in ('accuracy', 'macro_f1')}, 'seconds': round(time.time() - t0, 1)}

def summarise(runs:list[dict])->dict:
    "Mean and population sd per split of the model's and the baseline's metrics, and the paired random - group gap"
    out = {}
    for split in ('random', 'group'):
        rs = [r for r in runs if r['split'] == split]
        out[split] = {who: {k: {'mean': statistics.fmean(get(r)[k] for r in rs), 'sd': statistics.pstdev(get(r)[k] for r in rs)}
                            for k in ('accuracy', 'macro_f1')}
                      for who, get in (('model', lambda r: r), ('baseline', lambda r: r['baseline']))} | {'n': len(rs)}
    pairs = [(r, g) for r in runs if r['split'] == 'random' for g in runs if g['split'] == 'group' and g['seed'] == r['seed']]
    out['gap_random_minus_group'] = {who: {k: statistics.fmean(get(r)[k] - get(g)[k] for r, g in pairs) for k in ('accuracy', 'macro_f1')}
                                     for who, get in (('model', lambda r: r), ('baseline', lambda r: r['baseline']))}
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 1 epoch, seed 0, 200 training rows; a temporary output file')
    ap.add_argument('--model', default='minilm'); ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--max-len', type=int, default=48); ap.add_argument('--max-train-rows', type=int, default=None)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--out', default=None, help='results file (default bench/medical_coding_results.json; --quick: a temporary file)')
    args = ap.parse_args(argv)
    if args.quick: args.model, args.epochs, args.seeds, args.max_train_rows = 'tiny', 1, [0], 200
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp())/'medical_coding_results.json' if args.quick
                                           else Path(__file__).with_name('medical_coding_results.json'))
    corpus, runs = load_corpus('icd10-cm'), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, (pool, test) in splits(corpus, seed).items():
                runs.append(one_arm(name, pool, test, seed, args, Path(tmp)))
                print(json.dumps(runs[-1]), file=sys.stderr)
    result = {'command': ' '.join(['python bench/medical_coding.py', *(argv if argv is not None else sys.argv[1:])]),
              'device': 'cuda' if torch.cuda.is_available() else 'cpu', 'torch': torch.__version__, 'python': platform.python_version(),
              'data': {'name': corpus.name, 'task': corpus.task, 'n_codes': len(corpus.train), 'cap': corpus.report['cap']},
              'config': {'model': args.model, 'epochs': args.epochs, 'max_len': args.max_len, 'max_train_rows': args.max_train_rows,
                         'seeds': args.seeds, 'thresholds': list(THRESHOLDS)},
              'runs': runs, 'summary': summarise(runs)}
    out.write_text(json.dumps(result, indent=2))
    print(out)
    return result

if __name__ == '__main__': main()
