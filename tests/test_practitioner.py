"The modules as a practitioner uses them: their own models, batches, tasks and heads, the engine copied into another package, and each public function's edge cases."
import json, random, shutil, subprocess, sys, textwrap, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModel, BertConfig, BertForSequenceClassification
from transformers.utils import logging as hf_logging
import specft
from specft.errors import SpecftConfigError, SpecftDataError
from specft.train import TrainConfig, Trainer, Callback, fit, predict_with_labels
from specft.evaluate import compute_metrics, baseline_metrics, expected_calibration_error, reliability_bins, worst_errors
from specft.losses import cross_entropy
from specft.privacy import mask_pii
from specft.split import split_corpus
from specft.pipeline import RunConfig, run, Predictor

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(lr=3e-3, warmup=0.0, device='cpu', precision='fp32')

def bert(num_labels=3, seed=0):
    "A plain transformers classifier from a tiny config: nothing downloaded, nothing of specft"
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=32, num_labels=num_labels))

def token_data(n=48, seed=0):
    "Token ids whose label is the first token's third: learnable in a few steps"
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (n, 8), generator=g)
    return ids, torch.ones_like(ids), (ids[:, 0] - 3) * 3 // 57

def dict_loader(n=48, seed=0, bs=8):
    ids, mask, y = token_data(n, seed)
    rows = [dict(input_ids=ids[i], attention_mask=mask[i], labels=y[i]) for i in range(n)]
    return DataLoader(rows, batch_size=bs)

# --- any model, any batch ---------------------------------------------------------------------------------------------

def test_foreign_model_with_dict_batches_trains_and_predicts():
    m = bert(); cfg = TrainConfig(epochs=3, select_metric='macro_f1', **QUICK)
    s = fit(m, dict_loader(), dict_loader(16, 1), cfg, labels=['a', 'b', 'c'], head='classifier')
    assert s.step == 18 and {'loss', 'accuracy', 'macro_f1', 'per_class'} <= set(s.metrics)
    logits, y = predict_with_labels(m, dict_loader(16, 1), device='cpu')
    assert logits.shape == (16, 3) and logits.dtype == torch.float32 and y.tolist() == token_data(16, 1)[2].tolist()

def test_tuple_batches_inputs_and_labels():
    ids, mask, y = token_data()
    # (input_ids, attention_mask, labels): the inputs go in by position; the model returns a HF output object
    three = DataLoader(TensorDataset(ids, mask, y), batch_size=8)
    s = fit(bert(), three, three, TrainConfig(epochs=1, **QUICK), head='classifier')
    assert s.metrics['accuracy'] >= 0 and s.step == 6
    # (features, labels) into a plain torch module returning a tensor; the classes come from its last Linear
    x = torch.randn(40, 5); yy = (x[:, 0] > 0).long()
    plain = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    s = fit(plain, DataLoader(TensorDataset(x, yy), batch_size=8), DataLoader(TensorDataset(x, yy), batch_size=8),
            TrainConfig(epochs=10, head_lr_scale=1.0, lr=3e-2, warmup=0.0, device='cpu'), head='2')
    assert s.metrics['accuracy'] > 0.7
    class Tupled(nn.Module):                     # a model that returns (logits, something else)
        def __init__(self): super().__init__(); self.lin = nn.Linear(5, 2)
        def forward(self, x): return self.lin(x), x.sum()
    lg, _ = predict_with_labels(Tupled(), DataLoader(TensorDataset(x, yy), batch_size=8), device='cpu')
    assert lg.shape == (40, 2)

def test_non_tensor_fields_pass_through_and_bad_batches_are_clear():
    seen = []
    class WithText(nn.Module):
        def __init__(self): super().__init__(); self.head = nn.Linear(4, 2)
        def forward(self, x, text): seen.append(text); return self.head(x)
    rows = [dict(x=torch.randn(4), text=f't{i}', labels=torch.tensor(i % 2)) for i in range(8)]
    fit(WithText(), DataLoader(rows, batch_size=4), None, TrainConfig(epochs=1, **QUICK))
    assert seen[0] == ['t0', 't1', 't2', 't3']           # the strings reach the model as the loader made them
    with pytest.raises(SpecftDataError, match=r"a dict of the model's inputs .* or a tuple \(inputs, labels\)"):
        fit(WithText(), [torch.zeros(4, 4)], None, TrainConfig(epochs=1, **QUICK))
    no_labels = DataLoader([dict(x=torch.randn(4), text='t')] * 4, batch_size=2)
    with pytest.raises(SpecftDataError, match="holds no labels"):
        fit(WithText(), no_labels, None, TrainConfig(epochs=1, logit_adjust=0, **QUICK), labels=['a', 'b'])

