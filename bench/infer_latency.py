#!/usr/bin/env python
"""Inference latency and throughput of every deployment variant, against the Hugging Face pipeline.

On the bundled drug reviews' 378 test texts, with 2 threads, in one process:

1. `hf_pipeline`: `transformers.pipeline("text-classification")` on the fp32 model (the anchor; it gets the texts
   already cleaned and masked, so it does less work than specft's variants, which preprocess as in training),
2. `fp32`: `specft.pipeline.Predictor` on the run folder,
3. `bf16`: `specft export --format bf16` (only where the CPU has bf16 instructions),
4. `int8`: `specft export --format int8` (torch dynamic quantisation),
5. `onnx`, `onnx-int8`: ONNX Runtime, fp32 and int8 (block-wise: a scale per 16 values), and `onnx-int8-tensor`:
   int8 with one scale per matrix and batch (ONNX Runtime's `quantize_dynamic`), for comparison,
6. `k3-distilled-onnx-int8`: 3 of 6 layers kept, distilled from the full run, then ONNX int8 (tiny: 1 of 2),
7. `k5-distilled-bf16` and `k4-distilled-bf16`: one or two layers dropped (5 or 4 of 6; tiny: 1 of 2), distilled
   for 3 epochs, then bf16 (fp32 `merged` where the CPU has no bf16). The students' distillation is set by
   `--distill-epochs` and `--distill-alpha` (recorded as `students_distilled`); `--variants` measures only the named ones.

Per variant: p50 and p95 latency of one text at a time (batch 1), texts per second at batch 32 (batches of
length-sorted texts; every variant is timed once per round, `--rounds` rounds interleaved, and the median round is
kept, so that a slow spell of this shared machine hits all variants alike), size of the weights on disk, macro-F1 on the test split, and the share of test texts whose
label agrees with the fp32 model's (the parity bar of lesson 10 is 99 %). The last line is
`ratio_vs_hf_pipeline=`: the batch-32 throughput of the fastest variant within 0.01 macro-F1 of the fp32 model,
divided by the pipeline's. That rule picks a variant by its test score, so the same rule is also applied to the
validation split (60 rows that no variant trained on): `ratio_vs_hf_pipeline_val_choice=` does not read the test
split, but 60 rows decide it; the same ratio round by round shows how much the machine's speed moved it.
bench/deploy_cv.py decides which variants keep within 0.01 by 5-fold cross-validation on the 600 training rows
instead, and reads this script's results files for their speeds. How much either split can
tell: per variant, a paired bootstrap 95% interval of its macro-F1 minus fp32's, on each split.
The file records the CPU's instruction set as torch sees it (`cpu_capability`: AVX2, AVX512, ...) and whether it has bf16.

Then the block size of `onnx-int8`, chosen on the run's training and validation texts (never the test split):
for 16, 32, 64 and 128 values per scale, the mean KL divergence of the int8 model's probabilities from the fp32
model's, label agreement, and texts per second; the most faithful block size (smallest KL) is the one kept.

Then where int8's error comes from: the fp32 model with every Linear layer but the head fake-quantised (rounded to
the int8 grid and back, symmetric), weights per tensor or per output channel, activations per tensor (what dynamic
quantisation does, one scale per batch), per token, or not at all; label agreement with fp32 and macro-F1 for each.

Usage: python bench/infer_latency.py [--run-dir RUN] [--quick] [--out bench/infer_latency_results.json]
       python bench/infer_latency.py --run-dir RUN --distill-alpha 1 --distill-epochs 8 --variants bf16 k4-distilled-bf16 \
           --out bench/infer_latency_results_avx512_alpha1.json   # the student bench/deploy_cv.py kept (lesson 10)
Without --run-dir it trains a MiniLM run with the default recipe first (--quick: a tiny run, measured on
96 test texts in one round, for a smoke test; its results are printed, not written).
"""
import argparse, copy, json, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, torch

