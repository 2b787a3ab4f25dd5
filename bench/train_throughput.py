#!/usr/bin/env python
"""Training throughput: specft.train against transformers.Trainer, like for like.

Trains the bundled MiniLM on the bundled drug-review training split (cleaned, then 90% of it: the split a
`specft train` run trains on) for one epoch with the same hyper-parameters (batch 16, max length 256,
lr 5e-5), in one process:

1. `specft.train.fit` (length-bucketed batches from `specft.batch.make_loader`, dynamic padding, the model from
   `build_classifier`, whose dropout draws its masks with `specft.model.fast_dropout`),
2. `transformers.Trainer` at its defaults (random sampler, `DataCollatorWithPadding`),
3. `transformers.Trainer` at its fastest setting for this job: `train_sampling_strategy="group_by_length"`,
4. `specft.train.fit` again with torch's own dropout (`build_classifier(..., fast_dropout=False)`), to show
   what the faster dropout contributes (not part of the goal ratios).

It counts real (non-pad) tokens per second of training (from the first step to the end of the last; set-up,
validation and saving excluded, for all three alike), measures this machine's matrix-multiply peak in the
same process, and reports specft's share of that peak. Every run is then validated the same way
(cross-entropy and macro-F1 on the validation split). The rounds alternate the order of the runs and the
median is reported: this machine is shared and noisy.

Usage: python bench/train_throughput.py [--precision fp32|bf16] [--repeats 3] [--threads N] [--device cpu|cuda]
       python bench/train_throughput.py --quick   (32 reviews, max length 64, 1 round: a smoke test, not a measurement)
(the default precision is specft's own choice for the device: on the CPU bf16 where it has bf16 instructions,
else fp32; on a GPU bf16 from compute capability 8). On a GPU the clocks synchronise the device at each step
and the peak is that GPU's matrix-multiply peak in the same precision.
"""
import argparse, math, os, platform, sys, tempfile, time, warnings
import numpy as np
import torch
import torch.nn.functional as F

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    from specft.core import choose_precision
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--precision', default=None, choices=['fp32', 'bf16'], help="default: specft's choice for the device")
    ap.add_argument('--repeats', type=int, default=3, help='rounds of the runs; the median is reported')
    ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: this process's cores)")
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--max-len', type=int, default=256)
    ap.add_argument('--lr', type=float, default=5e-5)
    ap.add_argument('--max-rows', type=int, default=None, help='train on the first N rows only (a smoke test)')
    ap.add_argument('--quick', action='store_true', help='a smoke test: 32 training and 16 validation rows, max length 64, 1 round')
    a = ap.parse_args(argv)
    a.precision = a.precision or choose_precision('auto', a.device)
    if a.quick: a.max_rows, a.max_len, a.repeats = a.max_rows or 32, min(a.max_len, 64), 1
    return a

def sync(device:str):
    "Wait for the device's queued work, so that a clock reads finished work"
    if device == 'cuda': torch.cuda.synchronize()

def matmul_peak(dtype, n=2048, reps=8, device='cpu')->float:
    "The best FLOP/s of n x n matrix products in `dtype` on `device` over three rounds"
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(2): a @ b
    best = 0.0
    for _ in range(3):
        sync(device); t = time.perf_counter()
        for _ in range(reps): a @ b
        sync(device); best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
    return best

def prepare(max_len):
    "The cleaned bundled training split, split 90/10 as `specft train` does; token ids and label ids"
    from specft.corpus import load_corpus
    from specft.clean import clean_frame
    from specft.split import split_corpus, LabelMap
    from specft.batch import encode_texts
    from specft.model import load_tokenizer
    import dataclasses
    corpus = load_corpus('drug-reviews')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train, _ = clean_frame(corpus.train); test, _ = clean_frame(corpus.test)
    splits = split_corpus(dataclasses.replace(corpus, train=train, test=test), val_frac=0.1, seed=0)
    labels = LabelMap.from_labels(splits.train['label'])
    tok = load_tokenizer('minilm')
    enc = lambda df: (encode_texts(tok, df['text'].tolist(), max_len), labels.encode(df['label']))
    return tok, labels, enc(splits.train), enc(splits.val)

def matmul_flops(n_linear:int, lengths)->float:
    """Training FLOPs of one epoch, counted on real tokens: 6 x (weights of the linear layers) per token
    (2 forward + 4 backward per multiply-add), plus attention: per layer and sequence of length T,
    QK^T and AV take 2 x 2 T^2 d forward, x3 with the backward"""
    return sum(6 * n_linear * T for T in lengths)

def linear_weights(model)->int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))

def attention_flops(cfg, lengths)->float:
    return sum(12 * cfg.num_hidden_layers * T * T * cfg.hidden_size for T in lengths)

def validate(model, ids, y, pad_id, device='cpu')->dict:
    "Validation cross-entropy and macro-F1 of `model` (logits from `forward(input_ids, attention_mask)`)"
    from specft.batch import make_loader
    from specft.train import predict_logits
    from specft.evaluate import compute_metrics
    logits = predict_logits(model, make_loader(ids, None, 32, pad_id), device=device).float().cpu()
    m = compute_metrics(y, logits.argmax(-1).tolist(), ['negative', 'neutral', 'positive'])
    return dict(val_loss=F.cross_entropy(logits, torch.tensor(y)).item(), val_macro_f1=m['macro_f1'])

