"specft.knowledge: text pairs reach the model as two segments, rules enter as offsets (identity at the start) or override with file-order precedence, rule files fail in one line, coarse metrics are scikit-learn's on mapped labels."
import contextlib, io, json
import numpy as np, pandas as pd, pytest, torch
from sklearn.metrics import accuracy_score, f1_score
from specft.cli import main
from specft.core import SpecftModelError
from specft.custom import run_cv
from specft.model import build_classifier, load_tokenizer
from specft.pipeline import Predictor, RunConfig, prepare_data, run, _encode
from specft.knowledge import (RuleClassifier, coarse_metrics, coarse_probs, encode_pairs, override_probs, read_rules,
                              choose_min_precision)

TINY = dict(model='tiny', epochs=1, max_len=48, device='cpu', batch_size=16, precision='fp32')
CUES = {'good': 'excellent', 'bad': 'awful', 'meh': 'okay'}

def frame(n:int, seed:int)->pd.DataFrame:
    "n reviews of random words with their label's cue word, and a `field` column (the second segment)"
    rng = np.random.default_rng(seed)
    labels = [list(CUES)[i % 3] for i in range(n)]
    words = [f'w{i}' for i in range(300)]
    return pd.DataFrame({'text': [' '.join([*rng.choice(words, 8), CUES[l]]) for l in labels], 'label': labels,
                         'field': [f'group {l}' if i % 4 else None for i, l in enumerate(labels)]})

def call(*argv):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e): code = main([str(a) for a in argv])
    return code, o.getvalue(), e.getvalue()

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('data')
    frame(90, 0).to_csv(d/'train.csv', index=False); frame(30, 1).to_csv(d/'test.csv', index=False)
    (d/'rules.csv').write_text('pattern,label,name\n\\bexcellent\\b,good,exc\n\\bawful\\b,bad,awf\n')
    return d

@pytest.fixture(scope='module')
def pair_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')/'pair'
    cfg = RunConfig(**TINY, data=str(files/'train.csv'), test_data=str(files/'test.csv'), text_pair_col='field', out=str(out))
    return cfg, run(cfg)

def test_pairs_are_two_segments(files):
    tok = load_tokenizer('tiny')
    enc = encode_pairs(tok, ['the drug was awful'], ['Pain'], 32)
    ref = tok('the drug was awful', 'Pain')
    assert enc['input_ids'][0] == ref['input_ids'] and enc['token_type_ids'][0] == ref['token_type_ids']
    sep = enc['input_ids'][0].index(tok.sep_token_id)
    assert set(enc['token_type_ids'][0][:sep + 1]) == {0} and set(enc['token_type_ids'][0][sep + 1:]) == {1}
    # the pipeline's loader carries the segments, and the backbone reads them: other segment ids, other logits
    cfg = RunConfig(**TINY, data=str(files/'train.csv'), text_pair_col='field')
    data = prepare_data(cfg)
    assert 'text_pair' in data.train and (data.train['text_pair'] == '').any()   # a missing field is an empty segment
    batch = next(iter(_encode(tok, data.train, data.labels, cfg)))
    assert batch['token_type_ids'].max() == 1 and batch['token_type_ids'].shape == batch['input_ids'].shape
    clf, _ = build_classifier('tiny', 3, seed=0)
    seen = []
    h = clf.backbone.embeddings.token_type_embeddings.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    with torch.no_grad():
        a = clf(batch['input_ids'], batch['attention_mask'], batch['token_type_ids'])
        b = clf(batch['input_ids'], batch['attention_mask'])
    h.remove()
    assert torch.equal(seen[0], batch['token_type_ids']) and not torch.allclose(a, b)

def test_truncation_keeps_the_pair():
    tok = load_tokenizer('tiny')
    enc = encode_pairs(tok, [' '.join(['word'] * 100)], ['Birth Control'], 16)
    assert len(enc['input_ids'][0]) == 16
    assert tok.decode(enc['input_ids'][0]).endswith('[SEP] birth control [SEP]')   # longest-first cuts the long review