def parse():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run-dir', help='a finished run folder (default: train one)')
    ap.add_argument('--quick', action='store_true', help='the tiny model: a smoke test of this script')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds of the batch-32 pass (--quick: 1)')
    ap.add_argument('--distill-alpha', type=float, default=None, help="the students' weight of the teacher's soft labels (default: specft.deploy's)")
    ap.add_argument('--distill-epochs', type=int, default=3, help="the students' epochs of distillation (default 3)")
    ap.add_argument('--variants', nargs='+', default=None, metavar='NAME',
                    help='measure only these variants (beside hf_pipeline and fp32); the block-size and int8-error studies need all')
    ap.add_argument('--out', default=None, help='results file (default: bench/infer_latency_results.json; none with --quick)')
    return ap.parse_args()

def hf_pipeline(pred):
    "A transformers text-classification pipeline over the run's classifier (mean pooling and head included)"
    from transformers import pipeline, PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput
    clf = pred.model
    class Wrapped(PreTrainedModel):
        config_class = type(clf.backbone.config)
        _supports_sdpa = _supports_attention_backend = True   # attention runs inside `clf`, as it was built
        def __init__(self, config):
            super().__init__(config); self.clf = clf
        def forward(self, input_ids=None, attention_mask=None, **kw):
            return SequenceClassifierOutput(logits=self.clf(input_ids, attention_mask))
    cfg = copy.deepcopy(clf.backbone.config)
    cfg.id2label = dict(enumerate(pred.labels)); cfg.label2id = {l: i for i, l in enumerate(pred.labels)}
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity(hf_logging.CRITICAL)   # it complains that a wrapped model is not one of its registered classes
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return pipeline('text-classification', model=Wrapped(cfg).eval(), tokenizer=pred.tok, device='cpu', top_k=None)

def batch32(proba, texts, n_labels):
    "Probabilities of all `texts`, 32 length-sorted texts per call, and the seconds it took"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    t0 = time.perf_counter(); P = np.zeros((len(texts), n_labels))
    for s in range(0, len(order), 32):
        idx = order[s:s + 32]; P[idx] = proba([texts[i] for i in idx])
    return P, time.perf_counter() - t0

def measure(name, proba, texts, y, labels, size, batch1_n, val):
    "p50/p95 at batch 1, macro-F1 of the batch-32 pass (its speed is timed later, interleaved with the others'), and on `val` (texts, y)"
    from specft.deploy import latency
    from specft.evaluate import compute_metrics
    lat = latency(lambda t: proba([t]), texts[:batch1_n], warmup=3)
    P, _ = batch32(proba, texts, len(labels)); Pv = batch32(proba, val[0], len(labels))[0]
    f1 = compute_metrics(list(y), P.argmax(-1).tolist(), labels)['macro_f1']
    f1_val = compute_metrics(list(val[1]), Pv.argmax(-1).tolist(), labels)['macro_f1']
    row = {'variant': name, 'p50_ms_b1': round(lat['p50_ms'], 2), 'p95_ms_b1': round(lat['p95_ms'], 2),
           'size_mb': round(size / 1e6, 2), 'macro_f1': round(f1, 4), 'val_macro_f1': round(f1_val, 4)}
    print(' '.join(f'{k}={v}' for k, v in row.items()), flush=True)
    return row, P, Pv

def interleaved_throughput(probas:dict, texts, n_labels, rounds:int):
    "Texts/s at batch 32 of every variant: each round times every variant once, in turn; the median round is kept"
    secs = {name: [] for name in probas}
    for r in range(rounds):
        for name, proba in probas.items(): secs[name].append(batch32(proba, texts, n_labels)[1])
        print(f'round {r + 1}/{rounds}:', {n: round(len(texts) / s[-1], 1) for n, s in secs.items()}, flush=True)
    return {n: round(len(texts) / float(np.median(s)), 1) for n, s in secs.items()}, secs

