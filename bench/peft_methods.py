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

`--reuse FILE` takes each run of FILE whose settings (method, seed, lr, epochs, LoRA's dropout, the backbone's dropout where the
method's default sets one, and the --quick settings) equal a job's
instead of training it again: the sweep's runs at the chosen learning rates are the benchmark's runs for those seeds.
`--fresh METHOD ...` reruns those methods' runs anyway (their timing in FILE was taken on a loaded machine).
Reused rows keep the timing conditions they were measured under (`workers` in each row); compare seconds per epoch
only between rows measured with the same number of workers.

`--interleave` times the methods side by side: the runs of one seed start together, each its own process, and take
turns epoch by epoch (one computes with every core, the others wait), so a slow spell of the machine falls on all of
them alike. Each run is still the whole `specft train` run, so every other measure is the same as without it.

    python bench/peft_methods.py --methods full lora --interleave --out bench/peft_interleaved_results.json
"""
from __future__ import annotations
import argparse, json, multiprocessing as mp, os, resource, statistics, sys, tempfile, time
from pathlib import Path

def measure_run(job:dict, turn=None)->dict:
    "Train one run in this (fresh) process and measure it; `turn` = (go, queue, i): wait for `go` before starting and after each epoch"
    if turn is not None: turn[0].wait(); turn[0].clear()
    import torch
    from specft.pipeline import RunConfig, run
    from specft.train import Callback
    from specft.core import choose_precision
    torch.set_num_threads(job.pop('threads'))
    class Meter(Callback):
        "Each epoch's (start, end) on the wall clock, and the optimizer state's size at the first checkpoint"
        def __init__(self): self.t, self.spans, self.opt_bytes = None, [], None
        def on_train_begin(self, s): self.t = time.time()
        def on_epoch_end(self, s):
            self.spans.append((self.t, time.time()))
            if turn is not None:   # the next run's turn; this one waits for its own
                go, queue, i = turn; queue.put((i, None)); go.wait(); go.clear()
            self.t = time.time()
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
    c = info['config']
    return dict(job['config'], precision=choose_precision(c['precision'], c['device']), interleaved=turn is not None,
                test_accuracy=r.metrics['accuracy'], test_macro_f1=r.metrics['macro_f1'],
                baseline_accuracy=r.baseline['accuracy'], baseline_macro_f1=r.baseline['macro_f1'],
                val_macro_f1=r.state.metrics.get('macro_f1'), val_accuracy=r.state.metrics.get('accuracy'),
                trainable=p['trainable'], total=p['total'], trainable_pct=100 * p['trainable'] / p['total'],
                sec_per_epoch=statistics.median(e := [b - a for a, b in m.spans]), epoch_seconds=e, epoch_spans=m.spans,
                peak_memory_bytes=peak, peak_memory_kind='cuda_max_allocated' if cuda else 'rss',
                optimizer_state_bytes=m.opt_bytes, weights_bytes=weights, folder_bytes=folder)

def _turns(queue, i, job):
    "`measure_run` of `job` taking turns: its result (or the error that stopped it) goes on `queue`"
    try: queue.put((i, measure_run(job, (job.pop('go'), queue, i))))
    except BaseException as e: queue.put((i, e)); raise

def interleaved(jobs:list[dict]):
    "Run `jobs` at once, one process each, taking turns epoch by epoch (one computes, the others wait); yield their results"
    ctx = mp.get_context('spawn'); queue = ctx.Queue()
    gos = [ctx.Event() for _ in jobs]
    procs = [ctx.Process(target=_turns, args=(queue, i, dict(j, go=g))) for i, (j, g) in enumerate(zip(jobs, gos))]
    for pr in procs: pr.start()
    live = list(range(len(jobs)))
    while live:
        for i in list(live):   # a round: every unfinished run trains one epoch (the first turn also sets the run up)
            gos[i].set()
            j, r = queue.get()
            assert j == i, f'run {j} reported during the turn of run {i}'
            if isinstance(r, BaseException):
                for pr in procs: pr.terminate()
                raise RuntimeError(f"run {jobs[i]['config']} failed: {r!r}") from r
            if r is not None: live.remove(i); procs[i].join(); yield r   # finished: its test scoring was done in its turn

def overlapping(rows:list[dict])->list[tuple]:
    "Pairs of epochs (method, seed, epoch) of different runs of one seed whose wall-clock spans overlap: none when they took turns"
    spans = sorted((a, b, (r['method'], r['seed'], e + 1)) for r in rows for e, (a, b) in enumerate(r['epoch_spans']))
    return [(x[2], y[2]) for x, y in zip(spans, spans[1:]) if y[0] < x[1] and x[2][1] == y[2][1] and x[2][0] != y[2][0]]

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
    p.add_argument('--seeds', nargs='+', type=int, default=None, help='default 0 1 2 (0 with --quick)')
    p.add_argument('--quick', action='store_true', help="the tiny model, 1 epoch (2 with --interleave), 48 training rows, seed 0: checks the script")
    p.add_argument('--lr-sweep', action='store_true', help='pick each PEFT method\'s lr on the validation split')
    p.add_argument('--workers', type=int, default=1, help='runs at a time (each its own process); timing is clean at 1')
    p.add_argument('--interleave', action='store_true', help="each seed's runs at once, taking turns epoch by epoch: epochs timed side by side")
    p.add_argument('--reuse', nargs='+', default=[], metavar='FILE', help='results files whose runs with the same settings are not rerun')
    p.add_argument('--fresh', nargs='+', default=[], metavar='METHOD', help='methods whose runs are never reused (e.g. timed on a loaded machine)')
    p.add_argument('--out', default=None, help='results file (default bench/peft_results.json, or _lr_sweep; --quick: a temporary file)')
    a = p.parse_args(argv)
    workers = 1 if a.interleave else a.workers   # runs computing at once
    from specft.pipeline import RunConfig, resolved
    base = dict(model='tiny', epochs=2 if a.interleave else 1, max_train_rows=48, max_len=64) if a.quick else {}
    jobs = []
    for s in a.seeds or ([0] if a.quick else [0, 1, 2]):   # seed by seed, every method in turn: a slow spell of the machine hits them all alike
        for meth in a.methods:
            for lr in (SWEEP.get(meth, ()) if a.lr_sweep else (None,)):
                cfg = dict(base, method=meth, seed=s)
                r = resolved(RunConfig(**cfg))   # the method's defaults, written into the job so that --reuse compares them
                cfg.update(lr=lr if lr is not None else r.lr, epochs=r.epochs, **({'lora_dropout': r.lora_dropout} if meth in LORA_FAMILY else {}),
                           **({'model_dropout': r.model_dropout} if r.model_dropout is not None else {}))   # None: the backbone's own
                jobs.append(dict(config=cfg, threads=max(1, (os.cpu_count() or 1) // workers)))
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
    def results():
        if a.interleave:   # one seed at a time, its runs taking turns
            for s in dict.fromkeys(j['config']['seed'] for j in jobs): yield from interleaved([j for j in jobs if j['config']['seed'] == s])
            return
        with mp.get_context('spawn').Pool(max(1, min(a.workers, len(jobs))), maxtasksperchild=1) as pool: yield from pool.imap(measure_run, jobs)
    for r in results():
        r['workers'] = workers
        rows.append(r)
        print(f"{r['method']:8s} lr {r['lr']:.0e} seed {r['seed']}: test macro-F1 {r['test_macro_f1']:.3f} (baseline "
              f"{r['baseline_macro_f1']:.3f}), val macro-F1 {r['val_macro_f1']:.3f}, {r['trainable_pct']:.2f}% trainable, "
              f"{r['sec_per_epoch']:.1f} s/epoch", flush=True)
    if a.interleave and (clash := overlapping([r for r in rows if r.get('interleaved')])):
        raise RuntimeError(f'--interleave: epochs of different runs overlapped in time: {clash[:3]}')
    import torch, transformers
    from specft.core import device_name
    res = dict(command='python bench/peft_methods.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
               device=device_name(), torch=torch.__version__, transformers=transformers.__version__, workers=workers, interleaved=a.interleave,
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
