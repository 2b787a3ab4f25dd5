#!/usr/bin/env python
"""Does text augmentation help fine-tuning on the bundled drug reviews?

For each share of the training rows (all of them, and a quarter, where augmentation should matter most), each
seed, and augmentation off/on, this fine-tunes the model on the run's own prepared data (`specft.pipeline.
prepare_data`: the same loading, cleaning, masking and splits as `specft train`), with the training split, and only
it, extended by `specft.augment.augment_frame` (synonyms from `DRUG_REVIEW_THESAURUS`, random swap and deletion).
It records the test accuracy and macro-F1 of the best-validation epoch, next to the TF-IDF baseline trained on the
same (augmented) rows. Writes bench/augment_results.json; `nbs/03e_augment.ipynb` plots it.

    python bench/augment.py                  # MiniLM, 5 seeds x 2 shares x off/on = 20 fine-tunes (a GPU makes this minutes)
    python bench/augment.py --quick          # the tiny model, 1 epoch, 1 seed, a quarter of the rows: a smoke test on CPU
                                             # (its results go to a temporary file unless --out is given)
The recipe (epochs, lr, max_len, batch size ...) is RunConfig's default, never copied here.
Data: the bundled drug reviews, a subset of the UCI Drug Review dataset (Gräßer, Kallumadi, Malberg and Zaunseder,
Digital Health 2018; CC BY 4.0; full citation in specft.corpus.DRUG_REVIEWS_CITATION).
"""
import argparse, dataclasses, json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from specft.core import device_name
from sklearn.model_selection import train_test_split
from specft.batch import encode_texts, make_loader
from specft.augment import DRUG_REVIEW_THESAURUS, augment_frame
from specft.evaluate import baseline_metrics, compute_metrics
from specft.model import build_classifier
from specft.pipeline import RunConfig, prepare_data
from specft.train import fit, predict_logits

def loader(tok, df, labels, cfg, shuffle=False):
    "A length-bucketed loader over the rows of `df`"
    return make_loader(encode_texts(tok, df.text.tolist(), cfg.max_len), labels.encode(df.label), cfg.batch_size,
                       tok.pad_token_id, shuffle=shuffle, seed=cfg.seed)

def one_run(cfg:RunConfig, frac:float, augment:bool, n_aug:int)->dict:
    "Fine-tune on `frac` of the prepared training rows, augmented or not; test metrics and the paired baseline"
    data = prepare_data(cfg)
    train = data.train
    if frac < 1: train, _ = train_test_split(train, train_size=frac, stratify=train.label, random_state=cfg.seed)
    n_orig = len(train)
    if augment: train, _ = augment_frame(train, n_aug=n_aug, thesaurus=DRUG_REVIEW_THESAURUS, seed=cfg.seed)
    model, tok = build_classifier(cfg.model, num_labels=len(data.labels), pooling=cfg.pooling, seed=cfg.seed)
    tcfg = cfg.train_config()   # the run's training settings, as `specft train` passes them
    state = fit(model, loader(tok, train, data.labels, cfg, shuffle=True), loader(tok, data.val, data.labels, cfg), tcfg,
                labels=data.labels.names)
    y = data.labels.encode(data.test.label)
    pred = predict_logits(model, loader(tok, data.test, data.labels, cfg), cfg.device).argmax(-1).tolist()
    m = compute_metrics(y, pred, data.labels.names)
    b = baseline_metrics(train.text.tolist(), data.labels.encode(train.label), data.test.text.tolist(), y, data.labels.names)
    return {'train_frac': frac, 'augment': augment, 'seed': cfg.seed, 'n_train_rows': n_orig, 'n_train_texts': len(train),
            'n_test': len(y), 'best_epoch': state.kept_epoch, 'accuracy': m['accuracy'], 'macro_f1': m['macro_f1'],
            'baseline': {k: b[k] for k in ('accuracy', 'macro_f1')}}

def summarise(runs:list[dict])->dict:
    "Mean and population sd of the metrics per (train_frac, augment), and the paired gain of augmentation"
    out = {}
    for frac in sorted({r['train_frac'] for r in runs}):
        for aug in (False, True):
            rs = [r for r in runs if r['train_frac'] == frac and r['augment'] == aug]
            if rs: out[f'frac={frac} augment={aug}'] = {k: {'mean': statistics.fmean(r[k] for r in rs), 'sd': statistics.pstdev(r[k] for r in rs)}
                                                        for k in ('accuracy', 'macro_f1')} | {'n': len(rs)}
        pairs = [(a, b) for a in runs for b in runs if a['train_frac'] == b['train_frac'] == frac and a['seed'] == b['seed']
                 and b['augment'] and not a['augment']]
        if pairs: out[f'frac={frac} gain_macro_f1'] = [round(b['macro_f1'] - a['macro_f1'], 4) for a, b in pairs]
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    ap.add_argument('--fracs', type=float, nargs='+', default=[1.0, 0.25])
    ap.add_argument('--n-aug', type=int, default=1, help='augmented copies per training row')
    ap.add_argument('--model', default=None, help='default: RunConfig().model')
    ap.add_argument('--quick', action='store_true', help='tiny model, 1 epoch, max_len 64, seed 0, a quarter of the rows')
    ap.add_argument('--out', default=None, help='default: bench/augment_results.json; with --quick a temporary file')
    a = ap.parse_args(argv)
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/augment_quick.json' if a.quick
                      else str(Path(__file__).with_name('augment_results.json')))
    over = dict(model='tiny', epochs=1, max_len=64) if a.quick else {}
    if a.model: over['model'] = a.model
    seeds, fracs = ([0], [0.25]) if a.quick else (a.seeds, a.fracs)
    base = RunConfig(**over)
    res = {'command': 'python bench/augment.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'config': {**dataclasses.asdict(base), 'seeds': len(seeds), 'fracs': fracs, 'n_aug': a.n_aug,
                                                  'thesaurus_words': len(DRUG_REVIEW_THESAURUS)}, 'runs': []}
    for frac in fracs:
        for seed in seeds:
            for aug in (False, True):
                t0 = time.time()
                r = one_run(dataclasses.replace(base, seed=seed), frac, aug, a.n_aug)
                res['runs'].append({**r, 'seconds': round(time.time() - t0, 1)})
                print(json.dumps(res['runs'][-1]), file=sys.stderr)
                res['summary'] = summarise(res['runs'])
                Path(a.out).write_text(json.dumps(res, indent=1))   # written after every run: a cut-short bench keeps its results
    print(f'results: {a.out}', file=sys.stderr)
    return res

if __name__ == '__main__':
    main()