def test_predictor_round_trip(pair_run, files):
    cfg, res = pair_run
    info = json.loads((res.run_dir/'run.json').read_text())
    assert info['preprocessing']['text_pair']['column'] == 'field' and info['preprocessing']['truncation'] == 'longest_first'
    data = prepare_data(cfg)
    pred = Predictor.load(res.run_dir, device='cpu')
    P = pred.predict_prepared(data.test['text'].tolist(), data.test['text_pair'].tolist())
    assert P.argmax(1).tolist() == res.y_pred
    raw = pd.read_csv(files/'test.csv')
    assert [r['label'] for r in pred.predict(raw['text'].tolist(), raw['field'].fillna('').tolist())] == [pred.labels[i] for i in res.y_pred]
    with pytest.raises(Exception, match="trained with text pairs .column 'field'"): pred.predict(['some text'])
    code, out, err = call('predict', res.run_dir, '--file', files/'test.csv')
    assert code == 0 and [json.loads(l)['label'] for l in out.splitlines()] == [pred.labels[i] for i in res.y_pred]
    code, out, err = call('predict', res.run_dir, 'a text without its field')
    assert code == 2 and 'trained with text pairs' in err and len(err.strip().splitlines()) == 1
    code, out, err = call('evaluate', res.run_dir, '--data', files/'test.csv')
    assert code == 0 and json.loads(out)['accuracy'] == pytest.approx(res.metrics['accuracy'])
    assert "the column 'field' as a second segment" in (res.run_dir/'card.md').read_text()   # the card says what the model reads

def test_missing_pair_column(files, tmp_path):
    code, _, err = call('train', '--data', files/'train.csv', '--model', 'tiny', '--text-pair-col', 'condition', '--out', tmp_path/'r')
    assert code == 2 and "text-pair column 'condition' not found" in err and 'text, label, field' in err
    assert len(err.strip().splitlines()) == 1

def test_offset_module_starts_as_identity():
    clf, tok = build_classifier('tiny', 3, seed=0)
    enc = tok(['excellent stuff', 'awful awful'], padding=True, return_tensors='pt')
    rc = RuleClassifier(clf, [0, 2])
    hits = torch.tensor([[1., 0.], [1., 1.]])
    with torch.no_grad():
        ref = clf(enc['input_ids'], enc['attention_mask'])
        test_out = rc(enc['input_ids'], enc['attention_mask'], rule_hits=hits)
    assert torch.equal(ref, test_out)
    with torch.no_grad(): rc.head.rule_theta.fill_(0.01)   # offset = scale * theta = 1 on each rule's label
    with torch.no_grad(): moved = rc(enc['input_ids'], enc['attention_mask'], rule_hits=hits) - ref
    assert torch.allclose(moved, torch.tensor([[1., 0., 0.], [1., 0., 1.]]), atol=1e-5)
    assert [n for n, _ in rc.named_parameters() if 'rule' in n] == ['head.rule_theta']   # the head's learning rate

def test_offset_run_round_trip(files, tmp_path):
    cfg = RunConfig(**TINY, data=str(files/'train.csv'), test_data=str(files/'test.csv'), rules=str(files/'rules.csv'),
                    out=str(tmp_path/'off'))
    res = run(cfg)
    assert (res.run_dir/'rules.csv').is_file() and len(res.metrics['rules']['offsets']) == 2
    assert 'rules.csv` (copied into the run folder' in (res.run_dir/'card.md').read_text() and 'learned logit offsets' in (res.run_dir/'card.md').read_text()
    stats = json.loads((res.run_dir/'rules.json').read_text())['stats']
    assert stats['train'][0]['precision'] == 1.0 and 0 < stats['train'][0]['coverage'] < 1
    pred = Predictor.load(res.run_dir, device='cpu')   # a plain model, its exact offsets beside it: Predictor adds them to its logits
    assert not isinstance(pred.model, RuleClassifier) and len(pred.knowledge['offsets']) == 2
    assert pred.predict_prepared(prepare_data(cfg).test['text'].tolist()).argmax(1).tolist() == res.y_pred

def test_override_precedence():
    P = np.array([[.6, .3, .1], [.6, .3, .1], [.2, .2, .6]])
    hits = np.array([[1, 1], [0, 1], [0, 0]])
    Q, first = override_probs(P, hits, [2, 1])
    assert first.tolist() == [0, 1, -1] and Q.argmax(1).tolist() == [2, 1, 2]   # file order: rule 0 wins row 0
    Q, first = override_probs(P, hits, [2, 1], active=[False, True])
    assert first.tolist() == [1, 1, -1] and Q.argmax(1).tolist() == [1, 1, 2]
    assert np.array_equal(Q[2], P[2])
    # the threshold is chosen on validation: here only the precise rule helps, so the noisy one is left out
    t, table = choose_min_precision(P, hits, [2, 0, 2], [1.0, 0.4], [2, 1], ['a', 'b', 'c'])
    assert t == 0.4 and table.rules.tolist() == [2, 1, 0]