def fake_int8(t, dim=None):
    "`t` rounded to a symmetric int8 grid and back: one scale for the whole tensor (dim None) or per slice along `dim`"
    a = t.abs().amax() if dim is None else t.abs().amax(dim, keepdim=True)
    s = a.clamp(min=1e-8) / 127
    return (t / s).round().clamp(-127, 127) * s

class FakeInt8Linear(torch.nn.Module):
    "A Linear layer whose weight (per 'tensor' or 'channel') and input (per 'tensor', 'token' or 'none') are fake-quantised"
    def __init__(self, lin, weights, acts):
        super().__init__(); self.lin, self.weights, self.acts = lin, weights, acts
    def forward(self, x):
        w = fake_int8(self.lin.weight, None if self.weights == 'tensor' else 1)
        if self.acts != 'none': x = fake_int8(x, None if self.acts == 'tensor' else -1)
        return torch.nn.functional.linear(x, w, self.lin.bias)

def int8_error_sources(pred, texts, y, ref):
    "Agreement with fp32 labels `ref` and macro-F1 for each int8 granularity, fake-quantised"
    from specft.pipeline import Predictor
    from specft.evaluate import compute_metrics
    out = []
    for w, a in (('tensor', 'tensor'), ('channel', 'tensor'), ('channel', 'token'), ('channel', 'none')):
        m = copy.deepcopy(pred.model); mods = dict(m.named_modules())
        for n, mod in list(mods.items()):
            if isinstance(mod, torch.nn.Linear) and n != 'head':
                parent, _, attr = n.rpartition('.'); setattr(mods[parent], attr, FakeInt8Linear(mod, w, a))
        lab = Predictor(m, pred.tok, pred.labels, pred.prep, 'cpu').predict_proba(texts).argmax(-1)
        out.append({'weights_per': w, 'activations_per': a, 'agreement_vs_fp32': round(float((lab == ref).mean()), 4),
                    'macro_f1': round(compute_metrics(list(y), lab.tolist(), pred.labels)['macro_f1'], 4)})
        print(' '.join(f'{k}={v}' for k, v in out[-1].items()), flush=True)
    return out

def block_size_choice(run_dir, tmp, texts, P_ref, threads):
    "KL from fp32, agreement and speed of block-wise int8 at each block size, on texts that are not the test split"
    from specft.deploy import export_run, quantize_onnx, OrtClassifier, load_deployed
    from specft.pipeline import Predictor
    src = tmp/'onnx'/'model.onnx'   # written by the `onnx` variant
    base = load_deployed(tmp/'onnx', 'cpu', threads=threads)
    out = []
    for b in (16, 32, 64, 128):
        q = quantize_onnx(src, tmp/f'block{b}.onnx', block_size=b)
        pred = Predictor(OrtClassifier(q, threads), base.tok, base.labels, base.prep, 'cpu')
        t0 = time.perf_counter(); P = pred.predict_prepared(texts); secs = time.perf_counter() - t0
        kl = float((P_ref * (np.log(P_ref + 1e-12) - np.log(P + 1e-12))).sum(-1).mean())
        out.append({'block_size': b, 'kl_vs_fp32': float(f'{kl:.3g}'), 'agreement_vs_fp32': round(float((P.argmax(-1) == P_ref.argmax(-1)).mean()), 4),
                    'texts_per_s': round(len(texts) / secs, 1)})
        print(' '.join(f'{k}={v}' for k, v in out[-1].items()), flush=True)
    return out