# --- any head --------------------------------------------------------------------------------------------------------

def head_lrs(trainer):
    return {round(g['initial_lr'], 12) for g in trainer.optimizer.param_groups if any(n.startswith('classifier.') for n in g['names'])}

def test_custom_head_by_name_or_module_and_a_warning_when_none_matches():
    m = bert(); cfg = TrainConfig(lr=1e-3, head_lr_scale=10, device='cpu', precision='fp32')
    assert head_lrs(Trainer(m, dict_loader(), None, cfg, head='classifier')) == {1e-2}
    assert head_lrs(Trainer(m, dict_loader(), None, cfg, head=m.classifier)) == {1e-2}
    with pytest.warns(UserWarning, match=r"no parameter of BertForSequenceClassification is named 'head\.\*' \(its parts: bert, dropout, classifier\)"):
        t = Trainer(m, dict_loader(), None, cfg)
    assert head_lrs(t) == {1e-3}
    with pytest.raises(SpecftConfigError, match='not a submodule'): Trainer(m, dict_loader(), None, cfg, head=nn.Linear(2, 2))
    with pytest.raises(SpecftConfigError, match='gradual_unfreeze trains the head first'):
        Trainer(m, dict_loader(), None, TrainConfig(gradual_unfreeze=1, device='cpu'))

def test_gradual_unfreeze_and_layer_decay_on_a_foreign_head():
    m = bert(); cfg = TrainConfig(epochs=1, gradual_unfreeze=1, layer_decay=0.5, **QUICK)
    t = Trainer(m, dict_loader(), None, cfg, head='classifier')
    t._unfreeze(1)
    assert {n.split('.')[0] for n, p in m.named_parameters() if p.requires_grad} == {'classifier'}
    lrs = {n: g['initial_lr'] for g in t.optimizer.param_groups for n in g['names']}
    assert [lrs[f'bert.{n}.weight'] for n in ('encoder.layer.1.output.dense', 'encoder.layer.0.output.dense', 'embeddings.word_embeddings')] \
        == pytest.approx([3e-3, 1.5e-3, 7.5e-4]) and lrs['classifier.weight'] == pytest.approx(3e-2)
    t.fit()

def test_gradual_unfreeze_keeps_frozen_weights_frozen_and_resumes_in_the_same_process(tmp_path):
    "A weight the caller froze stays frozen; fit gives every requires_grad flag back, interrupted or not, so the same model object resumes to the uninterrupted run's weights"
    cfg = TrainConfig(epochs=3, gradual_unfreeze=1, **QUICK)
    def frozen_bert():
        m = bert(); m.bert.embeddings.word_embeddings.weight.requires_grad_(False); return m
    flags = {n: p.requires_grad for n, p in frozen_bert().named_parameters()}
    ref = frozen_bert(); emb = ref.bert.embeddings.word_embeddings.weight.detach().clone()
    fit(ref, dict_loader(), None, cfg, head='classifier')
    assert torch.equal(ref.bert.embeddings.word_embeddings.weight, emb)   # epoch 3 thaws everything else, not this
    assert {n: p.requires_grad for n, p in ref.named_parameters()} == flags
    class CrashAt(Callback):
        def on_step_end(self, s):
            if s.step == 8: raise KeyboardInterrupt   # in epoch 2 (6 steps an epoch): the head and layer 1 train
    m = frozen_bert()
    with pytest.raises(KeyboardInterrupt): fit(m, dict_loader(), None, cfg, [CrashAt()], out_dir=tmp_path, head='classifier')
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    fit(m, dict_loader(), None, cfg, out_dir=tmp_path, head='classifier', resume=True)
    for (n, a), b in zip(ref.named_parameters(), m.parameters()): assert torch.allclose(a, b, atol=1e-6), n

# --- any task --------------------------------------------------------------------------------------------------------

class Regressor(nn.Module):
    def __init__(self): super().__init__(); self.body, self.head = nn.Linear(3, 8), nn.Linear(8, 1)
    def forward(self, x): return self.head(torch.relu(self.body(x))).squeeze(-1)

def regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed); x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5])), batch_size=16)

def mse(z, y): return F.mse_loss(z, y)
def rmse(z, y): return {'rmse': float(F.mse_loss(z, y).sqrt())}

