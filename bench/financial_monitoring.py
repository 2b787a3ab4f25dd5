#!/usr/bin/env python
"""Financial sentiment monitoring on the teaching corpus: the fine-tuned MiniLM against TF-IDF + logistic regression,
as classifiers and as the engine of the monitor, over several seeds.

For each seed: `run(RunConfig(data='fin-news', seed=s))` (the split is by date: the last 20% of the days are test), the
test metrics of the model and of the paired baseline (fit on exactly the run's training rows); then each of the two
scores every article of the corpus (the training days in-sample: a monitor's history is scored by the same model),
`specft.monitor` turns the scores into daily indices and alerts with `AlertRule()` (chosen on the training period in
lessons/financial_monitoring.ipynb), and `score_alerts` checks the test period's alerts against the planted recall
(the data card's episodes). Writes bench/financial_monitoring_results.json; the lesson reads it.

    python bench/financial_monitoring.py            # MiniLM, seeds 0 1 2 (a few minutes on 2 CPU cores)
    python bench/financial_monitoring.py --quick    # the tiny model, 1 epoch, seed 0: a smoke test (results to a temporary file unless --out)
"""
import argparse, dataclasses, json, platform, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd
import specft
from specft.domains import read_fin_news
from specft.evaluate import compute_metrics, fit_baseline
from specft.monitor import AlertRule, alerts, apply_rule, daily_index, score_alerts, stream_frame
from specft.pipeline import Predictor, RunConfig, check_config, prepare_data, run

def monitor_outcome(news, P, labels, events, test_start, rule):
    "Alerts from the probabilities P (one row per article of `news`), scored on the test period"
    probs = pd.DataFrame(P, columns=labels)
    s = stream_frame(pd.concat([news[['date', 'ticker']].rename(columns={'ticker': 'entity'}), probs], axis=1), labels=labels)
    found = alerts(apply_rule(daily_index(s), rule))
    test = found[found.date >= test_start]
    return {**score_alerts(found, events, period=(test_start, news.date.max())),
            'test_alerts': [{'date': str(r.date.date()), 'entity': r.entity, 'n': int(r.n), 'n_neg': int(r.n_neg), 'z': round(float(r.z), 3)}
                            for r in test.itertuples()]}

def one_seed(seed, base_cfg, news, card, events, test_start, rule, workdir):
    cfg = RunConfig(**{**base_cfg, 'seed': seed, 'out': str(Path(workdir)/f'seed{seed}')})
    t0 = time.time(); res = run(cfg); train_s = time.time() - t0
    data = prepare_data(check_config(cfg))
    labels = res.labels
    pipe = fit_baseline(data.train['text'].tolist(), data.labels.encode(data.train['label']))
    pred = Predictor.load(res.run_dir)
    P_model = pred.predict_proba(news.text.tolist())
    P_base = pipe.predict_proba(news.text.tolist())   # columns in label-id order, as the model's
    flat = lambda m: {'accuracy': m['accuracy'], 'macro_f1': m['macro_f1'], **{f'f1[{l}]': v['f1'] for l, v in m['per_class'].items()}}
    return {'seed': seed, 'train_seconds': round(train_s, 1), 'n_train': res.metrics['n_train'], 'n_val': res.metrics['n_val'],
            'n_test': res.metrics['n_test'], 'model': flat(res.metrics), 'baseline': flat(res.baseline),
            'monitor_model': monitor_outcome(news, P_model, labels, events, test_start, rule),
            'monitor_baseline': monitor_outcome(news, P_base, labels, events, test_start, rule)}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 1 epoch, seed 0 (a smoke test)')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--out', default=None, help='results file (default: bench/financial_monitoring_results.json; --quick: a temporary file)')
    a = ap.parse_args(argv)
    base_cfg = dict(data='fin-news', model='tiny', epochs=1) if a.quick else dict(data='fin-news', model='minilm')
    seeds = [0] if a.quick else a.seeds
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp())/'financial_monitoring_results.json' if a.quick
                                     else Path(__file__).with_name('financial_monitoring_results.json'))
    news, card = read_fin_news()
    events = pd.DataFrame(card['episodes']).drop(columns='end').rename(columns={'ticker': 'entity', 'burst_end': 'end'})
    test_start = pd.Timestamp(card['test_split']['first_test_day'])
    rule = AlertRule()
    with tempfile.TemporaryDirectory() as work:
        runs = [one_seed(s, base_cfg, news, card, events, test_start, rule, work) for s in seeds]
    mean = lambda who, k: float(np.mean([r[who][k] for r in runs]))
    result = {'command': 'python bench/financial_monitoring.py' + (' --quick' if a.quick else '') + (f" --seeds {' '.join(map(str, a.seeds))}" if not a.quick and a.seeds != [0, 1, 2] else ''),
              'created': time.strftime('%Y-%m-%dT%H:%M:%S'), 'settings': base_cfg, 'seeds': seeds,
              'rule': dataclasses.asdict(rule), 'test_period': [str(test_start.date()), str(news.date.max().date())],
              'versions': {'python': platform.python_version(), 'specft': specft.__version__},
              'runs': runs,
              'mean': {who: {k: round(mean(who, k), 4) for k in runs[0][who]} for who in ('model', 'baseline')},
              'recall_detected': {who: sum(r[f'monitor_{who}']['detected'] for r in runs) for who in ('model', 'baseline')},
              'false_alerts_test': {who: sum(r[f'monitor_{who}']['false_alerts'] for r in runs) for who in ('model', 'baseline')}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ('mean', 'recall_detected', 'false_alerts_test')}, indent=1), '\n->', out, file=sys.stderr)

if __name__ == '__main__':
    main()
