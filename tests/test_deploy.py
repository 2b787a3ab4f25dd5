"specft.deploy and `specft export` on a tiny run: int8 and ONNX parity, pruning that reloads exactly, distillation, the deployable folder."
import copy, json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from specft.pipeline import Predictor, prepare_data, saved_config, run, RunConfig
from specft.deploy import (quantize_int8, parity, export_onnx, OrtClassifier, quantize_onnx, keep_layers, prune_heads,
                           weakest_heads, build_pruned, distill_loss, export_run, load_deployed, magnitude_prune, sparsity,
                           state_bytes, EXPORTERS, DISTILL_ALPHA, DISTILL_T, distill_rows)
from safetensors.torch import load_file
from specft.model import save_classifier, encoder_layers
from specft.cli import main
from specft.core import SpecftModelError

SPECFT = str(Path(sys.executable).parent/'specft')

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny run trained for three epochs (a model with clear margins), its predictor and its test split"
    d = tmp_path_factory.mktemp('deploy')
    res = run(RunConfig(model='tiny', epochs=3, max_len=48, max_train_rows=90, device='cpu', out=str(d/'run')))
    pred = Predictor.load(res.run_dir, 'cpu')
    data = prepare_data(saved_config(json.loads((res.run_dir/'run.json').read_text())['config']))
    texts, y = data.test['text'].tolist(), data.labels.encode(data.test['label'])
    return res.run_dir, pred, texts, y, pred.predict_proba(texts)

def test_int8_parity(tiny):
    _, pred, texts, y, P = tiny
    q = quantize_int8(pred.model)
    p = parity(P, type(pred)(q, pred.tok, pred.labels, pred.prep, 'cpu').predict_proba(texts), y, pred.labels)
    assert p['agreement'] >= 0.99 and p['f1_loss'] <= 0.01, p
    assert state_bytes(q) < state_bytes(pred.model)
    assert pred.model.head.weight.dtype == torch.float32   # the original is left alone