def test_regression_with_mse_and_eval_fn(tmp_path):
    cfg = TrainConfig(epochs=6, loss_fn=mse, eval_fn=rmse, select_metric='loss', patience=3, lr=3e-2, warmup=0.0, device='cpu')
    s = fit(Regressor(), regression(), regression(32, 1), cfg, out_dir=tmp_path)
    assert set(s.metrics) == {'loss', 'rmse'} and abs(s.metrics['rmse'] ** 2 - s.metrics['loss']) < 1e-5
    h = pd.read_csv(tmp_path/'history.csv')
    val = h[h.split == 'val']
    assert len(val) == s.epoch and val.accuracy.isna().all() and val.loss.iloc[-1] < val.loss.iloc[0]

def test_regression_without_loss_fn_or_eval_fn_is_a_clear_error():
    with pytest.raises(SpecftDataError, match='logit adjustment .* needs class ids .* pass loss_fn'):
        fit(Regressor(), regression(), None, TrainConfig(epochs=1, device='cpu'), labels=['y'])
    with pytest.raises(SpecftDataError, match="class_weights='auto' or 'sqrt' needs class ids"):
        fit(Regressor(), regression(), None, TrainConfig(epochs=1, class_weights='auto', logit_adjust=0, device='cpu'), labels=['y'])
    with pytest.raises(SpecftDataError, match='pass eval_fn'):
        fit(Regressor(), regression(), regression(), TrainConfig(epochs=1, loss_fn=mse, device='cpu'))
    with pytest.raises(SpecftConfigError, match="select_metric='macro_f1' is not among the validation metrics"):
        fit(Regressor(), regression(), regression(), TrainConfig(epochs=1, loss_fn=mse, eval_fn=rmse, select_metric='macro_f1', device='cpu'))

def test_loss_fn_sees_the_batch_for_sample_weights():
    seen = []
    def weighted(logits, y, batch):
        seen.append(batch)
        w = batch['weight'] if batch is not None else torch.ones_like(y, dtype=torch.float)
        return (F.cross_entropy(logits, y, reduction='none') * w).sum() / w.sum()
    ids, mask, y = token_data(16)
    rows = [dict(input_ids=ids[i], attention_mask=mask[i], labels=y[i], weight=torch.tensor(1.0 + i % 2)) for i in range(16)]
    class Weighted(nn.Module):   # takes (and ignores) the weight it is given with the inputs
        def __init__(self): super().__init__(); self.m = bert()
        def forward(self, input_ids, attention_mask, weight): return self.m(input_ids=input_ids, attention_mask=attention_mask)
    fit(Weighted(), DataLoader(rows, batch_size=8), DataLoader(rows, batch_size=8), TrainConfig(epochs=1, loss_fn=weighted, **QUICK),
        head='m.classifier')
    assert torch.equal(seen[0]['weight'], torch.tensor([1.0, 2.0] * 4)) and seen[-1] is None   # None: validation

# --- no surprises ----------------------------------------------------------------------------------------------------

def draws(): return torch.rand(2).tolist(), random.random(), float(np.random.rand())

def test_fit_leaves_the_callers_random_generators_alone():
    m = bert()   # built first: it seeds torch itself
    specft.core.set_seed(5); expected = draws()
    specft.core.set_seed(5)
    fit(m, dict_loader(16), dict_loader(8), TrainConfig(epochs=1, seed=123, **QUICK), head='classifier')
    assert draws() == expected

def test_a_second_fit_into_the_same_folder_is_refused_and_patience_needs_validation(tmp_path):
    cfg = TrainConfig(epochs=1, **QUICK)
    fit(bert(), dict_loader(16), None, cfg, out_dir=tmp_path, head='classifier')
    before = (tmp_path/'history.csv').read_text()
    with pytest.raises(SpecftConfigError, match='holds a run already .*overwrite=True'):
        fit(bert(), dict_loader(16), None, cfg, out_dir=tmp_path, head='classifier')
    assert (tmp_path/'history.csv').read_text() == before
    fit(bert(), dict_loader(16), None, cfg, out_dir=tmp_path, head='classifier', overwrite=True)
    with pytest.raises(SpecftConfigError, match='val_loader is None'):
        fit(bert(), dict_loader(16), None, TrainConfig(patience=1, select_metric='loss'), head='classifier')

def test_callbacks_see_each_steps_loss_with_log_every_1():
    class Losses(Callback):
        def __init__(self): self.seen = []
        def on_step_end(self, s): self.seen.append(s.loss)
    c = Losses()
    fit(bert(), dict_loader(16), None, TrainConfig(epochs=1, log_every=1, **QUICK), [c], head='classifier')
    assert len(c.seen) == 2 and all(isinstance(l, float) for l in c.seen)