def run_specft(a, tok, train, val, precision, fast_dropout=True):
    from specft.batch import make_loader
    from specft.model import build_classifier
    from specft.train import Callback, TrainConfig, fit
    model, _ = build_classifier('minilm', 3, seed=0, fast_dropout=fast_dropout)
    times = {}
    class Clock(Callback):
        def on_train_begin(self, s): times['t0'] = time.perf_counter()
        def on_step_end(self, s): sync(a.device); times['t1'] = time.perf_counter()
    dl = make_loader(*train, a.batch_size, tok.pad_token_id, shuffle=True, seed=0)
    vdl = make_loader(*val, 32, tok.pad_token_id)
    s = fit(model, dl, vdl, TrainConfig(epochs=1, lr=a.lr, precision=precision, device=a.device, seed=0), [Clock()])
    padded = sum(max(len(train[0][i]) for i in b) * len(b) for b in dl.batch_sampler)
    return times['t1'] - times['t0'], s.step, padded, model, validate(model, *val, tok.pad_token_id, a.device)

class HFLogits(torch.nn.Module):
    "A transformers sequence classifier as `forward(input_ids, attention_mask) -> logits`"
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, input_ids, attention_mask): return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

def run_hf(a, tok, train, val, precision, strategy):
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)
    from specft.model import minilm_path
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    ds = Dataset.from_dict({'input_ids': train[0], 'labels': train[1]})
    times, steps, padded = {}, [0], [0]
    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw): times['t0'] = time.perf_counter()
        def on_step_end(self, args, state, control, **kw): sync(a.device); times['t1'] = time.perf_counter(); steps[0] += 1
    collate = DataCollatorWithPadding(tok)
    def counting(features):
        b = collate(features); padded[0] += b['input_ids'].numel(); return b
    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(output_dir=d, per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
                                 num_train_epochs=1, seed=0, bf16=precision == 'bf16', use_cpu=a.device == 'cpu',
                                 report_to='none', save_strategy='no', disable_tqdm=True,
                                 train_sampling_strategy=strategy)
        Trainer(model=model, args=args, train_dataset=ds, data_collator=counting, processing_class=tok,
                callbacks=[Clock()]).train()
    return times['t1'] - times['t0'], steps[0], padded[0], model, validate(HFLogits(model), *val, tok.pad_token_id, a.device)

def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    import transformers
    tok, labels, train, val = prepare(a.max_len)
    if a.max_rows: train = (train[0][:a.max_rows], train[1][:a.max_rows])
    if a.quick:
        val = (val[0][:16], val[1][:16])
        print('# --quick: a smoke test of the script, not a measurement')
    lengths = [len(x) for x in train[0]]; real = sum(lengths)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"# data: {len(lengths)} training reviews, {real} real tokens (max_len {a.max_len}); "
          f"{len(val[0])} validation reviews; batch {a.batch_size}, lr {a.lr}, 1 epoch, precision {a.precision}")
    if a.device == 'cuda': print(f"# GPU: {torch.cuda.get_device_name()} (compute capability {torch.cuda.get_device_capability()})")
    n = 256 if a.quick else 8192 if a.device == 'cuda' else 2048
    peak = {'fp32': matmul_peak(torch.float32, n, device=a.device)}
    if a.precision == 'bf16': peak['bf16'] = matmul_peak(torch.bfloat16, n, device=a.device)
    print(f'# matmul peak ({n}^3):', ', '.join(f'{k} {v / 1e9:.0f} GFLOP/s' for k, v in peak.items()))
    runs = {'specft': lambda: run_specft(a, tok, train, val, a.precision),
            'hf_default': lambda: run_hf(a, tok, train, val, a.precision, 'random'),
            'hf_grouped': lambda: run_hf(a, tok, train, val, a.precision, 'group_by_length'),
            'specft_stock_dropout': lambda: run_specft(a, tok, train, val, a.precision, fast_dropout=False)}
    if a.device == 'cuda':   # CUDA's context, cuBLAS handles and kernels load on first use: pay that before the clocks
        run_specft(a, tok, (train[0][:64], train[1][:64]), val, a.precision)
    res = {k: [] for k in runs}
    for r in range(a.repeats):
        for name, fn in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):   # alternate the order against drift
            t, steps, padded, model, val_m = fn()
            res[name].append((t, steps, padded, model, val_m))
            print(f"# round {r + 1} {name}: {t:.1f} s for {steps} steps, {real / t:.0f} real tokens/s, "
                  f"{padded} tokens incl. padding ({padded / real - 1:.1%} padding), "
                  f"val_loss {val_m['val_loss']:.4f}, val_macro_f1 {val_m['val_macro_f1']:.4f}", flush=True)
    tps = {k: float(np.median([real / x[0] for x in v])) for k, v in res.items()}
    spec_model = res['specft'][0][3]
    flops = matmul_flops(linear_weights(spec_model), lengths) + attention_flops(spec_model.backbone.config, lengths)
    eff = flops / float(np.median([x[0] for x in res['specft']]))
    print(f"# specft counted {flops / 1e12:.2f} TFLOP of training (6 x {linear_weights(spec_model) / 1e6:.2f} M linear "
          f"weights x tokens + attention), effective {eff / 1e9:.1f} GFLOP/s")
    for k in tps: print(f"{k}_tokens_per_s={tps[k]:.0f}")
    print(f"ratio_vs_hf_default={tps['specft'] / tps['hf_default']:.2f}")
    print(f"ratio_vs_hf_grouped={tps['specft'] / tps['hf_grouped']:.2f}")
    print(f"fast_dropout_gain={tps['specft'] / tps['specft_stock_dropout']:.2f}")
    print(f"peak_fraction={eff / peak[a.precision]:.3f}")
    for k, v in res.items():
        print(f"{k}_val_loss={v[-1][4]['val_loss']:.4f}\n{k}_val_macro_f1={v[-1][4]['val_macro_f1']:.4f}")

if __name__ == '__main__': main()