@pytest.mark.parametrize('name,content,msg', [
    ('bad_regex.csv', 'pattern,label\n(unclosed,good\n', 'line 2: the pattern'),
    ('bad_label.csv', 'pattern,label\nfine,good\nworse,terrible\n', "line 3: unknown label 'terrible'"),
    ('ragged.csv', 'pattern,label\na,good,x,y\n', 'line 2: 4 fields but the header has 2'),
    ('no_label.jsonl', '{"pattern": "a", "label": "good"}\n\n{"pattern": "b"}\n', 'line 3: no label'),
    ('bad.jsonl', '{"pattern": "a", "label": "good"}\n{"pattern": \n', 'line 2: not valid JSON'),
])
def test_rule_file_errors(files, tmp_path, name, content, msg):
    (tmp_path/name).write_text(content)
    code, _, err = call('train', '--data', files/'train.csv', '--model', 'tiny', '--max-len', 16, '--epochs', 1,
                        '--rules', tmp_path/name, '--out', tmp_path/'r')
    assert code == 2 and msg in err and name in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path/'r'/'model.safetensors').exists()

def test_rules_stats():
    r = read_rules_from_text('pattern,label\nexcel+ent,good\n\\bawful\\b,bad\n')
    s = r.stats(['EXCELLENT', 'awful', 'awfully good', 'excellent but awful'], ['good', 'bad', 'good', 'bad'])
    assert s['matches'].tolist() == [2, 2] and s['coverage'].tolist() == [.5, .5] and s['precision'].tolist() == [.5, 1.0]

def read_rules_from_text(text, tmp=[]):
    import tempfile, pathlib
    p = pathlib.Path(tempfile.mkdtemp())/'r.csv'; p.write_text(text)
    return read_rules(p)

def test_coarse_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    fine = ['Acne', 'Anxiety', 'Depression', 'Obesity', 'Pain']
    m = {'Acne': 'skin', 'Anxiety': 'mental', 'Depression': 'mental', 'Obesity': 'metabolic', 'Pain': 'symptom'}
    P = rng.dirichlet(np.ones(5), size=200); y = rng.integers(0, 5, 200)
    Q, coarse = coarse_probs(P, fine, m)
    assert coarse == ['mental', 'metabolic', 'skin', 'symptom'] and np.allclose(Q.sum(1), 1)
    yc = [m[fine[i]] for i in y]
    for how, pred in (('sum', [coarse[i] for i in Q.argmax(1)]), ('map', [m[fine[i]] for i in P.argmax(1)])):
        got = coarse_metrics(y, P, fine, m, how)
        assert got['accuracy'] == pytest.approx(accuracy_score(yc, pred))
        assert got['macro_f1'] == pytest.approx(f1_score(yc, pred, average='macro', labels=coarse, zero_division=0))

def test_cv_with_pairs(files, tmp_path):
    res = run_cv(RunConfig(**TINY, data=str(files/'train.csv'), text_pair_col='field', out=str(tmp_path/'cv')), folds=2)
    assert len(res.oof) > 0 and set(res.per_fold.fold) == {1, 2}
    assert json.loads((tmp_path/'cv'/'fold-1'/'run.json').read_text())['preprocessing']['text_pair']['column'] == 'field'

def test_cv_with_rule_offsets(files, tmp_path):
    res = run_cv(RunConfig(**TINY, data=str(files/'train.csv'), rules=str(files/'rules.csv'), out=str(tmp_path/'cv')), folds=2)
    fold = tmp_path/'cv'/'fold-1'
    assert (fold/'rules.csv').is_file() and len(json.loads((fold/'rules.json').read_text())['offsets']) == 2
    pred = Predictor.load(fold, device='cpu')
    assert not isinstance(pred.model, RuleClassifier) and pred.predict_proba(['excellent', 'awful']).shape == (2, 3)
    assert Predictor.load(tmp_path/'cv', device='cpu').predict_proba(['excellent']).shape == (1, 3)   # the fold ensemble

