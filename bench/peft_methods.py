"""Parameter-efficient fine-tuning benchmark: every method of `specft train --method` with its defaults on the bundled
drug reviews (rating task), seeds 0 1 2, each run paired with the TF-IDF baseline trained on the same rows.

Per run: test accuracy and macro-F1 (and the baseline's), trainable parameters (count and % of the model), seconds
per epoch, peak memory (RSS on the CPU, `torch.cuda.max_memory_allocated` on a GPU), the optimizer state's size (the
first checkpoint's optimizer.pt) and the weights the run folder keeps (peft.safetensors, or model.safetensors for
full and head-only runs). Every run is a fresh
process, so peak memory is its own. `--lr-sweep` instead picks each PEFT method's learning rate on the VALIDATION
split (macro-F1 of the kept epoch, mean over the seeds given), never on the test split.

    python bench/peft_methods.py                      # MiniLM, all methods, seeds 0 1 2 -> bench/peft_results.json
    python bench/peft_methods.py --quick              # the tiny random model, 1 epoch, few rows: a smoke test of the script
    python bench/peft_methods.py --lr-sweep --methods lora --seeds 0 --out bench/peft_lr_sweep.json
    python bench/peft_methods.py --reuse bench/peft_results_lr_sweep.json   # runs the sweep already made are not rerun

Runs go seed by seed, every method in turn, so that a slow spell of this shared machine hits all methods alike.

`--reuse FILE` takes each run of FILE whose settings (method, seed, lr, epochs, LoRA's dropout, and the --quick settings) equal a job's
instead of training it again: the sweep's runs at the chosen learning rates are the benchmark's runs for those seeds.
`--fresh METHOD ...` reruns those methods' runs anyway (their timing in FILE was taken on a loaded machine).
Reused rows keep the timing conditions they were measured under (`workers` in each row); compare seconds per epoch
only between rows measured with the same number of workers.
"""
from __future__ import annotations
import argparse, json, multiprocessing as mp, os, platform, resource, statistics, sys, tempfile, time
from pathlib import Path

def measure_run(job:dict)->dict:
    "Train one run in this (fresh) process and measure it"
    import torch
    from specft.pipeline import RunConfig, run
    from specft.train import Callback
    torch.set_num_threads(job.pop('threads'))
    class Meter(Callback):
        "Seconds per epoch, and the optimizer state's size at the first checkpoint"
        def __init__(self): self.t, self.epochs, self.opt_bytes = None, [], None
        def on_train_begin(self, s): self.t = time.perf_counter()
        def on_epoch_end(self, s):
            now = time.perf_counter(); self.epochs.append(now - self.t); self.t = now
        def on_checkpoint(self, s, path):
            if self.opt_bytes is None: self.opt_bytes = (Path(path)/'optimizer.pt').stat().st_size
    m = Meter()
    cuda = torch.cuda.is_available()
    if cuda: torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as d:
        r = run(RunConfig(out=f'{d}/run', **job['config']), callbacks=[m])
        info = json.loads((r.run_dir/'run.json').read_text())
        kept = r.run_dir/'peft.safetensors'   # a PEFT run keeps its method's weights and the head; the others, the model
        weights = (kept if kept.is_file() else r.run_dir/'model.safetensors').stat().st_size
        folder = sum(p.stat().st_size for p in r.run_dir.rglob('*') if p.is_file())
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    p = info['params']
    return dict(job['config'], test_accuracy=r.metrics['accuracy'], test_macro_f1=r.metrics['macro_f1'],
                baseline_accuracy=r.baseline['accuracy'], baseline_macro_f1=r.baseline['macro_f1'],
                val_macro_f1=r.state.metrics.get('macro_f1'), val_accuracy=r.state.metrics.get('accuracy'),
                trainable=p['trainable'], total=p['total'], trainable_pct=100 * p['trainable'] / p['total'],
                sec_per_epoch=statistics.median(m.epochs), epoch_seconds=m.epochs,
                peak_memory_bytes=peak, peak_memory_kind='cuda_max_allocated' if cuda else 'rss',
                optimizer_state_bytes=m.opt_bytes, weights_bytes=weights, folder_bytes=folder)

def _summary(rows:list[dict], methods)->dict:
    "Mean and sd over seeds of each method's measures"
    out = {}
    for meth in methods:
        rs = [r for r in rows if r['method'] == meth]
        if not rs: continue
        agg = lambda k: dict(mean=statistics.fmean(r[k] for r in rs), sd=statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0)
        out[meth] = {k: agg(k) for k in ('test_accuracy', 'test_macro_f1', 'baseline_accuracy', 'baseline_macro_f1',
                                         'sec_per_epoch', 'peak_memory_bytes')}
        out[meth].update(lr=rs[0]['lr'], trainable=rs[0]['trainable'], trainable_pct=rs[0]['trainable_pct'],
                         optimizer_state_bytes=rs[0]['optimizer_state_bytes'], weights_bytes=rs[0]['weights_bytes'],
                         folder_bytes=rs[0]['folder_bytes'], seeds=[r['seed'] for r in rs],
                         gap_to_baseline_macro_f1=statistics.fmean(r['test_macro_f1'] - r['baseline_macro_f1'] for r in rs))
    return out

