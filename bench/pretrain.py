"""Task-adaptive pretraining (Gururangan et al. 2020) on the bundled drug reviews, paired against no pretraining.

1. The MLM stage: `specft.pretrain.pretrain` of MiniLM on the texts of the shipped TRAINING split only (its own
   `val_frac` held out), once per learning rate in --lrs for --mlm-epochs epochs; the (lr, epoch) with the lowest
   held-out MLM loss is chosen (a run is redone with fewer epochs when its best epoch is not its last). Never test.
2. Fine-tuning: for each seed, `specft.pipeline.run` with today's default recipe twice, from the bundled MiniLM and
   from the adapted backbone: same seed, same split, same settings except `model`. Test accuracy and macro-F1 per
   seed, the paired differences, their mean and a 95 % t-interval.

    python bench/pretrain.py            # the full run (writes bench/pretrain_results.json)
    python bench/pretrain.py --quick    # seconds: tiny model, few texts and rows; writes to a temporary file
"""
import argparse, dataclasses, json, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from specft.pretrain import PretrainConfig, pretrain
from specft.pipeline import RunConfig, run

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}   # Student t quantiles for the 95 % interval

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='tiny model, a few texts and rows: a smoke test in seconds')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--lrs', type=float, nargs='+', default=[1e-4, 3e-4], help='MLM learning rates compared on held-out MLM loss')
    ap.add_argument('--mlm-epochs', type=int, default=3)
    ap.add_argument('--mlm-max-len', type=int, default=128)
    ap.add_argument('--ft-max-len', type=int, default=128, help="fine-tuning --max-len (the default recipe's is 320; reduced to fit the time budget)")
    ap.add_argument('--ft-epochs', type=int, default=3, help="fine-tuning --epochs (the default recipe's is 5; reduced to fit the time budget)")
    ap.add_argument('--backbone', help="skip the MLM stage: fine-tune from this folder written by specft pretrain (its pretrain.json says how it was made)")
    ap.add_argument('--out', help='results file (default: bench/pretrain_results.json; with --quick a temporary file)')
    a = ap.parse_args()
    model = 'tiny' if a.quick else 'minilm'
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp())/'pretrain_results.json' if a.quick
                                     else Path(__file__).resolve().parent/'pretrain_results.json')
    work = Path(tempfile.mkdtemp(prefix='bench-pretrain-'))
    mlm_extra = dict(max_texts=60, batch_size=8, max_len=32) if a.quick else dict(max_len=a.mlm_max_len)
    ft_extra = dict(max_train_rows=30, epochs=1, max_len=32) if a.quick else dict(max_len=a.ft_max_len, epochs=a.ft_epochs)
    seeds = a.seeds[:1] if a.quick else a.seeds
    res = {'command': 'python bench/pretrain.py ' + ' '.join(sys.argv[1:]), 'device': platform.processor() or platform.machine(),
           'torch': torch.__version__, 'threads': torch.get_num_threads(), 'model': model,
           'reduced': ((f"to fit the time on 2 CPU cores shared with three other benchmarks: fine-tuning uses --max-len "
                        f"{a.ft_max_len} and --epochs {a.ft_epochs} instead of the default 320 and 5 (both arms alike; everything "
                        "else is today's default recipe)") if (a.ft_max_len, a.ft_epochs) != (320, 5) else
                       "fine-tuning: today's default recipe, unchanged")
                      + f", and the MLM stage compares {len(a.lrs)} learning rates for {a.mlm_epochs} epochs at --max-len "
                        f"{a.mlm_max_len} (Gururangan et al. ran TAPT for 100 epochs)",
           'mlm_sweep': [], 'per_seed': []}
    save = lambda: out.write_text(json.dumps(res, indent=2))
    t0 = time.time()
    # 1. the MLM stage, chosen on the held-out MLM loss of the training split's own held-out texts
    for lr in ([] if a.backbone else a.lrs):
        r = pretrain(PretrainConfig(data='drug-reviews', model=model, out=str(work/f'tapt-{lr:g}'), epochs=a.mlm_epochs, lr=lr, **mlm_extra))
        res['mlm_sweep'].append({'lr': lr, 'epochs': a.mlm_epochs, 'heldout_loss': r.heldout_loss, 'seconds': r.record['seconds'],
                                 'texts': r.record['texts'], 'out': str(r.out)})
        save()
    if a.backbone:
        backbone = Path(a.backbone); made = json.loads((backbone/'pretrain.json').read_text())
        best = {'lr': made['config']['lr'], 'epochs': made['config']['epochs'], 'out': str(backbone)}
        res['mlm_sweep'] = [{'lr': best['lr'], 'epochs': best['epochs'], 'heldout_loss': made['heldout_loss'],
                             'seconds': made['seconds'], 'texts': made['texts'], 'out': str(backbone)}]
        res['reduced'] = res['reduced'].split(', and the MLM stage')[0] + f"; the MLM stage is the folder {backbone}"
    best = min(res['mlm_sweep'], key=lambda s: min(s['heldout_loss'][1:]))
    lr, epochs = best['lr'], int(np.argmin(best['heldout_loss'][1:])) + 1
    backbone = Path(best['out'])
    if epochs < best['epochs']:   # the held-out loss rose at the end: redo with the best number of epochs
        backbone = pretrain(PretrainConfig(data='drug-reviews', model=model, out=str(work/'tapt-best'), epochs=epochs, lr=lr, **mlm_extra)).out
    chosen = json.loads((backbone/'pretrain.json').read_text())
    res['chosen'] = {'lr': lr, 'epochs': epochs, 'mlm_heldout_before': chosen['heldout_loss'][0],
                     'mlm_heldout_after': chosen['heldout_loss'][-1], 'data': chosen['data'], 'texts': chosen['texts']}
    save()
    # 2. fine-tuning, paired by seed: the same RunConfig except `model`
    for seed in seeds:
        row = {'seed': seed}
        for arm, m in (('bundled', model), ('tapt', str(backbone))):
            t = time.time()
            cfg = RunConfig(model=m, seed=seed, out=str(work/f'ft-{arm}-{seed}'), **ft_extra)
            r = run(cfg)
            row.update({f'accuracy_{arm}': r.metrics['accuracy'], f'macro_f1_{arm}': r.metrics['macro_f1'],
                        f'seconds_{arm}': round(time.time() - t, 1)})
            row['baseline_macro_f1'] = r.baseline['macro_f1']
        res['per_seed'].append(row)
        res['finetune_config'] = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ('model', 'seed', 'out')}
        save()
    summary = {}
    for metric in ('accuracy', 'macro_f1'):
        b = np.array([r[f'{metric}_bundled'] for r in res['per_seed']]); t = np.array([r[f'{metric}_tapt'] for r in res['per_seed']])
        d = t - b; n = len(d)
        half = T_975.get(n - 1, 1.96) * d.std(ddof=1) / np.sqrt(n) if n > 1 else float('nan')
        summary[metric] = {'bundled_mean': b.mean(), 'tapt_mean': t.mean(), 'mean_difference': d.mean(),
                           'ci95_low': d.mean() - half, 'ci95_high': d.mean() + half, 'per_seed_difference': d.tolist()}
    res['summary'] = summary
    res['seconds_total'] = round(time.time() - t0, 1)
    save()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2)); print(f"results: {out}")

if __name__ == '__main__': main()