def test_onnx_fp32_and_int8_parity(tiny, tmp_path):
    _, pred, texts, y, P = tiny
    path = export_onnx(pred.model, tmp_path/'m.onnx')
    Po = type(pred)(OrtClassifier(path, threads=1), pred.tok, pred.labels, pred.prep, 'cpu')
    with torch.no_grad():   # the same logits for other batch sizes and lengths than the export's example
        for b, t in [(1, 3), (5, 40), (3, 48)]:
            ids = torch.randint(1000, 5000, (b, t)); m = torch.ones_like(ids); m[0, t // 2:] = 0
            torch.testing.assert_close(Po.model(ids, m), pred.model(ids, m), atol=1e-4, rtol=0)
    np.testing.assert_allclose(Po.predict_proba(texts), P, atol=1e-4)
    q = quantize_onnx(path, tmp_path/'m8.onnx')
    assert q.stat().st_size < path.stat().st_size / 2
    p = parity(P, type(pred)(OrtClassifier(q, 1), pred.tok, pred.labels, pred.prep, 'cpu').predict_proba(texts), y, pred.labels)
    assert p['agreement'] >= 0.99 and p['f1_loss'] <= 0.01, p

def test_magnitude_pruning_leaves_dense_tensors(tiny):
    _, pred, *_ = tiny
    m = magnitude_prune(copy.deepcopy(pred.model), 0.3)
    assert abs(sparsity(m) - 0.3) < 0.01 and state_bytes(m) == state_bytes(pred.model)
    assert all(not n.endswith('_mask') for n, _ in m.named_buffers())

def test_layer_and_head_pruning_reload_exactly(tiny, tmp_path):
    _, pred, *_ = tiny
    m = prune_heads(keep_layers(copy.deepcopy(pred.model), 1), {0: [1]})
    assert len(encoder_layers(m)) == 1 and m.backbone.config.num_hidden_layers == 1
    save_classifier(m, pred.tok, tmp_path/'p', pred.labels)
    back, _ = build_pruned(tmp_path/'p')
    ids = torch.randint(1000, 5000, (2, 12)); am = torch.ones_like(ids)
    with torch.no_grad(): torch.testing.assert_close(back(ids, am), m(ids, am), atol=0, rtol=0)
    assert encoder_layers(back)[0].attention.self.query.out_features == 16

def test_distill_loss_matches_torch():
    g = torch.Generator().manual_seed(1)
    zs, zt, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    T, a = 3.0, 0.7
    ref = a * T * T * torch.nn.functional.kl_div((zs / T).log_softmax(-1), (zt / T).softmax(-1), reduction='batchmean') \
          + (1 - a) * torch.nn.functional.cross_entropy(zs, y)
    torch.testing.assert_close(distill_loss(zs, zt, y, T, a), ref)

@pytest.mark.parametrize('fmt', ['merged', 'bf16', 'int8', 'onnx', 'onnx-int8'])
def test_export_formats_read_like_a_run_folder(tiny, tmp_path, fmt):
    run_dir, pred, texts, y, P = tiny
    out = tmp_path/fmt
    spec = export_run(run_dir, out, fmt)
    assert {'run.json', 'labels.json', 'config.json', 'tokenizer.json', 'card.md', 'deploy.json', 'reference.json'} <= {p.name for p in out.iterdir()}
    assert spec['cost']['agreement'] >= 0.99 and spec['cost']['f1_loss'] <= 0.01 and spec['cost']['n'] == len(texts)
    assert '## Deployment' in (out/'card.md').read_text() and f'`{fmt}`' in (out/'card.md').read_text()
    dp = Predictor.load(out, 'cpu')   # dispatches to load_deployed
    assert parity(P, dp.predict_proba(texts), y, pred.labels)['agreement'] >= 0.99
    assert dp.predict(['Great drug!'])[0]['label'] in pred.labels

def test_export_keep_layers_with_distillation(tiny, tmp_path):
    run_dir, *_ = tiny
    spec = export_run(run_dir, tmp_path/'k1', 'onnx', keep_layers_k=1, distill_epochs=1)
    assert spec['kept_layers'] == 1 and spec['distill_epochs'] == 1
    assert json.loads((tmp_path/'k1'/'config.json').read_text())['num_hidden_layers'] == 1
    assert 'Encoder layers kept: 1 of 2' in (tmp_path/'k1'/'card.md').read_text()
    assert (spec['distill_alpha'], spec['distill_temperature']) == (DISTILL_ALPHA, DISTILL_T)
    soft = export_run(run_dir, tmp_path/'k1-soft', 'merged', keep_layers_k=1, distill_epochs=1, distill_alpha=1.0, distill_T=4.0)
    assert (soft['distill_alpha'], soft['distill_temperature']) == (1.0, 4.0)
    assert 'distilled from the full run for 1 epochs (alpha 1.0, temperature 4.0)' in (tmp_path/'k1-soft'/'card.md').read_text()
    base = export_run(run_dir, tmp_path/'k1-base', 'merged', keep_layers_k=1, distill_epochs=1)
    w = [load_file(tmp_path/d/'model.safetensors') for d in ('k1-base', 'k1-soft')]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0]), 'alpha and T did not reach the distillation loss'

def test_distill_rows_is_export_runs_distillation_on_the_rows_given(tiny, tmp_path):
    "export_run distils on the run's training split through distill_rows; given other rows, distill_rows trains on those alone"
    run_dir, teacher, *_ = tiny
    cfg = saved_config(json.loads((run_dir/'run.json').read_text())['config'])
    data = prepare_data(cfg)
    export_run(run_dir, tmp_path/'k1', 'merged', keep_layers_k=1, distill_epochs=1)
    student = keep_layers(copy.deepcopy(teacher.model), 1)
    distill_rows(student, teacher, data.train, data.val, data.labels, cfg, 1)
    w, mine = build_pruned(tmp_path/'k1')[0].state_dict(), student.state_dict()
    assert set(w) == set(mine) and all(torch.equal(w[k], mine[k].cpu()) for k in w)
    few = data.train.iloc[:cfg.batch_size + 1]   # two batches an epoch
    state = distill_rows(keep_layers(copy.deepcopy(teacher.model), 1), teacher, few, data.val, data.labels, cfg, 2)
    assert state.step == 4