def test_an_ensemble_of_pair_folds_predicts_and_evaluates_with_pairs(files, tmp_path):
    "The defects: `specft predict CV --file F --text-pair-col C` and `specft evaluate CV --data F` crashed on an ensemble of pair runs"
    code, _, err = call('cv', '--folds', 2, '--model', 'tiny', '--epochs', 1, '--max-len', 32, '--data', files/'train.csv',
                        '--text-pair-col', 'field', '--device', 'cpu', '--out', tmp_path/'cvp')
    assert code == 0, err
    test = pd.read_csv(files/'test.csv')
    texts, pairs = test['text'].tolist(), test['field'].fillna('').tolist()
    ens, members = Predictor.load(tmp_path/'cvp', 'cpu'), [Predictor.load(tmp_path/'cvp'/f'fold-{k}', 'cpu') for k in (1, 2)]
    P = ens.predict_proba(texts, pairs)
    np.testing.assert_allclose(P, np.mean([m.predict_proba(texts, pairs) for m in members], 0), atol=1e-6)
    for extra in (['--text-pair-col', 'field'], []):   # the pair column defaults to the members' own
        code, out, err = call('predict', tmp_path/'cvp', '--file', files/'test.csv', *extra)
        assert code == 0, err
        assert [json.loads(l)['label'] for l in out.splitlines()] == [ens.labels[i] for i in P.argmax(1)]
    code, out, err = call('evaluate', tmp_path/'cvp', '--data', files/'test.csv')
    assert code == 0, err
    assert json.loads(out)['accuracy'] == pytest.approx(accuracy_score(test['label'], [ens.labels[i] for i in P.argmax(1)]))
    code, _, err = call('predict', tmp_path/'cvp', 'excellent w1')   # a text without its pair: one line, exit 2
    assert code == 2 and "trained with text pairs (column 'field'" in err and len(err.strip().splitlines()) == 1

def test_a_predictor_of_a_rules_run_built_without_its_rules_refuses(files, tmp_path):
    res = run(RunConfig(**TINY, data=str(files/'train.csv'), rules=str(files/'rules.csv'), out=str(tmp_path/'r')))
    pred = Predictor.load(res.run_dir, device='cpu')
    bare = Predictor(pred.model, pred.tok, pred.labels, pred.prep, 'cpu')   # the rules would be dropped silently
    with pytest.raises(SpecftModelError, match='built without them'): bare.predict_proba(['excellent'])

def test_evaluate_perturb_of_a_pair_run_perturbs_the_texts_and_keeps_the_pairs(pair_run, files):
    "The defect: `specft evaluate --perturb` of a run trained with text pairs crashed (it sent the texts without their pairs)"
    from specft.custom import perturb_texts
    cfg, res = pair_run
    code, out, err = call('evaluate', res.run_dir, '--data', files/'test.csv', '--perturb', 'typos', '--perturb-rate', '0.5', '--device', 'cpu')
    assert code == 0, err
    r = json.loads(out)
    test, pred = pd.read_csv(files/'test.csv'), Predictor.load(res.run_dir, 'cpu')
    texts, pairs = test['text'].tolist(), test['field'].fillna('').tolist()
    plain = json.loads(call('evaluate', res.run_dir, '--data', files/'test.csv', '--device', 'cpu')[1])
    assert (r['clean']['accuracy'], r['clean']['macro_f1']) == pytest.approx((plain['accuracy'], plain['macro_f1']), abs=1e-6)
    noisy = [pred.labels[i] for i in pred.predict_proba(perturb_texts(texts, 'typos', 0.5, 0), pairs).argmax(1)]
    assert r['typos']['accuracy'] == pytest.approx(accuracy_score(test['label'], noisy), abs=1e-6)
    assert r['typos']['macro_f1'] == pytest.approx(f1_score(test['label'], noisy, average='macro'), abs=1e-6)
    assert r['typos']['texts_perturbed'] > 0.2
    renamed = files/'renamed.csv'   # another file's pair column, named on the command line
    test.rename(columns={'field': 'group'}).to_csv(renamed, index=False)
    again = json.loads(call('evaluate', res.run_dir, '--data', renamed, '--text-pair-col', 'group', '--perturb', 'typos',
                            '--perturb-rate', '0.5', '--device', 'cpu')[1])
    assert again['typos'] == r['typos']

def test_monitor_scores_a_pair_run_with_each_records_pair(pair_run, files):
    "The defect: specft.monitor.Monitor sent a pair run its texts without their pairs"
    from specft.core import SpecftDataError
    from specft.monitor import Monitor
    cfg, res = pair_run
    test, pred = pd.read_csv(files/'test.csv'), Predictor.load(res.run_dir, 'cpu')
    records = test.assign(date=pd.date_range('2026-03-02', periods=len(test)).strftime('%Y-%m-%d'), entity='drug A')
    m = Monitor(pred, pos='good', neg='bad')
    assert m.pair_col == 'field'
    m.update(records)
    P = pred.predict_proba(test['text'].tolist(), test['field'].fillna('').tolist())
    np.testing.assert_allclose(m.stream['p_neg'].to_numpy(), P[:, pred.labels.index('bad')], atol=1e-6)
    with pytest.raises(SpecftDataError, match="needs a 'field' field"): m.update(records.drop(columns='field'))