# --- the engine, copied ----------------------------------------------------------------------------------------------

ENGINE = ['errors', 'core', 'optim', 'losses', 'evaluate', 'model', 'train']

def test_engine_copied_into_another_package_trains_with_every_option(tmp_path):
    pkg = tmp_path/'mylab'; pkg.mkdir(); (pkg/'__init__.py').write_text('')
    for name in ENGINE: shutil.copy(ROOT/'specft'/f'{name}.py', pkg/f'{name}.py')
    script = textwrap.dedent('''
        import sys, warnings, torch
        from mylab.model import Classifier, tiny_config
        from mylab.train import TrainConfig, fit
        from transformers import BertModel
        torch.set_num_threads(1)
        def model(): torch.manual_seed(0); return Classifier(BertModel(tiny_config(vocab_size=60)), 3)
        def batches(n, seed):
            g = torch.Generator().manual_seed(seed); ids = torch.randint(3, 60, (n, 6), generator=g)
            y = (ids[:, 0] - 3) * 3 // 57
            return [dict(input_ids=ids[i:i+4], attention_mask=torch.ones_like(ids[i:i+4]), labels=y[i:i+4]) for i in range(0, n, 4)]
        cfg = TrainConfig(epochs=3, lr=2e-3, layer_decay=0.8, gradual_unfreeze=1, class_weights='sqrt', logit_adjust=0.5,
                          label_smoothing=0.1, grad_accum=2, select_metric='macro_f1', patience=3, save_every=2, keep_last=1,
                          schedule='cosine', device='cpu', precision='fp32')
        class Crash(Exception): pass
        from mylab.train import Callback
        class CrashAt(Callback):
            def on_step_end(self, s):
                if s.step == 4: raise Crash()
        try: fit(model(), batches(24, 0), batches(8, 1), cfg, [CrashAt()], out_dir=sys.argv[1], labels=['a', 'b', 'c'])
        except Crash: pass
        s = fit(model(), batches(24, 0), batches(8, 1), cfg, out_dir=sys.argv[1], labels=['a', 'b', 'c'], resume=True)   # as a new process would
        assert s.step == s.total_steps == 9, s
        assert not any(m == 'specft' or m.startswith('specft.') for m in sys.modules), 'specft was imported'
        print('OK', s.kept_epoch)
    ''')
    r = subprocess.run([sys.executable, '-c', script, str(tmp_path/'run')], cwd=tmp_path, capture_output=True, text=True,
                       env={'PYTHONPATH': str(tmp_path), 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin'})
    assert r.returncode == 0 and r.stdout.startswith('OK'), r.stderr[-3000:]

def test_engine_modules_import_each_other_relatively():
    for name in ENGINE:
        src = (ROOT/'specft'/f'{name}.py').read_text()
        assert 'from specft' not in src and 'import specft' not in src, name

HEAVY = {'matplotlib', 'sklearn', 'scipy', 'pandas'}

def loaded(module:str)->tuple[set, bool]:
    "The heavy libraries `import module` loads in a fresh process, and whether transformers then knows a 'specft' attention"
    code = (f"import sys, {module}\nheavy = ' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r})) or '-'\n"
            "from transformers import AttentionInterface\nprint(heavy, 'specft' in AttentionInterface._global_mapping)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    return set(out[:-1]) - {'-'}, out[-1] == 'True'

def test_imports_are_light_and_register_nothing():
    assert loaded('specft.train') == (set(), False)
    assert loaded('specft.evaluate') == (set(), False)
    heavy, registered = loaded('specft.model')
    assert heavy <= {'scipy'} and not registered    # scipy: transformers' own modeling_utils imports it
    r = subprocess.run([sys.executable, '-c', "import sys, specft.privacy; print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == 'False'

# --- the other modules -----------------------------------------------------------------------------------------------

def test_cross_entropy_ignores_padding_labels():
    z, y = torch.randn(6, 3), torch.tensor([0, 2, -100, 1, -100, 2])
    assert torch.allclose(cross_entropy(z, y), F.cross_entropy(z, y), atol=1e-6)
    assert torch.allclose(cross_entropy(z, y, label_smoothing=0.2, ignore_index=-100), F.cross_entropy(z, y, label_smoothing=0.2), atol=1e-6)

LABELS = ['neg', 'neu', 'pos']

@pytest.mark.parametrize('y_pred, match', [([0.2, 0.7, 1.9], '0.2 at position 0: not a class id'),
                                           ([[0.2, 0.8], [0.6, 0.4], [1, 0]], r'argmax\(-1\)'),
                                           (['neg', 'good', 'pos'], r"names \['good'\] that are not in labels"),
                                           ([0, 1, 3], 'ids outside 0..2')])
def test_compute_metrics_refuses_what_is_not_a_class_id(y_pred, match):
    with pytest.raises(SpecftDataError, match=match): compute_metrics([0, 1, 2], y_pred, LABELS)

def test_compute_metrics_names_whole_floats_and_labels_none():
    assert compute_metrics(['neg', 'pos', 'pos'], np.array([0.0, 2.0, 1.0]), LABELS) == compute_metrics([0, 2, 2], [0, 2, 1], LABELS)
    with pytest.raises(SpecftDataError, match=r"needs labels: the class names in id order"): compute_metrics([0, 1], [0, 1], None)

def test_binary_probabilities_in_one_column_and_baseline_with_names():
    p = np.array([0.9, 0.2, 0.7, 0.4]); y = [1, 0, 0, 1]
    assert expected_calibration_error(p, y, 2) == expected_calibration_error(np.stack([1 - p, p], 1), y, 2)
    assert len(worst_errors(list('abcd'), y, p, ['no', 'yes'], k=5)) == 2
    with pytest.raises(SpecftDataError, match='pass their softmax'): reliability_bins(np.array([[3.0, -1.0]]), [0])
    texts = ['good pill', 'great drug', 'bad pill', 'awful drug', 'ok pill', 'fine drug'] * 3
    names = ['pos', 'pos', 'neg', 'neg', 'neu', 'neu'] * 3
    by_name = baseline_metrics(texts, names, texts, names, LABELS)
    by_id = baseline_metrics(texts, [LABELS.index(l) for l in names], texts, [LABELS.index(l) for l in names], LABELS)
    assert by_name == by_id and by_name['accuracy'] == 1.0

def test_mask_pii_edge_cases():
    with pytest.raises(SpecftDataError, match="mask_pii masks one text"): mask_pii(None)
    assert mask_pii('ring me on 555-1234 tonight', kinds=['phone']) == ('ring me on [PHONE] tonight', {'phone': 1})
    assert mask_pii('went from 250-1000 mg', kinds=['phone']) == ('went from 250-1000 mg', {})
    assert mask_pii('') == ('', {})

def test_split_corpus_takes_a_frame_without_a_row_column():
    words = [f'w{i}' for i in range(300)]; rng = np.random.default_rng(0)
    df = pd.DataFrame({'text': [' '.join(rng.choice(words, 8)) for _ in range(60)], 'label': ['a', 'b', 'c'] * 20})
    s = split_corpus(df, val_frac=0.2, test_frac=0.2)
    assert len(s.train) + len(s.val) + len(s.test) == 60 and sorted(s.train.row.tolist() + s.val.row.tolist() + s.test.row.tolist()) == list(range(1, 61))
    with pytest.raises(SpecftDataError, match="no column 'label'"): split_corpus(df.rename(columns={'label': 'y'}))

# --- a run folder, read by others ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('run')/'r'
    run(RunConfig(model='tiny', epochs=1, max_train_rows=48, max_len=32, batch_size=8, precision='fp32', device='cpu', out=str(out)))
    return out

def test_predictor_edge_cases(run_dir):
    p = Predictor.load(run_dir, device='cpu', batch_size=4)
    assert p.batch_size == 4 and len(p.predict('one text, not one per character')) == 1
    assert p.predict([]) == [] and p.predict_proba([]).shape == (0, len(p.labels))
    assert [r.get('empty') for r in p.predict(['', 'a fine drug'])] == [True, None]
    assert np.allclose(p.predict_proba(['a', 'b c d', 'e']), Predictor.load(run_dir, device='cpu').predict_proba(['a', 'b c d', 'e']), atol=1e-5)
    with pytest.raises(SpecftDataError, match='are not strings'): p.predict([None])
    with pytest.raises(SpecftConfigError, match='batch_size must be'): Predictor.load(run_dir, device='cpu', batch_size=0)

def test_run_folder_loads_in_transformers_with_the_trained_backbone(run_dir):
    from specft.model import load_classifier
    clf, tok = load_classifier(run_dir)
    was = hf_logging.get_verbosity(); hf_logging.set_verbosity_error()
    try: backbone = AutoModel.from_pretrained(run_dir).eval()
    finally: hf_logging.set_verbosity(was)
    x = tok(['a fine drug', 'it made me dizzy'], padding=True, return_tensors='pt')
    with torch.no_grad():
        assert torch.allclose(backbone(**x).last_hidden_state, clf.backbone(**x).last_hidden_state, atol=1e-6)
