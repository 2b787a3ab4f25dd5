#!/usr/bin/env python
"""Domain knowledge on the bundled drug-review rating task: the default recipe against the same recipe with the condition
as a second segment (`--text-pair-col condition`), with the example rules as learned offsets (`--rules ... --rules-mode
offset`), and with the rules overriding the default model post hoc (threshold chosen on validation), each on the same
seeds and therefore the same splits, with the paired TF-IDF baseline (which reads the condition too in the pair arm).

    python bench/knowledge.py --epochs 3 --max-len 128   # MiniLM, seeds 0 1 2: what fitted ~35 minutes on the loaded 2-core VM
    python bench/knowledge.py --quick      # the tiny model, 1 epoch on 60 rows, seed 0: a smoke test (results to a temp file)

The committed results took two commands: the first run scored its override arm through `Predictor` (fp32) while the
default arm's scores came from the run (bf16 autocast on this CPU), a one-row difference that was not the rules' doing;
the override arm was then redone with the run's own precision and merged in, after checking that its retrained default
models reproduced the first run's to the last digit:

    python bench/knowledge.py --epochs 3 --max-len 128 --arms default override --out /tmp/override.json
    python bench/knowledge.py --merge /tmp/override.json

Writes bench/knowledge_results.json after every run (so a stopped bench keeps what it finished); `nbs/20_knowledge.ipynb`
reads it. The override arm trains nothing: it reuses the default arm's model of the same seed.
"""
import argparse, dataclasses, json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from specft.pipeline import RunConfig, run, prepare_data, Predictor, _encode
from specft.core import choose_precision, device_name
from specft.model import load_tokenizer
from specft.train import predict_logits
from specft.evaluate import compute_metrics
from specft.knowledge import DRUG_RULES, read_rules, override_probs, choose_min_precision

QUICK = dict(model='tiny', epochs=1, max_len=64, max_train_rows=60)
ARMS = {'default': {}, 'pair': {'text_pair_col': 'condition'}, 'offset': {'rules': str(DRUG_RULES), 'rules_mode': 'offset'}}

def override_arm(cfg:RunConfig, run_dir:Path, default_metrics:dict)->dict:
    """The default model of `run_dir` with the rules overriding it, the threshold chosen on validation (as `run` does in override
    mode); its probabilities computed exactly as the run computed its test scores (same loaders, same precision)"""
    data = prepare_data(cfg)
    model = Predictor.load(run_dir).model
    probs = lambda df: predict_logits(model, _encode(load_tokenizer(run_dir), df, data.labels, cfg), device=cfg.device,
                                      precision=choose_precision(cfg.precision, cfg.device)).softmax(-1).numpy()
    rules = read_rules(DRUG_RULES, data.labels.names)
    ids = [data.labels.names.index(l) for l in rules.labels]
    prec = rules.stats(data.train['text'], data.train['label'])['precision'].to_numpy()
    t, _ = choose_min_precision(probs(data.val), rules.hits(data.val['text'].tolist()),
                                data.labels.encode(data.val['label']), prec, ids, data.labels.names)
    P_test, y = probs(data.test), data.labels.encode(data.test['label'])
    alone = compute_metrics(y, P_test.argmax(1).tolist(), data.labels.names)
    P, first = override_probs(P_test, rules.hits(data.test['text'].tolist()), ids, np.nan_to_num(prec, nan=-1.0) > t)
    m = compute_metrics(y, P.argmax(1).tolist(), data.labels.names)
    return {'accuracy': m['accuracy'], 'macro_f1': m['macro_f1'], 'min_precision': t, 'rules_active': int((np.nan_to_num(prec, nan=-1) > t).sum()),
            'test_rows_overridden': int((first >= 0).sum()), 'train_rows': data.train['row'].tolist(),
            'model_alone_equals_default_run': (alone['accuracy'], alone['macro_f1']) == (default_metrics['accuracy'], default_metrics['macro_f1'])}

def summary(runs:list[dict])->dict:
    "Per arm against the default: the per-seed differences and their mean, for the model and for the paired baseline"
    by = {(r['arm'], r['seed']): r for r in runs}
    out = {}
    for arm in sorted({r['arm'] for r in runs} - {'default'}):
        seeds = sorted(s for a, s in by if a == arm and ('default', s) in by)
        if not seeds: continue
        d = {k: [by[(arm, s)][k] - by[('default', s)][k] for s in seeds] for k in ('accuracy', 'macro_f1')}
        b = {k: [by[(arm, s)]['baseline'][k] - by[('default', s)]['baseline'][k] for s in seeds] for k in ('accuracy', 'macro_f1')}
        out[arm] = {'seeds': seeds, 'diff': d, 'mean_diff': {k: float(np.mean(v)) for k, v in d.items()},
                    'baseline_diff': b, 'baseline_mean_diff': {k: float(np.mean(v)) for k, v in b.items()},
                    'same_train_rows': all(by[(arm, s)]['train_rows'] == by[('default', s)]['train_rows'] for s in seeds)}
    return out