def test_exporters_are_a_registry():
    assert list(EXPORTERS) == ['merged', 'bf16', 'int8', 'onnx', 'onnx-int8']

def test_cli_export_and_errors(tiny, tmp_path, capsys):
    run_dir, *_ = tiny
    assert main(['export', str(run_dir), '--format', 'int8', '--out', str(tmp_path/'e')]) == 0
    out = capsys.readouterr().out
    assert 'agreement' in out and str(tmp_path/'e') in out
    for argv, msg in [(['export', str(tmp_path/'nope'), '--out', str(tmp_path/'x')], 'not a finished specft run folder'),
                      (['export', str(run_dir), '--out', str(tmp_path/'e')], 'not empty'),
                      (['export', str(run_dir), '--keep-layers', '5', '--out', str(tmp_path/'y')], 'between 1 and 2'),
                      (['export', str(run_dir), '--keep-layers', '1', '--distill-epochs', '-1', '--out', str(tmp_path/'y')], 'whole number'),
                      (['export', str(run_dir), '--keep-layers', '1', '--distill-epochs', '1', '--distill-alpha', '1.5', '--out', str(tmp_path/'y')], 'between 0 and 1'),
                      (['export', str(run_dir), '--keep-layers', '1', '--distill-epochs', '1', '--distill-temperature', '0', '--out', str(tmp_path/'y')], 'above 0')]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err

def test_lora_run_exports_merged_onnx_and_peft(tmp_path):
    "A LoRA run's updates are folded in for the deployable formats; --format peft writes an adapter; adapters are refused"
    res = run(RunConfig(model='tiny', method='lora', epochs=1, max_len=48, max_train_rows=60, device='cpu', out=str(tmp_path/'lora')))
    pred = Predictor.load(res.run_dir, 'cpu')
    texts = ['this drug worked well for me', 'terrible side effects, stopped after a week', 'no change at all']
    P = pred.predict_proba(texts)
    for fmt in ('merged', 'onnx'):
        spec = export_run(res.run_dir, tmp_path/fmt, fmt, device='cpu')
        assert spec['cost']['agreement'] == 1.0, (fmt, spec['cost'])
        assert spec['source_bytes'] == (res.run_dir/'peft.safetensors').stat().st_size   # the run's own weights
        np.testing.assert_allclose(load_deployed(tmp_path/fmt, 'cpu').predict_proba(texts), P, atol=1e-4)
    assert main(['export', str(res.run_dir), '--format', 'peft', '--out', str(tmp_path/'adapter')]) == 0
    assert json.loads((tmp_path/'adapter'/'adapter_config.json').read_text())['peft_type'] == 'LORA'
    ad = run(RunConfig(model='tiny', method='adapter', epochs=1, max_len=48, max_train_rows=60, device='cpu', out=str(tmp_path/'ad')))
    assert main(['export', str(ad.run_dir), '--format', 'onnx', '--out', str(tmp_path/'ad-onnx')]) == 2

# Runs trained with domain knowledge (lesson 20): text pairs, rule offsets, rule override

KN = dict(model='tiny', epochs=1, max_len=32, max_train_rows=60, device='cpu')

