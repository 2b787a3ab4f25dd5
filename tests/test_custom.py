"specft.custom: cross-validation never reads the test split, out-of-fold scores are scikit-learn's, ensembles average their members."
import contextlib, dataclasses, io, json
from types import SimpleNamespace
import numpy as np, pandas as pd, pytest, torch
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score
from specft.core import SpecftConfigError, SpecftModelError
from specft.cli import main
from specft.custom import EnsemblePredictor, KeepEpochs, check_folds, cv_folds, run_averaged, run_cv, run_ensemble
from specft.pipeline import Predictor, RunConfig, prepare_data, run
from specft.train import Callback

TINY = dict(model='tiny', epochs=2, max_len=32, device='cpu', batch_size=16)
CUES = {'good': 'excellent', 'bad': 'awful', 'meh': 'okay'}

def frame(n:int, seed:int, cue=True)->pd.DataFrame:
    "n reviews of random words, a third of each label; with `cue`, each holds its label's cue word"
    rng = np.random.default_rng(seed)
    labels = [list(CUES)[i % 3] for i in range(n)]
    words = [f'w{i}' for i in range(400)]
    return pd.DataFrame({'text': [' '.join([*rng.choice(words, 10), CUES[l] if cue else 'zz']) for l in labels], 'label': labels})

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A training file, its test file, and a poisoned test file (other texts, labels shuffled)"
    d = tmp_path_factory.mktemp('data')
    frame(90, 0).to_csv(d/'train.csv', index=False); frame(30, 1).to_csv(d/'test.csv', index=False)
    bad = frame(30, 2, cue=False); bad['label'] = bad['label'].sample(frac=1, random_state=0).tolist()
    bad.to_csv(d/'poisoned.csv', index=False)
    return d

@pytest.fixture(scope='module')
def cv(files, tmp_path_factory):
    out = tmp_path_factory.mktemp('cv')/'cv'
    return run_cv(RunConfig(**TINY, data=str(files/'train.csv'), test_data=str(files/'test.csv'), out=str(out)), folds=3)

def call(*argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e): code = main(list(argv))
    return code, o.getvalue(), e.getvalue()