# what runs recorded before their rows held these settings used: every method 5 epochs, LoRA and AdaLoRA dropout 0.1
BEFORE = {'epochs': 5, 'lora_dropout': 0.1}
LORA_FAMILY = ('lora', 'adalora')   # the methods with a dropout on their branch
SWEEP = {'lora': (3e-4, 1e-3, 3e-3), 'adalora': (3e-4, 1e-3, 3e-3), 'adapter': (3e-4, 1e-3, 3e-3), 'prefix': (3e-3, 1e-2, 3e-2)}

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--methods', nargs='+', default=['full', 'head', 'lora', 'adalora', 'adapter', 'prefix'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--quick', action='store_true', help="the tiny model, 1 epoch, 48 training rows: checks the script")
    p.add_argument('--lr-sweep', action='store_true', help='pick each PEFT method\'s lr on the validation split')
    p.add_argument('--workers', type=int, default=1, help='runs at a time (each its own process); timing is clean at 1')
    p.add_argument('--reuse', nargs='+', default=[], metavar='FILE', help='results files whose runs with the same settings are not rerun')
    p.add_argument('--fresh', nargs='+', default=[], metavar='METHOD', help='methods whose runs are never reused (e.g. timed on a loaded machine)')
    p.add_argument('--out', default=None, help='results file (default bench/peft_results.json, or _lr_sweep; --quick: a temporary file)')
    a = p.parse_args(argv)
    from specft.pipeline import RunConfig, resolved
    base = dict(model='tiny', epochs=1, max_train_rows=48, max_len=64) if a.quick else {}
    jobs = []
    for s in a.seeds:   # seed by seed, every method in turn: a slow spell of the machine hits them all alike
        for meth in a.methods:
            for lr in (SWEEP.get(meth, ()) if a.lr_sweep else (None,)):
                cfg = dict(base, method=meth, seed=s)
                r = resolved(RunConfig(**cfg))   # the method's defaults, written into the job so that --reuse compares them
                cfg.update(lr=lr if lr is not None else r.lr, epochs=r.epochs, **({'lora_dropout': r.lora_dropout} if meth in LORA_FAMILY else {}))
                jobs.append(dict(config=cfg, threads=max(1, (os.cpu_count() or 1) // a.workers)))
    default = (Path(tempfile.mkdtemp(prefix='peft-quick-'))/'peft_results_quick.json' if a.quick   # never over committed results
               else Path(__file__).parent/f"peft_results{'_lr_sweep' if a.lr_sweep else ''}.json")
    out = Path(a.out) if a.out else default
    done = []
    before = lambda r: {k: v for k, v in BEFORE.items() if k == 'epochs' or r['method'] in LORA_FAMILY}
    for f in a.reuse:
        saved = json.loads(Path(f).read_text())
        done += [{**before(r), **r, 'workers': r.get('workers', saved['workers']), 'reused_from': str(f)} for r in saved['runs'] if r['method'] not in a.fresh]
    found = [next((r for r in done if all(r.get(k) == v for k, v in j['config'].items())), None) for j in jobs]
    rows = [r for r in found if r is not None]
    jobs = [j for j, r in zip(jobs, found) if r is None]
    for r in rows: print(f"{r['method']:8s} lr {r['lr']:.0e} seed {r['seed']}: taken from {r['reused_from']}", flush=True)
    t0 = time.time()
    with mp.get_context('spawn').Pool(max(1, min(a.workers, len(jobs))), maxtasksperchild=1) as pool:
        for r in pool.imap(measure_run, jobs):
            r['workers'] = a.workers
            rows.append(r)
            print(f"{r['method']:8s} lr {r['lr']:.0e} seed {r['seed']}: test macro-F1 {r['test_macro_f1']:.3f} (baseline "
                  f"{r['baseline_macro_f1']:.3f}), val macro-F1 {r['val_macro_f1']:.3f}, {r['trainable_pct']:.2f}% trainable, "
                  f"{r['sec_per_epoch']:.1f} s/epoch", flush=True)
    import torch, transformers
    res = dict(command='python bench/peft_methods.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
               device=torch.cuda.get_device_name() if torch.cuda.is_available() else f'cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})',
               torch=torch.__version__, transformers=transformers.__version__, workers=a.workers,
               minutes=round((time.time() - t0) / 60, 1), runs=rows)
    if a.lr_sweep:
        val = {}
        for r in rows: val.setdefault(r['method'], {}).setdefault(r['lr'], []).append(r['val_macro_f1'])
        res['val_macro_f1'] = {m: {str(lr): statistics.fmean(v) for lr, v in d.items()} for m, d in val.items()}
        res['chosen_lr'] = {m: max(d, key=lambda lr: statistics.fmean(d[lr])) for m, d in val.items()}
        print('chosen on validation macro-F1:', res['chosen_lr'])
    else:
        rows.sort(key=lambda r: (a.methods.index(r['method']), r['seed']))   # res['runs'] is this list
        res['summary'] = _summary(rows, a.methods)
    out.write_text(json.dumps(res, indent=1))
    print(f'wrote {out}')

if __name__ == '__main__': main()