@pytest.fixture(scope='module')
def knowledge(tmp_path_factory):
    "A pair + rule-offset run and a rule-override run, each with its predictor and its prepared test rows (texts, pairs)"
    from specft.knowledge import DRUG_RULES
    d, out = tmp_path_factory.mktemp('knowledge'), {}
    for name, kw in (('pair', dict(text_pair_col='condition', rules=str(DRUG_RULES))), ('override', dict(rules=str(DRUG_RULES), rules_mode='override'))):
        res = run(RunConfig(**KN, **kw, out=str(d/name)))
        test = prepare_data(saved_config(json.loads((res.run_dir/'run.json').read_text())['config'])).test
        texts, pairs = test['text'].tolist(), test['text_pair'].tolist() if 'text_pair' in test else None
        pred = Predictor.load(res.run_dir, 'cpu')
        out[name] = (res.run_dir, pred, texts, pairs, pred.predict_prepared(texts, pairs))
    return out

@pytest.mark.parametrize('fmt', ['merged', 'bf16', 'int8', 'onnx', 'onnx-int8'])
def test_a_pair_and_rule_offset_run_exports_in_every_format(knowledge, tmp_path, fmt):
    run_dir, pred, texts, pairs, P = knowledge['pair']
    spec = export_run(run_dir, tmp_path/fmt, fmt)
    assert spec['knowledge'] == {'text_pair': 'condition', 'rules': {'mode': 'offset', 'file': 'rules.csv',
                                 'applied': "by specft's Predictor, around the model's logits"}}
    dp = Predictor.load(tmp_path/fmt, 'cpu')
    assert type(dp.model).__name__ in ('Classifier', 'OrtClassifier') and dp.knowledge['mode'] == 'offset'
    assert torch.equal(dp.knowledge['offsets'], pred.knowledge['offsets'])   # exact, not rules.json's 4 decimals
    Q = dp.predict_prepared(texts, pairs)
    if fmt in ('merged', 'onnx'): np.testing.assert_allclose(Q, P, atol=1e-5 if fmt == 'merged' else 1e-4, rtol=0)
    # fp32 agrees exactly; a 1-epoch tiny model's probabilities sit near 1/3, so rounding may flip a close call
    assert spec['cost']['agreement'] >= (1.0 if fmt in ('merged', 'onnx') else 0.95) and spec['cost']['n'] == len(texts)
    if fmt.startswith('onnx'): assert dp.model.inputs == ['input_ids', 'attention_mask', 'token_type_ids'] == spec['inputs']
    assert 'Rules (offset mode)' in (tmp_path/fmt/'card.md').read_text()

def test_a_rule_override_run_exports_with_its_override(knowledge, tmp_path):
    run_dir, pred, texts, pairs, P = knowledge['override']
    rules = pred.knowledge['rules']
    active = (rules.hits(texts) * np.array(pred.knowledge['active'])).any(1)
    assert active.any()
    for fmt, tol in (('merged', 1e-5), ('onnx', 1e-4)):
        export_run(run_dir, tmp_path/fmt, fmt)
        Q = Predictor.load(tmp_path/fmt, 'cpu').predict_prepared(texts)
        np.testing.assert_allclose(Q, P, atol=tol, rtol=0)
        assert ((Q == 1).any(1) == active).all()   # exactly the rows an active rule matches are overridden
    assert Predictor.load(tmp_path/'onnx', 'cpu').model.inputs == ['input_ids', 'attention_mask']   # no pairs: two inputs

def test_cli_exports_and_predicts_runs_with_pairs_and_rules(knowledge, tmp_path, capsys):
    "The defects: a rules run's merged export (head.rule_theta), its ONNX export's predict (token_type_ids), a pair run's export (pairs)"
    for name, fmt in (('pair', 'merged'), ('pair', 'onnx'), ('override', 'merged')):
        run_dir = knowledge[name][0]
        assert main(['export', str(run_dir), '--format', fmt, '--out', str(tmp_path/f'{name}-{fmt}')]) == 0, capsys.readouterr().err
    (tmp_path/'t.csv').write_text('text,condition,label\nI would not recommend it,Pain,negative\nA life saver,Acne,positive\n')
    def predict(folder, extra):
        capsys.readouterr(); code = main(['predict', str(folder), *extra]); out = capsys.readouterr()
        assert code == 0, out.err
        return [json.loads(l) for l in out.out.splitlines()]
    for name, extra in (('pair', ['--file', str(tmp_path/'t.csv')]), ('override', ['I would not recommend it', 'A life saver'])):
        want = predict(knowledge[name][0], extra)
        for d in tmp_path.glob(f'{name}-*'):
            got = predict(d, extra)
            assert [r['label'] for r in got] == [r['label'] for r in want] and len(got) == 2, d
            np.testing.assert_allclose([list(r['probabilities'].values()) for r in got],
                                       [list(r['probabilities'].values()) for r in want], atol=2e-6)