def merge(src:str, dst:str):
    "Replace the override runs of `dst` with those of `src`, after checking that both trained the same default models"
    new, old = json.loads(Path(src).read_text()), json.loads(Path(dst).read_text())
    key = lambda r: (r['seed'], r['accuracy'], r['macro_f1'], r['train_rows'])
    same = sorted(key(r) for r in new['runs'] if r['arm'] == 'default') == sorted(key(r) for r in old['runs'] if r['arm'] == 'default')
    if not same: raise SystemExit(f'{src} and {dst} trained different default models; run the whole bench again')
    old['runs'] = [r for r in old['runs'] if r['arm'] != 'override'] + [r for r in new['runs'] if r['arm'] == 'override']
    old['override_command'] = new['command'] + ' (its default runs reproduced this file\'s to the last digit; merged with --merge)'
    old['summary'] = summary(old['runs'])
    Path(dst).write_text(json.dumps(old, indent=1))
    print(json.dumps(old['summary'].get('override'), indent=1))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 1 epoch on 60 rows, seed 0; results to a temporary file')
    ap.add_argument('--seeds', type=int, nargs='+', default=None, help='default: 0 1 2 (0 with --quick)')
    ap.add_argument('--arms', nargs='+', default=['default', 'pair', 'override', 'offset'], help='default pair override offset')
    ap.add_argument('--epochs', type=int, default=None, help="default: the recipe's (RunConfig.epochs)")
    ap.add_argument('--max-len', type=int, default=None, help="default: the recipe's (RunConfig.max_len)")
    ap.add_argument('--out', default=None, help='default: bench/knowledge_results.json; with --quick a temporary file')
    ap.add_argument('--merge', default=None, help="take the override runs of this results file into --out's (whose default runs must match)")
    a = ap.parse_args(argv)
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    a.out = a.out or (tempfile.mkdtemp(prefix='specft-bench-') + '/knowledge_quick.json' if a.quick else
                      str(Path(__file__).with_name('knowledge_results.json')))
    if a.merge: return merge(a.merge, a.out)
    base = RunConfig(**(QUICK if a.quick else {}), **{k: v for k, v in (('epochs', a.epochs), ('max_len', a.max_len)) if v is not None})
    res = {'command': 'python bench/knowledge.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
           'device': device_name(),
           'torch': torch.__version__, 'threads': torch.get_num_threads(), 'config': dataclasses.asdict(base),
           'rules_file': 'specft/drug_rules.csv', 'runs': [], 'summary': {}}
    trained = [arm for arm in ('default', 'pair') if arm in a.arms] + (['offset'] if 'offset' in a.arms else [])
    order = [(s, arm) for s in seeds for arm in trained if arm != 'offset'] + [(s, 'offset') for s in seeds if 'offset' in trained]
    with tempfile.TemporaryDirectory() as tmp:
        for seed, arm in order:
            cfg = dataclasses.replace(base, **ARMS[arm], seed=seed, out=f'{tmp}/{arm}-{seed}')
            t0 = time.time()
            r = run(cfg)
            data_rows = prepare_data(cfg).train['row'].tolist()
            res['runs'].append({'arm': arm, 'seed': seed, 'accuracy': r.metrics['accuracy'], 'macro_f1': r.metrics['macro_f1'],
                                'baseline': {k: r.baseline[k] for k in ('accuracy', 'macro_f1')}, 'n_train': r.metrics['n_train'],
                                'n_test': r.metrics['n_test'], 'seconds': round(time.time() - t0, 1), 'train_rows': data_rows,
                                **({'rules': r.metrics['rules']} if 'rules' in r.metrics else {})})
            if arm == 'default' and 'override' in a.arms:
                o = override_arm(dataclasses.replace(cfg, out=None), r.run_dir, r.metrics)
                res['runs'].append({'arm': 'override', 'seed': seed, 'baseline': res['runs'][-1]['baseline'], 'n_test': r.metrics['n_test'],
                                    'note': "the default arm's model of this seed, with the rules overriding it", **o})
            res['summary'] = summary(res['runs'])
            Path(a.out).write_text(json.dumps(res, indent=1))
            print(f"{arm} seed {seed}: accuracy {r.metrics['accuracy']:.3f} macro-F1 {r.metrics['macro_f1']:.3f} "
                  f"(baseline {r.baseline['accuracy']:.3f} / {r.baseline['macro_f1']:.3f}) in {time.time() - t0:.0f} s", flush=True)
    print(json.dumps(res['summary'], indent=1))
    print(f'wrote {a.out}')

if __name__ == '__main__':
    main()
