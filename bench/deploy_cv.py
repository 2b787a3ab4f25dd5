#!/usr/bin/env python
"""Which deployment variants keep macro-F1 within 0.01 of the fp32 model: decided by cross-validation on the training split.

bench/infer_latency.py ends with the fastest variant "within 0.01 macro-F1 of fp32". Read on the test split, that is
a choice made on test; read on the 60-row validation split, it is a coin toss: the paired bootstrap interval of a
variant's macro-F1 minus fp32's spans about +-0.1 there, ten times the margin it is asked to judge. This script
decides it on all 600 training and validation rows instead (the test split is never read):

1. K stratified folds of those rows (`specft.custom.cv_folds`, `fold_parts`: the folds `run_cv` uses). On each,
   the default recipe trains a teacher on the other folds (`fit_member`, as `run_cv` does);
2. every variant of bench/infer_latency.py is made from that teacher as `specft export` makes it: `bf16`, `int8`
   (torch dynamic), `onnx`, `onnx-int8` (block-wise), `onnx-int8-tensor` (one scale per matrix), and the students
   (4 and 5 of 6 layers kept, in bf16 and in fp32 `merged`; 3 kept, ONNX int8), distilled for 3 epochs with
   `distill_rows` on the fold's own training rows, never on the held-out ones;
3. every variant predicts the held-out fold; out of fold (all 600 rows), each variant's macro-F1 minus the fp32
   teacher's, with a paired bootstrap 95% interval, each fold's difference, and the share of labels equal to fp32's.

The choice: the variants whose out-of-fold macro-F1 is at least fp32's minus 0.01. Then, for each results file of
bench/infer_latency.py (`--speeds`; default: all of them), the fastest chosen variant by that file's texts per second
at batch 32, its ratio to the Hugging Face pipeline (`ratio_vs_hf_pipeline_cv_choice=`, round by round too) and its
test macro-F1 minus fp32's, read from the file (the test split is scored there, once). The choice holds for the recipe
cross-validated here: a file measured on a run of another recipe says so (`same_recipe`).

Another way of distilling, tried on its own: `--students-only K` makes fp32 and the K-layer students alone,
`--distill-alpha`/`--distill-epochs` set the distillation, `--augment N` adds N augmented copies of each training row
to the students' transfer set (`specft.augment`), and `--teachers DIR` keeps the fold teachers for the next such run.

Usage:
    python bench/deploy_cv.py             # 5 folds of the default recipe, 2 threads: about 40 min on 2 CPU cores
    python bench/deploy_cv.py --quick     # the tiny model, 2 folds: a smoke test (results printed, not written)
    python bench/deploy_cv.py --students-only 4 --distill-alpha 1 --distill-epochs 8 --teachers /tmp/teachers \
        --out bench/deploy_cv_results_k4_alpha1_8ep.json    # the teacher's soft labels alone, 8 epochs: about 35 min
    python bench/deploy_cv.py --respeed bench/deploy_cv_results_k4_alpha1_8ep.json   # its speed choices, from the
                                          # bench/infer_latency_results*.json files there now (seconds)
Writes bench/deploy_cv_results.json (or --out); `nbs/10_deploy.ipynb` reads both files.
"""
import argparse, copy, dataclasses, glob, json, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, torch

HERE = Path(__file__).parent
MARGIN = 0.01   # the issue's "within 0.01 macro-F1 of the full model"

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='the tiny model, 2 folds, 1 epoch of distillation: a smoke test')
    ap.add_argument('--folds', type=int, default=None, help='K (default 5; --quick: 2)')
    ap.add_argument('--seed', type=int, default=0, help='seeds the fold assignment and every training run')
    ap.add_argument('--distill-epochs', type=int, default=3, help="the students' epochs, as bench/infer_latency.py (default 3)")
    ap.add_argument('--distill-alpha', type=float, default=None, help="the students' weight of the teacher's soft labels (default: specft.deploy's)")
    ap.add_argument('--students-only', type=int, nargs='+', default=None, metavar='K',
                    help='fp32 and students keeping K layers only (bf16 and merged): a distillation setting tried on its own')
    ap.add_argument('--augment', type=int, default=0, metavar='N',
                    help="distil the students on the fold's training rows and N augmented copies of each (specft.augment)")
    ap.add_argument('--teachers', default=None, metavar='DIR',
                    help="keep each fold's teacher in DIR, and reuse one found there with the same recipe and rows")
    ap.add_argument('--respeed', default=None, metavar='FILE',
                    help="read this script's results FILE and redo only its speed choices, from the infer_latency files there now")
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--speeds', nargs='*', default=None, help='bench/infer_latency.py results files (default: bench/infer_latency_results*.json)')
    ap.add_argument('--out', default=None, help='results file (default: bench/deploy_cv_results.json; none with --quick)')
    return ap.parse_args(argv)