def test_folds_are_stratified_disjoint_and_cover_every_row_once():
    from sklearn.model_selection import StratifiedKFold
    rng = np.random.default_rng(0)
    for seed in range(5):
        y = rng.choice(['a', 'b', 'c'], size=60, p=[0.6, 0.3, 0.1]).tolist() + ['c'] * 4
        K = int(min(pd.Series(y).value_counts().min(), 5))
        f = cv_folds(y, K, seed)
        assert sorted(set(f)) == list(range(1, K + 1)) and len(f) == len(y)   # one fold per row: disjoint, covering
        for label, n in pd.Series(y).value_counts().items():
            per_fold = pd.Series(f[np.array(y) == label]).value_counts().reindex(range(1, K + 1), fill_value=0)
            assert per_fold.min() >= n // K and per_fold.max() <= -(-n // K), (label, per_fold.tolist())
        ref = StratifiedKFold(K, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        assert all(sorted(np.flatnonzero(f == k + 1)) == sorted(held) for k, (_, held) in enumerate(ref))

def test_bad_fold_counts_are_clear_errors():
    for bad in (1, 0, 2.5, True):
        with pytest.raises(SpecftConfigError, match='at least 2'): check_folds(['a', 'b'] * 5, bad)
    with pytest.raises(SpecftConfigError, match="label 'b' has training rows \\(2\\).*--folds 2 or fewer"):
        check_folds(['a'] * 10 + ['b'] * 2, 3)

def test_cv_covers_the_training_split_once_and_scores_as_sklearn(cv, files):
    oof = pd.read_csv(cv.cv_dir/'oof.csv')
    data = prepare_data(RunConfig(**TINY, data=str(files/'train.csv'), test_data=str(files/'test.csv')))
    assert sorted(oof.row) == sorted([*data.train.row, *data.val.row]) and oof.row.is_unique
    saved = json.loads((cv.cv_dir/'cv.json').read_text())
    assert saved['folds'] == 3 and saved['n_rows'] == len(oof)
    assert saved['scores']['macro_f1'] == pytest.approx(f1_score(oof.label, oof.predicted, average='macro'))
    assert saved['scores']['accuracy'] == pytest.approx(accuracy_score(oof.label, oof.predicted))
    assert saved['baseline']['macro_f1'] == pytest.approx(f1_score(oof.label, oof.baseline, average='macro'))
    assert saved['baseline']['accuracy'] == pytest.approx(accuracy_score(oof.label, oof.baseline))
    P = oof[[f'p_{l}' for l in saved['labels']]].to_numpy()
    assert np.allclose(P.sum(1), 1, atol=1e-5) and (np.array(saved['labels'])[P.argmax(1)] == oof.predicted).all()
    for k in (1, 2, 3):   # each member trained on the other folds' rows and scored its own held-out rows
        m = json.loads((cv.cv_dir/f'fold-{k}'/'metrics.json').read_text())
        held = oof[oof.fold == k]
        assert m['n_test'] == len(held) and m['n_train'] == len(oof) - len(held)
        assert m['macro_f1'] == pytest.approx(f1_score(held.label, held.predicted, average='macro'))
    assert cv.per_epoch.epoch.tolist() == [1, 2] and cv.per_epoch.macro_f1.iloc[-1] == pytest.approx(cv.scores['macro_f1'])

class Untouchable:
    "Stands in for the test split: any use of it fails"
    def __getattr__(self, name): raise AssertionError(f'the test split was read (.{name})')
    def __getitem__(self, key): raise AssertionError(f'the test split was read ([{key!r}])')
    def __len__(self): raise AssertionError('the test split was read (len)')
    def __iter__(self): raise AssertionError('the test split was read (iter)')

def test_cv_never_reads_the_test_split(cv, files, tmp_path, monkeypatch):
    # a poisoned test file (other texts, shuffled labels) changes nothing
    res = run_cv(RunConfig(**TINY, data=str(files/'train.csv'), test_data=str(files/'poisoned.csv'), out=str(tmp_path/'p')), folds=3)
    assert res.scores == cv.scores and res.baseline == cv.baseline
    pd.testing.assert_frame_equal(pd.read_csv(res.cv_dir/'oof.csv'), pd.read_csv(cv.cv_dir/'oof.csv'))
    # and no text of the test split reaches the tokenizer or the baseline
    import specft.custom as custom, specft.pipeline as pipeline
    seen = []
    real_encode, real_baseline = pipeline.encode_texts, custom.fit_baseline
    monkeypatch.setattr(pipeline, 'encode_texts', lambda tok, texts, *a, **k: (seen.extend(texts), real_encode(tok, texts, *a, **k))[1])
    monkeypatch.setattr(custom, 'fit_baseline', lambda texts, y: (seen.extend(texts), real_baseline(texts, y))[1])
    # nor is the test frame itself used: it is replaced by one that fails on any use
    monkeypatch.setattr(custom, 'prepare_data', lambda cfg: dataclasses.replace(prepare_data(cfg), test=Untouchable()))
    run_cv(RunConfig(**{**TINY, 'epochs': 1}, data=str(files/'train.csv'), test_data=str(files/'test.csv'), out=str(tmp_path/'o')), folds=2)
    test_texts = set(prepare_data(RunConfig(**TINY, data=str(files/'train.csv'), test_data=str(files/'test.csv'))).test.text)
    assert seen and not test_texts & set(seen)

def test_a_metric_picks_the_epoch_on_the_folds_own_training_rows(files, tmp_path):
    res = run_cv(RunConfig(**TINY, select_metric='macro_f1', val_frac=0.2, data=str(files/'train.csv'),
                           test_data=str(files/'test.csv'), out=str(tmp_path/'m')), folds=3)
    assert res.per_epoch is None
    for k, row in res.per_fold.set_index('fold').iterrows():
        s = json.loads((res.cv_dir/f'fold-{k}'/'run.json').read_text())['report']['splits']
        assert s['test'] == row.n_held and s['train'] + s['val'] + s['test'] == len(res.oof)   # three disjoint parts

def test_ensemble_probabilities_are_the_mean_of_its_members(cv):
    texts = ['excellent w1 w2', 'awful w3', 'okay w5 w6 w7', '']
    ens = Predictor.load(cv.cv_dir)
    assert isinstance(ens, EnsemblePredictor) and ens.names == ['fold-1', 'fold-2', 'fold-3']
    members = [Predictor.load(cv.cv_dir/f'fold-{k}') for k in (1, 2, 3)]
    assert np.allclose(ens.predict_proba(texts), np.mean([m.predict_proba(texts) for m in members], 0), atol=1e-6)
    rows = ens.predict(texts)
    assert [r['label'] for r in rows] == [ens.labels[i] for i in ens.predict_proba(texts).argmax(1)] and rows[3]['empty']

def test_members_must_share_labels():
    stub = lambda labels: SimpleNamespace(labels=labels, prep={}, tok=None, device='cpu', batch_size=32,
                                          predict_proba=lambda texts: np.full((len(texts), len(labels)), 1 / len(labels)))
    with pytest.raises(SpecftModelError, match='other labels'): EnsemblePredictor([stub(['a', 'b']), stub(['a', 'c'])], ['x', 'y'])
    with pytest.raises(SpecftModelError, match='at least one'): EnsemblePredictor([])

def test_cli_evaluates_and_predicts_with_an_ensemble_folder(cv, files):
    code, out, err = call('predict', str(cv.cv_dir), 'excellent w1', 'awful w2')
    assert code == 0, err
    rows = [json.loads(l) for l in out.splitlines()]
    assert rows == json.loads(json.dumps(Predictor.load(cv.cv_dir).predict(['excellent w1', 'awful w2'])))
    code, out, err = call('evaluate', str(cv.cv_dir), '--data', str(files/'test.csv'))
    assert code == 0, err
    got = json.loads(out)
    test = pd.read_csv(files/'test.csv')
    ens = Predictor.load(cv.cv_dir)
    y_pred = np.array(ens.labels)[ens.predict_proba(test.text.tolist()).argmax(1)]
    assert got['n'] == 30 and got['accuracy'] == pytest.approx(accuracy_score(test.label, y_pred))
    assert got['macro_f1'] == pytest.approx(f1_score(test.label, y_pred, average='macro'))

def test_specft_cv_command(files, tmp_path):
    out = tmp_path/'cli-cv'
    flags = ['--model', 'tiny', '--epochs', '1', '--max-len', '32', '--device', 'cpu', '--data', str(files/'train.csv'),
             '--test-data', str(files/'test.csv')]
    code, stdout, err = call('cv', '--folds', '2', *flags, '--out', str(out))
    assert code == 0, err
    assert f'CV folder (the fold models, an ensemble): {out}' in stdout and (out/'cv.json').is_file()
    assert json.loads((out/'cv.json').read_text())['folds'] == 2
    for argv, msg in [(['--folds', '1'], 'at least 2'), (['--folds', '40'], 'Use --folds'),
                      (['--folds', '2', '--out', str(out)], 'exists already'), (['--resume', '--out', str(out)], 'does not resume')]:
        code, _, err = call('cv', *flags, *argv)
        assert code == 2 and msg in err and err.count('\n') == 1, err

def test_run_ensemble_of_seeds(files, tmp_path):
    with pytest.raises(SpecftConfigError, match='--test-data'):
        run_ensemble(RunConfig(**TINY, data=str(files/'train.csv'), out=str(tmp_path/'x')), seeds=(0, 1))
    d = run_ensemble(RunConfig(**{**TINY, 'epochs': 1}, data=str(files/'train.csv'), test_data=str(files/'test.csv'), out=str(tmp_path/'s')),
                     seeds=(0, 1))
    rec = json.loads((d/'ensemble.json').read_text())
    assert rec['members'] == ['seed-0', 'seed-1'] and rec['kind'] == 'seeds'
    assert [json.loads((d/m/'run.json').read_text())['config']['seed'] for m in rec['members']] == [0, 1]
    texts = ['excellent w9', 'okay w8']
    assert np.allclose(Predictor.load(d).predict_proba(texts),
                       np.mean([Predictor.load(d/m).predict_proba(texts) for m in rec['members']], 0), atol=1e-6)

class Weights(Callback):
    "The weights of each epoch's end checkpoint, as saved"
    def __init__(self): self.by_epoch = {}
    def on_checkpoint(self, state, path): self.by_epoch[state.epoch] = load_file(str(path/'model.safetensors'))

def test_weight_averaging_of_the_last_epochs(files, tmp_path):
    cfg = RunConfig(**{**TINY, 'epochs': 3}, data=str(files/'train.csv'), test_data=str(files/'test.csv'), out=str(tmp_path/'w'))
    w = Weights()
    res = run_averaged(cfg, last=2, callbacks=[w])
    assert res.run_dir == tmp_path/'w'/'averaged' and res.metrics['averaged_epochs'] == [2, 3]
    assert not (tmp_path/'w'/'epochs').exists() and not (tmp_path/'w'/'checkpoints').exists()
    saved = load_file(str(res.run_dir/'model.safetensors'))
    for k, v in w.by_epoch[3].items():
        name = k if k.startswith('head.') else k.removeprefix('backbone.')
        if v.is_floating_point(): assert torch.allclose(saved[name], (w.by_epoch[2][k] + v) / 2, atol=1e-6), k
    pred = Predictor.load(res.run_dir)
    assert pred.predict_proba(['excellent']).shape == (1, 3)
    for bad, msg in [(dict(last=1), '2 <= last'), (dict(last=4), '2 <= last')]:
        with pytest.raises(SpecftConfigError, match=msg): run_averaged(cfg, **bad)
    with pytest.raises(SpecftConfigError, match='full or head'): run_averaged(RunConfig(**TINY, method='lora'), last=2)

def test_keep_epochs_keeps_only_the_last_epochs(files, tmp_path):
    res = run(RunConfig(**{**TINY, 'epochs': 3}, data=str(files/'train.csv'), test_data=str(files/'test.csv'),
                        out=str(tmp_path/'k')), [KeepEpochs(2)])
    assert sorted(p.name for p in (res.run_dir/'epochs').iterdir()) == ['epoch-2.safetensors', 'epoch-3.safetensors']
    final = load_file(str(res.run_dir/'model.safetensors'))   # select_metric 'last': the run keeps epoch 3
    last = load_file(str(res.run_dir/'epochs'/'epoch-3.safetensors'))
    assert all(torch.equal(final[k if k.startswith('head.') else k.removeprefix('backbone.')], v) for k, v in last.items())

def test_specft_serve_serves_an_ensemble_folder(cv, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient
    from specft.serve import ServeConfig, serve
    apps = []
    monkeypatch.setattr(uvicorn, 'run', lambda app, **kw: apps.append(app))
    serve(cv.cv_dir, ServeConfig())
    texts = ['excellent w1', 'awful w2 w3']
    with TestClient(apps[0]) as c: r = c.post('/predict', json={'texts': texts})
    assert r.status_code == 200
    want = Predictor.load(cv.cv_dir).predict(texts)
    assert [p['label'] for p in r.json()['predictions']] == [w['label'] for w in want]

def test_evaluate_perturb_reports_clean_and_perturbed_side_by_side(cv, files):
    fold = str(cv.cv_dir/'fold-1')
    code, out, err = call('evaluate', fold, '--data', str(files/'test.csv'), '--perturb', 'typos,case', '--perturb-rate', '0.5', '--device', 'cpu')
    assert code == 0, err
    r = json.loads(out)
    assert set(r) == {'clean', 'typos', 'case', 'n', 'rate', 'seed'} and r['n'] == 30
    assert r['clean']['texts_perturbed'] == r['clean']['predictions_changed'] == 0
    assert r['typos']['texts_perturbed'] > 0.2 and r['case']['texts_perturbed'] > 0.5
    assert r['case']['predictions_changed'] == 0     # the tiny model's tokenizer is uncased: case cannot move a prediction
    plain = json.loads(call('evaluate', fold, '--data', str(files/'test.csv'), '--device', 'cpu')[1])
    assert r['clean']['accuracy'] == pytest.approx(plain['accuracy'], abs=1e-6) and r['clean']['macro_f1'] == pytest.approx(plain['macro_f1'], abs=1e-6)
    again = json.loads(call('evaluate', fold, '--data', str(files/'test.csv'), '--perturb', 'typos', '--perturb-rate', '0.5', '--device', 'cpu')[1])
    assert again['typos'] == r['typos']               # seeded: the same perturbed texts
    code, _, err = call('evaluate', fold, '--data', str(files/'test.csv'), '--perturb', 'synonyms')
    assert code == 2 and 'typos, case' in err
    code, _, err = call('evaluate', fold, '--data', str(files/'test.csv'), '--perturb', 'typos', '--perturb-rate', '2')
    assert code == 2 and '--perturb-rate' in err

def test_bench_recipe_cv_repeat_chooses_on_the_mean_over_fold_seeds():
    "bench/recipe_cv.py --repeat: each recipe's per-epoch OOF scores are averaged over the fold seeds before the rule picks"
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1]/'bench'))
    from recipe_cv import choose, repeated
    def cv(name, seed, f1s, accs, base):
        return {'name': name, 'seed': seed, 'settings': {'epochs': len(f1s)},
                'per_epoch': [{'epoch': i + 1, 'macro_f1': f, 'accuracy': a} for i, (f, a) in enumerate(zip(f1s, accs))],
                'oof': {'macro_f1': f1s[-1], 'accuracy': accs[-1]}, 'baseline_oof': {'macro_f1': 0.4, 'accuracy': base}}
    # A wins on seed 0 alone; B wins on the mean of seeds 0 and 1; C's mean macro-F1 is highest but its accuracy is below the baseline's
    runs = [cv('A', 0, [0.50, 0.60], [0.70, 0.72], 0.68), cv('A', 1, [0.40, 0.44], [0.70, 0.70], 0.69),
            cv('B', 0, [0.50, 0.58], [0.70, 0.71], 0.68), cv('B', 1, [0.50, 0.54], [0.70, 0.71], 0.69),
            cv('C', 0, [0.70, 0.70], [0.60, 0.60], 0.68), cv('C', 1, [0.70, 0.70], [0.60, 0.60], 0.69)]
    assert choose([r for r in runs if r['seed'] == 0])['name'] == 'A'
    means = repeated(runs)
    assert [m['name'] for m in means] == ['A', 'B', 'C'] and means[0]['seeds'] == [0, 1]
    assert means[1]['per_epoch'][1] == pytest.approx({'epoch': 2, 'macro_f1': 0.56, 'accuracy': 0.71})
    assert means[1]['baseline_oof']['accuracy'] == pytest.approx(0.685)
    assert (choose(means)['name'], choose(means)['epoch']) == ('B', 2)