def test_keep_layers_with_distillation_of_a_pair_and_rule_offset_run(knowledge, tmp_path):
    run_dir, pred, texts, pairs, P = knowledge['pair']
    spec = export_run(run_dir, tmp_path/'k1', 'onnx', keep_layers_k=1, distill_epochs=1, device='cpu')
    dp = Predictor.load(tmp_path/'k1', 'cpu')
    assert spec['kept_layers'] == 1 and dp.model.inputs[-1] == 'token_type_ids'
    assert torch.equal(dp.knowledge['offsets'], pred.knowledge['offsets'])
    assert dp.predict_prepared(texts[:5], pairs[:5]).shape == (5, 3)

def test_a_failed_export_leaves_no_folder_behind(knowledge, tmp_path, monkeypatch, capsys):
    run_dir = knowledge['override'][0]
    assert main(['export', str(run_dir), '--keep-layers', '5', '--out', str(tmp_path/'y')]) == 2   # refused before writing
    err = capsys.readouterr().err
    assert 'between 1 and 2' in err and len(err.strip().splitlines()) == 1 and not (tmp_path/'y').exists()
    def broken(model, tok, labels, out, pairs=False):
        EXPORTERS['merged'](model, tok, labels, out); raise OSError('disk full')
    monkeypatch.setitem(EXPORTERS, 'broken', broken)
    with pytest.raises(OSError, match='disk full'): export_run(run_dir, tmp_path/'a'/'b', 'broken')
    assert not (tmp_path/'a').exists()
    (tmp_path/'empty').mkdir()
    with pytest.raises(OSError, match='disk full'): export_run(run_dir, tmp_path/'empty', 'broken')
    assert (tmp_path/'empty').is_dir() and not any((tmp_path/'empty').iterdir())   # the user's empty folder stays, empty

def test_stale_exports_are_refused_in_one_line(knowledge, tmp_path, capsys):
    "Folders exported before this specft carried the rules or the segments: a plain error naming the fix, exit 2"
    run_dir = knowledge['pair'][0]
    export_run(run_dir, tmp_path/'old', 'merged')
    (tmp_path/'old'/'rules.json').unlink()   # what an older specft wrote: no rules beside the model
    (tmp_path/'t.csv').write_text('text,condition\nIt helped,Pain\n')
    assert main(['predict', str(tmp_path/'old'), '--file', str(tmp_path/'t.csv')]) == 2
    err = capsys.readouterr().err
    assert 'holds no rules.json' in err and 'export the run folder again' in err and len(err.strip().splitlines()) == 1
    # a two-input ONNX file cannot read pairs
    pred = knowledge['pair'][1]
    path = export_onnx(pred.model, tmp_path/'two.onnx')
    ort = OrtClassifier(path, threads=1)
    ids = torch.randint(1000, 5000, (2, 6)); seg = torch.zeros_like(ids); seg[:, 3:] = 1
    torch.testing.assert_close(ort(ids, torch.ones_like(ids), torch.zeros_like(ids)), pred.model(ids, torch.ones_like(ids)), atol=1e-4, rtol=0)
    with pytest.raises(SpecftModelError, match='no token_type_ids input'): ort(ids, torch.ones_like(ids), seg)