def deployed(model, fmt:str, teacher, src:Path, folder:Path, threads:int):
    "`model` written as `specft export --format fmt` writes it (beside the run's run.json and labels.json), loaded back"
    from specft.deploy import EXPORTERS, load_deployed
    folder.mkdir(parents=True)
    spec = {'format': fmt, **EXPORTERS[fmt](model.cpu().eval(), teacher.tok, teacher.labels, folder)}
    for f in ('run.json', 'labels.json'): shutil.copy2(src/f, folder/f)
    (folder/'deploy.json').write_text(json.dumps(spec))
    return load_deployed(folder, 'cpu', threads=threads)

def fold_variants(teacher_dir:Path, train, val, held, labels, cfg, distill:dict, threads:int, tmp:Path, students_only:list|None=None)->dict:
    "Probabilities of the held-out rows from every variant of the fold's teacher (the students distilled on `train`)"
    from specft.pipeline import Predictor
    from specft.deploy import plain_model, keep_layers, distill_rows, encoder_layers, quantize_onnx, load_deployed
    from specft.core import cpu_has_bf16
    teacher = Predictor.load(teacher_dir, 'cpu')
    texts, P = held['text'].tolist(), {}
    def add(name, pred):
        P[name] = pred.predict_prepared(texts); print(f'  {name}: done', flush=True)
    add('fp32', teacher)
    full = plain_model(copy.deepcopy(teacher.model), teacher_dir)
    L = len(encoder_layers(full)); half = max(1, L // 2)
    if not students_only:
        if cpu_has_bf16(): add('bf16', deployed(full, 'bf16', teacher, teacher_dir, tmp/'bf16', threads))
        add('int8', deployed(full, 'int8', teacher, teacher_dir, tmp/'int8', threads))
        add('onnx', deployed(full, 'onnx', teacher, teacher_dir, tmp/'onnx', threads))
        add('onnx-int8', deployed(full, 'onnx-int8', teacher, teacher_dir, tmp/'onnx-int8', threads))
        shutil.copytree(tmp/'onnx', tmp/'onnx-int8-tensor')   # the fp32 graph, quantised with one scale per matrix
        quantize_onnx(tmp/'onnx'/'model.onnx', tmp/'onnx-int8-tensor'/'model.onnx', scheme='tensor')
        add('onnx-int8-tensor', load_deployed(tmp/'onnx-int8-tensor', 'cpu', threads=threads))
    ks = students_only or [j for j in dict.fromkeys((L - 1, L - 2)) if j >= 1]
    for k, fmts in [*([] if students_only else [(half, ['onnx-int8'])]), *[(j, [*(['bf16'] if cpu_has_bf16() else []), 'merged']) for j in ks]]:
        student = keep_layers(copy.deepcopy(full), k)
        t0 = time.time()
        distill_rows(student, teacher, train, val, labels, cfg, device='cpu', **distill)
        print(f'  k{k} student distilled in {time.time() - t0:.0f} s', flush=True)
        for fmt in fmts: add(f'k{k}-distilled-{fmt}', deployed(student, fmt, teacher, teacher_dir, tmp/f'k{k}-{fmt}', threads))
    return P

def cv_variants(cfg, folds:int, distill:dict, threads:int, tmp:Path, students_only:list|None=None, teachers=None, augment:int=0):
    "Out-of-fold probabilities of every variant on the training split; also its labels (ids), folds, label names and the teachers' recipe"
    from specft.pipeline import prepare_data, check_config, resolved
    from specft.split import LabelMap
    from specft.custom import cv_pool, cv_folds, fold_parts, fit_member
    cfg = resolved(check_config(cfg))   # the per-method defaults filled in, as a run folder's run.json records them
    data = prepare_data(cfg)
    pool = cv_pool(data)
    labels, fold = LabelMap.from_labels(pool['label']), cv_folds(pool['label'], folds, cfg.seed)
    P, recipe = {}, None
    for k in range(1, folds + 1):
        train, val, held = fold_parts(pool, fold, k, cfg)
        t0 = time.time()
        print(f'fold {k} of {folds}: teacher on {len(train)} rows, {len(held)} held out', flush=True)
        tdir = Path(teachers or tmp)/f'fold-{k}'
        key = {'config': dataclasses.asdict(dataclasses.replace(cfg, out=None)), 'folds': folds, 'held_rows': held['row'].tolist()}
        if (tdir/'teacher_key.json').is_file() and json.loads((tdir/'teacher_key.json').read_text()) == key:
            print(f'  the teacher in {tdir} was trained on these rows with this recipe: kept', flush=True)
        else:
            if tdir.exists(): shutil.rmtree(tdir)
            fit_member(dataclasses.replace(cfg, out=None), data, train, val, held, labels, tdir,
                       note=f'fold {k} of a {folds}-fold cross-validation of the deployment variants')
            (tdir/'teacher_key.json').write_text(json.dumps(key))
        recipe = recipe or json.loads((tdir/'run.json').read_text())['config']
        if augment:   # the students' transfer set: the fold's training rows and `augment` copies of each (never the held-out rows)
            from specft.augment import augment_frame, DRUG_REVIEW_THESAURUS
            train = augment_frame(train, augment, DRUG_REVIEW_THESAURUS, seed=cfg.seed)[0]
        Pk = fold_variants(tdir, train, val, held, labels, cfg, distill, threads, tmp/f'fold-{k}-variants', students_only)
        for name, p in Pk.items(): P.setdefault(name, np.zeros((len(pool), len(labels.names))))[fold == k] = p
        print(f'fold {k} done in {time.time() - t0:.0f} s', flush=True)
    return P, np.array(labels.encode(pool['label'])), fold, labels.names, recipe

def scores(P:dict, y, fold, labels)->list:
    "Per variant: out-of-fold macro-F1, its difference from fp32's (paired bootstrap 95% interval, each fold's), agreement"
    from specft.evaluate import compute_metrics, paired_bootstrap
    ref = P['fp32'].argmax(-1)
    f1 = lambda yy, pp: compute_metrics(list(yy), pp.tolist(), labels)['macro_f1']
    base = f1(y, ref)
    rows = []
    for name, p in P.items():
        lab = p.argmax(-1); score = f1(y, lab)
        b = paired_bootstrap(y, lab, ref, len(labels))
        rows.append({'variant': name, 'oof_macro_f1': round(score, 4), 'f1_diff': round(score - base, 4),
                     'f1_diff_95': [round(b['lo'], 3), round(b['hi'], 3)],
                     'f1_diff_per_fold': [round(f1(y[fold == k], lab[fold == k]) - f1(y[fold == k], ref[fold == k]), 4) for k in np.unique(fold)],
                     'agreement_vs_fp32': round(float((lab == ref).mean()), 4), 'within': bool(score >= base - MARGIN)})
        print(' '.join(f'{k}={v}' for k, v in rows[-1].items()), flush=True)
    return rows

RECIPE_KEYS = ('model', 'pooling', 'epochs', 'lr', 'batch_size', 'max_len', 'class_weights', 'logit_adjust', 'weight_decay',
               'warmup_frac', 'method', 'precision', 'select_metric', 'task', 'data')

def speed_choice(path:str, rows:list, recipe:dict, distill:dict, augment:int=0)->dict:
    """The fastest variant the cross-validation keeps, by the texts/s of one bench/infer_latency.py results file, and its ratio.
    A student's speed there is its shape's; its test score is this student's only if the file's students were distilled alike"""
    d = json.loads(Path(path).read_text())
    theirs = d.get('students_distilled', {'epochs': 3, 'alpha': 0.5})   # the files written before the script recorded it
    same_students = not augment and (theirs['epochs'], theirs['alpha']) == (distill['epochs'], distill['alpha'])
    kept = {r['variant'] for r in rows if r['within']}
    measured = {r['variant']: r for r in d['rows']}
    hf, fp32 = measured['hf_pipeline'], measured['fp32']
    best = max((r for n, r in measured.items() if n in kept), key=lambda r: r['texts_per_s_b32'])
    secs = d.get('seconds_per_round', {})
    differ = sorted(k for k in RECIPE_KEYS if k in recipe and d['run_config'].get(k) != recipe[k])
    return {'file': str(Path(path).relative_to(HERE.parent)) if Path(path).resolve().is_relative_to(HERE.parent.resolve()) else path,
            'cpu_capability': d.get('cpu_capability'), 'seed': d['run_config'].get('seed'),
            'same_recipe': not differ, 'recipe_differs_in': differ,
            'not_measured': sorted(kept - set(measured)), 'chosen': best['variant'],
            'ratio_vs_hf_pipeline_cv_choice': round(best['texts_per_s_b32'] / hf['texts_per_s_b32'], 2),
            'ratio_round_by_round': [round(h / v, 2) for h, v in zip(secs.get('hf_pipeline', []), secs.get(best['variant'], []))],
            **({'test_f1_diff': round(best['macro_f1'] - fp32['macro_f1'], 4), 'test_agreement_vs_fp32': best.get('agreement_vs_fp32')}
               if same_students or 'distilled' not in best['variant'] else
               {'test_f1_diff': None, 'test_note': "the file's student was distilled with other settings: its test score is another model's"}),
            'file_val_choice': d.get('fastest_within_0.01_val_f1'), 'file_ratio_val_choice': d.get('ratio_vs_hf_pipeline_val_choice')}

def respeed(path:str, files=None)->dict:
    "The speed choices of a results file of this script, redone from the bench/infer_latency.py results files there now"
    d = json.loads(Path(path).read_text())
    files = files if files is not None else sorted(glob.glob(str(HERE/'infer_latency_results*.json')))
    d['speeds'] = [speed_choice(f, d['rows'], d['recipe'], d['distill'], d.get('augment', 0)) for f in files]
    Path(path).write_text(json.dumps(d, indent=1) + '\n')
    for s in d['speeds']: print(json.dumps(s))
    return d

def main(argv=None):
    a = parse(argv)
    if a.respeed: return respeed(a.respeed, a.speeds)
    torch.set_num_threads(a.threads)
    from specft.pipeline import RunConfig
    from specft.core import cpu_has_bf16, device_name
    from specft.deploy import DISTILL_ALPHA, DISTILL_T
    folds = a.folds or (2 if a.quick else 5)
    distill = dict(epochs=1 if a.quick else a.distill_epochs, alpha=DISTILL_ALPHA if a.distill_alpha is None else a.distill_alpha, T=DISTILL_T)
    cfg = (RunConfig(model='tiny', epochs=2, max_len=48, max_train_rows=90, seed=a.seed) if a.quick
           else RunConfig(model='minilm', seed=a.seed))
    tmp, t0 = Path(tempfile.mkdtemp(prefix='deploy-cv-')), time.time()
    P, y, fold, labels, recipe = cv_variants(cfg, folds, distill, a.threads, tmp, a.students_only, a.teachers, a.augment)
    rows = scores(P, y, fold, labels)
    files = a.speeds if a.speeds is not None else sorted(glob.glob(str(HERE/'infer_latency_results*.json')))
    speeds = [speed_choice(f, rows, recipe, distill, a.augment) for f in files]   # --quick too: it reads the files only
    result = {'command': ' '.join(['python bench/deploy_cv.py', *(argv if argv is not None else sys.argv[1:])]),
              'device': device_name(), 'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'cpu_has_bf16': cpu_has_bf16(),
              'threads': a.threads, 'folds': folds, 'seed': a.seed, 'n_rows': len(y), 'distill': distill, 'augment': a.augment,
              'recipe': recipe, 'margin': MARGIN, 'rows': rows, 'kept': [r['variant'] for r in rows if r['within']],
              'speeds': speeds, 'minutes': round((time.time() - t0) / 60, 1)}
    out = a.out or (None if a.quick else str(HERE/'deploy_cv_results.json'))
    if out: Path(out).write_text(json.dumps(result, indent=1) + '\n')
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"within {MARGIN} macro-F1 of fp32, out of fold on {len(y)} rows: {result['kept']}")
    for s in speeds:
        print(f"{s['file']} ({s['cpu_capability']}, seed {s['seed']}, same recipe: {s['same_recipe']}): fastest kept {s['chosen']}, "
              f"test macro-F1 minus fp32's {s['test_f1_diff']}; ratio_vs_hf_pipeline_cv_choice={s['ratio_vs_hf_pipeline_cv_choice']:.2f} "
              f"(round by round: {s['ratio_round_by_round']})")
    return result

if __name__ == '__main__':
    main()
