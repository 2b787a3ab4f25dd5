#!/usr/bin/env python
"""The fine-tuned model's predictions, for the evaluation lesson: the default recipe and plain cross-entropy.

Trains MiniLM on the bundled drug-review rating task with `specft.pipeline.run` twice: with the package defaults
(the logit-adjusted loss, tau 0.5: the recipe the defaults held before lesson 09 switched full fine-tuning to the
cross-validated one, FORMER_RECIPE) and with plain cross-entropy (`logit_adjust=0`; that recipe uses no class weights). For the validation and the test split it records every row's id (its
`row` in `load_corpus('drug-reviews')`: the training file's for validation, the test file's for test, so a text
can be looked up), true label, the model's logits and class probabilities, so that `nbs/08_evaluate.ipynb` can
draw confusion matrices and reliability diagrams, fit a temperature on validation and read the worst errors
without training anything. Writes bench/finetuned_eval_results.json.

    python bench/finetuned_eval.py                # 2 MiniLM runs, about 5 minutes each on 2 CPU cores
    python bench/finetuned_eval.py --quick        # the tiny model, 1 epoch, 120 training rows: a smoke test
                                                  # (its results go to a temporary file unless --out is given)
"""
import argparse, dataclasses, json, sys, tempfile, time
from pathlib import Path
import torch
from specft.core import choose_precision, device_name
from specft.model import load_classifier
from specft.pipeline import RunConfig, run, prepare_data, _encode, FORMER_RECIPE
from specft.train import predict_logits

# The recipe this benchmark measured: full fine-tuning's defaults before lesson 09's cross-validated switch
# (FORMER_RECIPE: the engine's TrainConfig defaults); lesson 08 reads its results. Each variant changes only these settings.
VARIANTS = {'default': FORMER_RECIPE, 'plain_ce': dict(FORMER_RECIPE, logit_adjust=0.0)}
QUICK = dict(model='tiny', epochs=1, max_len=64, max_train_rows=120)

def split_predictions(model, tok, df, labels, cfg:RunConfig)->dict:
    "Row ids, label ids, logits and probabilities of split `df`, predicted as `run` predicts the test split"
    logits = predict_logits(model, _encode(tok, df, labels, cfg), device=cfg.device,
                            precision=choose_precision(cfg.precision, cfg.device))
    return {'row': [int(r) for r in df['row']], 'y': labels.encode(df['label']),
            'logits': [[round(float(v), 5) for v in r] for r in logits],
            'probs': [[round(float(v), 6) for v in r] for r in logits.softmax(-1)]}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 1 epoch, a few rows; results to a temporary file')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None, help='default: bench/finetuned_eval_results.json; with --quick a temporary file')
    a = ap.parse_args(argv)
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/finetuned_eval_quick.json' if a.quick else
                      str(Path(__file__).with_name('finetuned_eval_results.json')))
    res = {'command': 'python bench/finetuned_eval.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'threads': torch.get_num_threads(), 'defaults': dataclasses.asdict(RunConfig()),
           'variants': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in VARIANTS.items():
            t0 = time.time()
            cfg = RunConfig(**{**over, **(QUICK if a.quick else {})}, seed=a.seed, out=f'{tmp}/{name}')
            r = run(cfg)
            data = prepare_data(cfg)   # the same splits run() used (deterministic in the seed)
            model, tok = load_classifier(r.run_dir)
            v = {'settings': over, 'labels': r.labels, 'seconds': round(time.time() - t0, 1), 'best_epoch': r.metrics['best_epoch'],
                 'test_metrics': {k: r.metrics[k] for k in ('accuracy', 'macro_f1')},
                 'baseline': {k: r.baseline[k] for k in ('accuracy', 'macro_f1')},
                 'train_prior': data.train['label'].value_counts(normalize=True).reindex(r.labels).round(6).tolist(),
                 'val': split_predictions(model, tok, data.val, data.labels, cfg),
                 'test': split_predictions(model, tok, data.test, data.labels, cfg)}
            pred = [max(range(len(p)), key=p.__getitem__) for p in v['test']['probs']]
            v['test_agrees_with_run'] = float(sum(p == q for p, q in zip(pred, r.y_pred)) / len(pred))
            res['variants'][name] = v
            print(f"{name}: test {v['test_metrics']} baseline {v['baseline']} ({v['seconds']} s, "
                  f"{v['test_agrees_with_run']:.3f} of test predictions as run() made them)", flush=True)
            Path(a.out).write_text(json.dumps(res))
    print(f'wrote {a.out}')

if __name__ == '__main__':
    main()
