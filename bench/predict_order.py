#!/usr/bin/env python
"""Prediction throughput: `Predictor` batching texts in the order given against sorting them by length first.

A batch is padded to its longest text. `specft.pipeline.Predictor` sorts the texts by length (`length_order`) before
it cuts them into batches of 32, and puts the rows back in the order given; before, it cut them as they came. This
script times both on the bundled drug reviews' 378 test texts (cleaned and masked as a run prepares them, in the
order of the test split), with 2 threads, in one process, on the bundled MiniLM with a fresh 3-label head (the speed
of a forward pass does not depend on the weights' values, so no run is trained): fp32, and bf16 where the CPU has bf16
instructions. Every variant is timed once per round, `--rounds` rounds interleaved, and the median round is kept,
so that a slow spell of this shared machine hits all alike. It also reports the padding share of each batching (the
padded slots among all token slots) and the largest difference between the two batchings' probabilities.

The last line is `ratio_sorted_vs_as_given=`: texts per second sorted over as given, fp32.

Usage: python bench/predict_order.py [--rounds 5] [--threads 2] [--out bench/predict_order_results.json]
       python bench/predict_order.py --quick   (the tiny model, 64 texts, 1 round: a smoke test; nothing is written)
"""
import argparse, copy, json, sys, time
from pathlib import Path
import numpy as np, torch

def parse():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 64 texts, 1 round: a smoke test')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--out', default=None, help='results file (default: bench/predict_order_results.json; none with --quick)')
    return ap.parse_args()

def main():
    a = parse()
    if a.quick: a.rounds = 1
    torch.set_num_threads(a.threads)
    from specft.pipeline import Predictor, prepare_data, preprocessing_of, length_order, RunConfig
    from specft.model import build_classifier
    from specft.batch import encode_texts, make_loader, padding_stats
    from specft.train import predict_logits
    from specft.core import cpu_has_bf16, device_name
    cfg = RunConfig(model='tiny' if a.quick else 'minilm')
    data = prepare_data(cfg)
    texts = data.test['text'].tolist()[:64 if a.quick else None]
    model, tok = build_classifier(cfg.model, len(data.labels.names), seed=0)
    prep = preprocessing_of(cfg)   # what a run with these settings records
    preds = {'fp32': Predictor(model, tok, data.labels.names, prep, 'cpu')}
    if cpu_has_bf16(): preds['bf16'] = Predictor(copy.deepcopy(model).to(torch.bfloat16), tok, data.labels.names, prep, 'cpu')
    ids = encode_texts(tok, texts, prep['max_len'], prep['truncation'])
    def as_given(p:Predictor)->np.ndarray:
        "What Predictor.predict_prepared did before: batches of 32 in the order given"
        return predict_logits(p.model, make_loader(ids, None, 32, tok.pad_token_id), device='cpu').softmax(-1).numpy()
    runs = {f'{name} {order}': (lambda p=p, f=f: f(p)) for name, p in preds.items()
            for order, f in (('as given', as_given), ('sorted', lambda p: p.predict_prepared(texts)))}
    first = {name: f() for name, f in runs.items()}   # a warm-up pass each, kept to compare the two batchings
    secs = {name: [] for name in runs}
    for r in range(a.rounds):
        for name, f in runs.items():
            t = time.perf_counter(); f(); secs[name].append(time.perf_counter() - t)
        print(f'round {r + 1}/{a.rounds}:', {n: round(len(texts) / s[-1], 1) for n, s in secs.items()}, flush=True)
    speed = {n: round(len(texts) / float(np.median(s)), 1) for n, s in secs.items()}
    share = lambda xs: padding_stats(make_loader(xs, None, 32, 0).batch_sampler)['padding_share']
    diff = {name: float(np.abs(first[f'{name} as given'] - first[f'{name} sorted']).max()) for name in preds}
    ratios = {name: round(speed[f'{name} sorted'] / speed[f'{name} as given'], 2) for name in preds}
    result = {'command': ' '.join(['python bench/predict_order.py', *sys.argv[1:]]), 'device': device_name(),
              'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'threads': a.threads, 'model': cfg.model,
              'n_texts': len(texts), 'batch_size': 32, 'max_len': cfg.max_len, 'rounds': a.rounds,
              'padding_share': {'as given': share(ids), 'sorted': share([ids[i] for i in length_order(texts)])},
              'texts_per_s': speed, 'seconds_per_round': {n: [round(x, 3) for x in s] for n, s in secs.items()},
              'max_abs_prob_diff': diff, 'ratio_sorted_vs_as_given': ratios}
    print(json.dumps({k: result[k] for k in ('padding_share', 'texts_per_s', 'max_abs_prob_diff')}))
    out = a.out or (None if a.quick else str(Path(__file__).parent/'predict_order_results.json'))
    if out: Path(out).write_text(json.dumps(result, indent=2) + '\n')
    if 'bf16' in ratios: print(f"ratio_sorted_vs_as_given_bf16={ratios['bf16']:.2f}")
    print(f"ratio_sorted_vs_as_given={ratios['fp32']:.2f}")

if __name__ == '__main__':
    main()