def main():
    a = parse()
    if a.quick: a.rounds = 1
    torch.set_num_threads(a.threads)
    from specft.pipeline import Predictor, prepare_data, saved_config, run, RunConfig
    from specft.clean import preprocess_texts
    from specft.core import cpu_has_bf16, device_name
    from specft.evaluate import paired_bootstrap
    from specft.deploy import export_run, load_deployed, size_on_disk, state_bytes, quantize_onnx, encoder_layers, DISTILL_ALPHA
    distill = dict(distill_epochs=a.distill_epochs, distill_alpha=DISTILL_ALPHA if a.distill_alpha is None else a.distill_alpha)
    tmp = Path(tempfile.mkdtemp(prefix='infer-latency-'))
    run_dir = Path(a.run_dir) if a.run_dir else None
    if run_dir is None:
        cfg = RunConfig(model='tiny', epochs=3, max_len=48, max_train_rows=90) if a.quick else RunConfig(model='minilm')
        cfg.out = str(tmp/'run')   # trained where `auto` says (a GPU if there is one); measured on the CPU below
        print(f'training {cfg.model} ...', flush=True); run_dir = run(cfg).run_dir
    pred = Predictor.load(run_dir, 'cpu')
    run_config = json.loads((run_dir/'run.json').read_text())['config']
    data = prepare_data(saved_config(run_config))
    texts, y, labels = data.test['text'].tolist(), data.labels.encode(data.test['label']), pred.labels
    if a.quick: texts, y = texts[:96], y[:96]   # a smoke test: a quarter of the test split
    n1 = len(texts)
    rows, src_bytes = [], size_on_disk(run_dir/'model.safetensors')
    pipe = hf_pipeline(pred)
    clean = dict(zip(texts, preprocess_texts(texts, pred.prep)))
    def pipe_proba(ts):
        out = pipe([clean.get(t) or preprocess_texts([t], pred.prep)[0] for t in ts], batch_size=32, truncation=True,
                   max_length=pred.prep['max_len'])
        return np.array([[{d['label']: d['score'] for d in o}[l] for l in labels] for o in out])
    probs, val_probs, probas = {}, {}, {}
    def add(name, proba, *args):
        row, probs[name], val_probs[name] = measure(name, proba, *args); rows.append(row); probas[name] = proba
    val = (data.val['text'].tolist(), data.labels.encode(data.val['label']))
    clean.update(zip(val[0], preprocess_texts(val[0], pred.prep)))
    add('hf_pipeline', pipe_proba, texts, y, labels, src_bytes, n1, val)
    add('fp32', pred.predict_proba, texts, y, labels, src_bytes, n1, val)
    L = len(encoder_layers(pred.model)); k = max(1, L // 2)
    fast = 'bf16' if cpu_has_bf16() else 'merged'
    for name, fmt, kw in [*([('bf16', 'bf16', {})] if cpu_has_bf16() else []), ('int8', 'int8', {}), ('onnx', 'onnx', {}),
                          ('onnx-int8', 'onnx-int8', {}), ('onnx-int8-tensor', 'onnx', dict(scheme='tensor')),
                          (f'k{k}-distilled-onnx-int8', 'onnx-int8', dict(keep_layers_k=k, **distill)),
                          *[(f'k{j}-distilled-{fast}', fast, dict(keep_layers_k=j, **distill)) for j in dict.fromkeys((L - 1, L - 2)) if j >= 1]]:
        if a.variants and name not in a.variants: continue
        scheme = kw.pop('scheme', None)
        spec = export_run(run_dir, tmp/name, fmt, **kw)
        if scheme:   # the fp32 ONNX export, quantised with `scheme` (once: not block-wise first)
            quantize_onnx(tmp/'onnx'/'model.onnx', tmp/name/'model.onnx', scheme=scheme)
            spec['size_bytes'] = size_on_disk(tmp/name/'model.onnx')
        dp = load_deployed(tmp/name, 'cpu', threads=a.threads)
        # torch int8: the packed int8 weights as torch holds them (the folder stores fp32 safetensors, see 10_deploy)
        size = spec['size_bytes'] if spec['runtime'] == 'onnxruntime' or fmt == 'bf16' else state_bytes(dp.model)
        add(name, dp.predict_proba, texts, y, labels, size, n1, val)
    print(f'texts/s at batch 32, {a.rounds} interleaved rounds:', flush=True)
    speed, secs = interleaved_throughput(probas, texts, len(labels), a.rounds)
    for r in rows: r['texts_per_s_b32'] = speed[r['variant']]
    ref = probs['fp32'].argmax(-1)
    for r in rows: r['agreement_vs_fp32'] = round(float((probs[r['variant']].argmax(-1) == ref).mean()), 4)
    print('label agreement with fp32:', {r['variant']: r['agreement_vs_fp32'] for r in rows})
    for r in rows:   # how sure each split is of a variant's macro-F1 against fp32's: a paired bootstrap 95% interval of the difference
        for key, P, yy in (('val_f1_diff_95', val_probs, val[1]), ('f1_diff_95', probs, y)):
            b = paired_bootstrap(yy, P[r['variant']].argmax(-1), P['fp32'].argmax(-1), len(labels))
            r[key] = [round(b['lo'], 3), round(b['hi'], 3)]
    print('macro-F1 minus fp32\'s, 95% interval (validation | test):', {r['variant']: (r['val_f1_diff_95'], r['f1_diff_95']) for r in rows})
    blocks = sources = None
    if not a.variants:
        print('block size of onnx-int8, on the training and validation texts:')
        dev = data.train['text'].tolist() + data.val['text'].tolist()
        if a.quick: dev = dev[:64]
        blocks = block_size_choice(run_dir, tmp, dev, pred.predict_prepared(dev), a.threads)
        print('int8 error by granularity (fake-quantised):')
        sources = int8_error_sources(pred, texts, y, ref)
    base = next(r for r in rows if r['variant'] == 'fp32')
    ok = [r for r in rows if r['variant'] != 'hf_pipeline' and r['macro_f1'] >= base['macro_f1'] - 0.01]
    best = max(ok, key=lambda r: r['texts_per_s_b32'])
    ratio = best['texts_per_s_b32'] / rows[0]['texts_per_s_b32']
    ok_val = [r for r in rows if r['variant'] != 'hf_pipeline' and r['val_macro_f1'] >= base['val_macro_f1'] - 0.01]
    best_val = max(ok_val, key=lambda r: r['texts_per_s_b32'])
    ratio_val = best_val['texts_per_s_b32'] / rows[0]['texts_per_s_b32']
    # the same ratio within each round (both timed back to back; the file's seconds_per_round give it), so the spread of the machine's speed shows
    rounds_val = [round(p / v, 2) for p, v in zip(secs['hf_pipeline'], secs[best_val['variant']])]
    result = {'command': ' '.join(['python bench/infer_latency.py', *sys.argv[1:]]), 'device': device_name(),
              'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'cpu_has_bf16': cpu_has_bf16(), 'threads': a.threads,
              'run_config': run_config, 'model': run_config['model'], 'n_test': len(texts),
              'rows': rows, 'rounds': a.rounds, 'seconds_per_round': {n: [round(x, 3) for x in v] for n, v in secs.items()}, 'block_size_choice': blocks,
              'block_size_kept': blocks and min(blocks, key=lambda r: r['kl_vs_fp32'])['block_size'],
              'students_distilled': {'epochs': distill['distill_epochs'], 'alpha': distill['distill_alpha']}, 'int8_error_sources': sources, 'fastest_within_0.01_f1': best['variant'], 'ratio_vs_hf_pipeline': round(ratio, 2),
              'fastest_within_0.01_val_f1': best_val['variant'], 'ratio_vs_hf_pipeline_val_choice': round(ratio_val, 2)}
    out = a.out or (None if a.quick else str(Path(__file__).parent/'infer_latency_results.json'))
    if out: Path(out).write_text(json.dumps(result, indent=2) + '\n')
    print(f"fastest within 0.01 macro-F1 of fp32: {best['variant']}")
    print(f"fastest within 0.01 macro-F1 of fp32 on the validation split: {best_val['variant']}")
    print(f'ratio_vs_hf_pipeline_val_choice={ratio_val:.2f} (round by round: {rounds_val})')
    print(f'ratio_vs_hf_pipeline={ratio:.2f}')

if __name__ == '__main__':
    main()
