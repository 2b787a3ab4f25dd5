"specft.train: the training engine's promises, on the tiny model and the CPU."
import csv, json, threading, warnings
from pathlib import Path
import pytest, torch
from torch import nn
from safetensors.torch import load_file
from specft.core import SpecftConfigError, SpecftTrainingError
from specft.batch import make_loader
from specft.model import build_classifier, encoder_layers
from specft.train import (Callback, TrainConfig, Trainer, HistoryLogger, HISTORY_COLUMNS, class_weights_from, fit,
                          latest_checkpoint, optimizer_step, predict_logits, train_labels)

torch.set_num_threads(1)

def data(n=40, seed=0):
    "Token ids of random length whose label is a function of the first token: learnable, imbalanced"
    g = torch.Generator().manual_seed(seed)
    ids = [[101] + torch.randint(1000, 1030, (int(torch.randint(2, 16, (1,), generator=g)),), generator=g).tolist() + [102]
           for _ in range(n)]
    return ids, [0 if x[1] < 1015 else 1 if x[1] < 1025 else 2 for x in ids]

def loaders(bs=8, n=40, shuffle=True, bucket=True, seed=0):
    ids, y = data(n); vids, vy = data(16, seed=1)
    return (make_loader(ids, y, bs, pad_id=0, shuffle=shuffle, seed=seed, bucket=bucket),
            make_loader(vids, vy, 8, pad_id=0))

def model(seed=0, dropout=True):
    clf, _ = build_classifier('tiny', 3, seed=seed)
    if not dropout:
        for m in clf.modules():
            if isinstance(m, nn.Dropout): m.p = 0.0
    return clf

def cfg(**kw): return TrainConfig(**{**dict(epochs=2, lr=1e-3, warmup=0.1, device='cpu', log_every=2), **kw})

def same(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

class At(Callback):
    "Run `fn(state)` at the end of step `k`"
    def __init__(self, k, fn): self.k, self.fn = k, fn
    def on_step_end(self, state):
        if state.step == self.k: self.fn(state)

def crash(state): raise KeyboardInterrupt
def stop(state): state.should_stop = True

def test_grad_accumulation_equals_big_batch():
    # 10 rows: one batch of 10, or batches of 4, 4, 2 accumulated. Unequal batches and class weights catch a
    # loss averaged per batch; label smoothing rides along. Dropout off; padding differs, so a float tolerance.
    # fp32: the identity is exact arithmetic (bf16, the CPU default where supported, rounds the two sums apart).
    ids, y = data(10)
    c = dict(epochs=3, warmup=0.0, log_every=1, label_smoothing=0.1, class_weights='auto', precision='fp32')
    big, small = model(dropout=False), model(dropout=False)
    losses = {}
    class Losses(Callback):
        def __init__(self, key): self.key = key
        def on_step_end(self, s): losses.setdefault(self.key, []).append(s.loss)
    s1 = fit(big, make_loader(ids, y, 10, 0, bucket=False), None, cfg(**c), [Losses('big')])
    s2 = fit(small, make_loader(ids, y, 4, 0, bucket=False), None, cfg(grad_accum=3, **c), [Losses('small')])
    assert s1.step == s2.step == 3
    assert torch.allclose(torch.tensor(losses['big']), torch.tensor(losses['small']), atol=1e-6)
    for (n, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        assert torch.allclose(a, b, atol=2e-6), n
    assert not same(big, model(dropout=False))   # it did train

def test_exact_resume_is_bit_identical(tmp_path):
    # shuffled, bucketed batches, dropout on, accumulation, a checkpoint mid-epoch
    c = cfg(epochs=3, grad_accum=2, save_every=2)
    ref = model(); tl, _ = loaders(); s_ref = fit(ref, tl, None, c, out_dir=tmp_path/'a')
    for k in (3, 7):  # crash after step k: resume from step 2 (mid-epoch 1) and step 6 (mid-epoch 2)
        m = model(); tl, _ = loaders()
        with pytest.raises(KeyboardInterrupt): fit(m, tl, None, c, [At(k, crash)], out_dir=tmp_path/f'b{k}')
        assert latest_checkpoint(tmp_path/f'b{k}').name == f'step-{k - 1}'
        m2 = model(seed=99); tl, _ = loaders()   # other weights: the checkpoint must replace them
        s = fit(m2, tl, None, c, out_dir=tmp_path/f'b{k}', resume=True)
        assert s.step == s_ref.step and same(ref, m2)
        assert (tmp_path/'a/history.csv').read_text() == (tmp_path/f'b{k}/history.csv').read_text()

def test_resume_restores_same_kept_epoch(tmp_path):
    c = cfg(epochs=3, lr=3e-3, select_metric='macro_f1')   # the best epoch, whose weights must survive the crash in kept/
    ref = model(); tl, vl = loaders(); s_ref = fit(ref, tl, vl, c, out_dir=tmp_path/'a')
    m = model(); tl, vl = loaders()
    with pytest.raises(KeyboardInterrupt): fit(m, tl, vl, c, [At(s_ref.steps_per_epoch * 2 + 1, crash)], out_dir=tmp_path/'b')
    m2 = model(seed=5); tl, vl = loaders()
    s = fit(m2, tl, vl, c, out_dir=tmp_path/'b', resume=True)
    assert (s.kept_epoch, s.kept_metric, s.metrics) == (s_ref.kept_epoch, s_ref.kept_metric, s_ref.metrics)
    assert same(ref, m2)

def test_same_seed_same_metrics(tmp_path):
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        tl, vl = loaders(); s = fit(model(), tl, vl, cfg(seed=seed), out_dir=tmp_path/str(i))
        runs.append((s.metrics, (tmp_path/str(i)/'history.csv').read_text()))
    assert runs[0] == runs[1]
    assert runs[0][1] != runs[2][1]   # another seed, other dropout: other losses

def test_nan_loss_names_step_and_keeps_last_checkpoint(tmp_path):
    calls = []
    def nan_at_5(logits, y):
        calls.append(1)
        loss = nn.functional.cross_entropy(logits, y)
        return loss * float('nan') if len(calls) == 5 else loss
    tl, vl = loaders()
    with pytest.raises(SpecftTrainingError, match='at step 5') as e:
        fit(model(), tl, vl, cfg(loss_fn=nan_at_5, save_every=2), out_dir=tmp_path)
    assert 'step-4' in str(e.value)
    assert latest_checkpoint(tmp_path).name == 'step-4'
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path/'checkpoints/step-4/model.safetensors').values())

def test_incomplete_checkpoint_is_ignored(tmp_path):
    c = cfg(epochs=2, save_every=2)
    ref = model(); tl, _ = loaders(); fit(ref, tl, None, c, out_dir=tmp_path/'a')
    m = model(); tl, _ = loaders()
    with pytest.raises(KeyboardInterrupt): fit(m, tl, None, c, [At(5, crash)], out_dir=tmp_path/'b')
    ck = tmp_path/'b/checkpoints'
    # a later checkpoint whose state.json never got written (a crash mid-write), and a leftover temp folder
    for name in ('step-9', '.tmp-step-10'):
        (ck/name).mkdir(); (ck/name/'model.safetensors').write_bytes(b'garbage')
    assert latest_checkpoint(tmp_path/'b').name == 'step-4'
    m2 = model(seed=3); tl, _ = loaders()
    fit(m2, tl, None, c, out_dir=tmp_path/'b', resume=True)
    assert same(ref, m2)

def test_last_two_checkpoints_kept_and_the_kept_epoch(tmp_path):
    tl, vl = loaders()
    s = fit(model(), tl, vl, cfg(epochs=3, save_every=1, select_metric='macro_f1'), out_dir=tmp_path)
    names = sorted(p.name for p in (tmp_path/'checkpoints').iterdir())
    assert names == sorted(['kept', f'step-{s.step - 1}', f'step-{s.step}'])
    for p in (tmp_path/'checkpoints').iterdir():
        assert {'model.safetensors', 'state.json'} <= {f.name for f in p.iterdir()}
    kept = json.loads((tmp_path/'checkpoints/kept/state.json').read_text())['state']
    assert (kept['kept_epoch'], kept['kept_metric']) == (s.kept_epoch, s.kept_metric)
    step = {f.name for f in (tmp_path/f'checkpoints/step-{s.step}').iterdir()}
    assert step == {'model.safetensors', 'optimizer.pt', 'scheduler.pt', 'rng.pt', 'state.json'}
    for f in ('optimizer.pt', 'scheduler.pt', 'rng.pt'):   # loadable without pickle's code execution
        torch.load(tmp_path/f'checkpoints/step-{s.step}'/f, weights_only=True)

def test_select_metric_last_writes_no_copy_of_the_weights(tmp_path):
    "With 'last' the newest checkpoint holds the weights the run ends with: no kept/ folder at any time"
    seen = []
    class Dirs(Callback):
        def on_checkpoint(self, s, path): seen.append(sorted(p.name for p in path.parent.iterdir()))
    tl, vl = loaders()
    s = fit(model(), tl, vl, cfg(epochs=3, save_every=2), [Dirs()], out_dir=tmp_path)
    assert seen and not any('kept' in names for names in seen)
    assert s.kept_epoch == 3 and s.kept_metrics == s.metrics

def test_remove_checkpoints(tmp_path):
    from specft.train import remove_checkpoints
    tl, vl = loaders()
    fit(model(), tl, vl, cfg(select_metric='macro_f1'), out_dir=tmp_path)
    assert (tmp_path/'checkpoints/kept').is_dir()
    remove_checkpoints(tmp_path, keep_steps=True)
    assert {p.name for p in (tmp_path/'checkpoints').iterdir()} == {f'step-{len(tl)}', f'step-{2 * len(tl)}'}
    remove_checkpoints(tmp_path); remove_checkpoints(tmp_path)   # twice: nothing left to delete is fine
    assert not (tmp_path/'checkpoints').exists()

def test_should_stop_from_callback_stops_after_that_step_and_keeps_best(tmp_path):
    tl, vl = loaders(); spe = len(tl)
    snaps = {}
    class Snap(Callback):
        def on_evaluate(self, s): snaps[s.epoch] = {k: v.clone() for k, v in m.state_dict().items()}
    m = model()
    s = fit(m, tl, vl, cfg(epochs=4, lr=3e-3, select_metric='macro_f1'), [Snap(), At(spe * 2 + 2, stop)], out_dir=tmp_path)
    assert s.step == spe * 2 + 2 and s.epoch == 3 and s.kept_epoch in (1, 2)
    assert all(torch.equal(v, snaps[s.kept_epoch][k]) for k, v in m.state_dict().items())
    assert latest_checkpoint(tmp_path).name == f'step-{s.step}'   # a stopped run can be resumed

def test_should_stop_with_last_keeps_and_validates_the_weights_at_the_stop():
    tl, vl = loaders(); spe = len(tl); m = model()
    s = fit(m, tl, vl, cfg(epochs=4), [At(spe * 2 + 2, stop)])
    assert (s.step, s.kept_epoch) == (spe * 2 + 2, 3) and s.kept_metrics == s.metrics
    from specft.core import choose_precision
    from specft.evaluate import compute_metrics
    from specft.train import predict_with_labels
    logits, y = predict_with_labels(m, vl, 'cpu', choose_precision('auto', 'cpu'))   # the model as fit left it
    assert compute_metrics(y.tolist(), logits.argmax(-1).tolist(), ['0', '1', '2'])['accuracy'] == s.metrics['accuracy']

def test_should_stop_from_another_thread():
    tl, vl = loaders(); state = {}
    def later(s):
        t = threading.Thread(target=lambda: setattr(s, 'should_stop', True)); t.start(); t.join()
    s = fit(model(), tl, vl, cfg(epochs=3), [At(3, later)])
    assert s.step == 3 and s.kept_epoch == 1 and s.metrics   # evaluated once, so the kept model has metrics

def test_history_csv_columns_and_rows(tmp_path):
    tl, vl = loaders()   # 40 rows / 8 = 5 steps per epoch; log every 2
    fit(model(), tl, vl, cfg(epochs=2, log_every=2), out_dir=tmp_path)
    with open(tmp_path/'history.csv', newline='') as f: rows = list(csv.reader(f))
    assert rows[0] == HISTORY_COLUMNS == ['step', 'epoch', 'split', 'loss', 'lr', 'accuracy', 'macro_f1']
    got = [(int(r[0]), int(r[1]), r[2]) for r in rows[1:]]
    assert got == [(2, 1, 'train'), (4, 1, 'train'), (5, 1, 'val'), (6, 2, 'train'), (8, 2, 'train'),
                   (10, 2, 'train'), (10, 2, 'val')]
    for r in rows[1:]:
        float(r[3]); float(r[4])
        assert (r[5] == r[6] == '') == (r[2] == 'train')

def test_class_weights_auto_values():
    w = class_weights_from([0] * 6 + [1] * 3 + [2], 3)
    expected = torch.tensor([1 / 6, 1 / 3, 1.0]); expected /= expected.mean()
    assert torch.allclose(w, expected) and abs(w.mean().item() - 1) < 1e-6
    ids, y = data(40); tl = make_loader(ids, y, 8, 0, shuffle=True)
    t = Trainer(model(), tl, None, cfg(class_weights='auto'))
    counts = torch.bincount(torch.tensor(y), minlength=3).double()
    assert sorted(train_labels(tl)) == sorted(y)
    assert torch.allclose(t.weight, ((1 / counts) / (1 / counts).mean()).float())
    assert Trainer(model(), tl, None, cfg(class_weights='none')).weight is None

def test_logit_adjusted_loss_shifts_by_tau_log_prior_and_favours_rare_classes():
    ids, y = data(40); tl = make_loader(ids, y, 8, 0, shuffle=True)
    prior = torch.bincount(torch.tensor(y), minlength=3).float() / len(y)
    t = Trainer(model(), tl, None, cfg(logit_adjust=0.5, class_weights='none'))
    assert torch.allclose(t.shift, 0.5 * prior.log()) and prior.min() < 0.3   # the toy data is imbalanced
    z, yb = torch.randn(8, 3), torch.tensor(y[:8])
    assert torch.allclose(t._loss(z, yb, 8), torch.nn.functional.cross_entropy(z + 0.5 * prior.log(), yb))
    assert Trainer(model(), tl, None, cfg(logit_adjust=0.0)).shift is None      # tau 0: plain cross-entropy
    # The same run with and without the adjustment: the adjusted model puts more probability on the rarest class
    rare = int(prior.argmin()); vl = make_loader(ids, y, 8, 0)
    plain, adjusted = model(dropout=False), model(dropout=False)
    fit(plain, tl, None, cfg(class_weights='none', epochs=3, logit_adjust=0.0))
    fit(adjusted, tl, None, cfg(class_weights='none', epochs=3, logit_adjust=1.0))
    p = lambda m: predict_logits(m, vl).softmax(-1)[:, rare].mean()
    assert p(adjusted) > p(plain)
    with pytest.raises(SpecftConfigError, match='--logit-adjust'): Trainer(model(), tl, None, cfg(logit_adjust=-0.1))

class SkippingScaler:
    "Stands in for a GradScaler that found inf gradients: it skips the step and halves the scale"
    def __init__(self): self.scale, self.steps = 2.0 ** 16, 0
    def unscale_(self, opt): pass
    def get_scale(self): return self.scale
    def step(self, opt): pass
    def update(self): self.scale /= 2

def test_scheduler_not_stepped_when_scaler_skips():
    w = nn.Parameter(torch.ones(3)); opt = torch.optim.AdamW([w], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.1 * (t + 1))
    (w ** 2).sum().backward()
    assert optimizer_step(opt, sched, SkippingScaler(), max_grad_norm=1.0) is False
    assert sched.last_epoch == 0 and torch.equal(w.detach(), torch.ones(3)) and w.grad is None
    (w ** 2).sum().backward()
    assert optimizer_step(opt, sched, None, max_grad_norm=1.0) is True and sched.last_epoch == 1

def oom_above(clf, limit):
    "Make `clf` run out of 'memory' on batches larger than `limit` rows"
    forward = clf.forward
    def f(input_ids, attention_mask):
        if len(input_ids) > limit: raise torch.OutOfMemoryError('simulated')
        return forward(input_ids, attention_mask)
    clf.forward = f
    return clf

def test_out_of_memory_halves_batch_and_keeps_effective_batch():
    tl, _ = loaders(bucket=False, shuffle=False)
    ref = model(dropout=False); fit(ref, tl, None, cfg(precision='fp32'))   # fp32: the sums regroup exactly
    m = oom_above(model(dropout=False), 3); tl, _ = loaders(bucket=False, shuffle=False)
    with pytest.warns(UserWarning, match='halving the batch'):
        s = fit(m, tl, None, cfg(precision='fp32'))
    assert s.micro_split == 4   # 8 -> 4 -> 2 rows per forward
    for a, b in zip(ref.state_dict().values(), m.state_dict().values()): assert torch.allclose(a, b, atol=2e-6)

def test_early_stopping_patience():
    tl, vl = loaders()
    s = fit(model(), tl, vl, cfg(epochs=5, lr=1e-12, patience=2, select_metric='macro_f1'))   # lr ~0: nothing improves on epoch 1
    assert (s.kept_epoch, s.epoch, s.step) == (1, 3, 3 * len(tl))
    with pytest.raises(SpecftConfigError, match="select_metric='last'"): fit(model(), tl, vl, cfg(patience=2))

def test_layer_decay_and_gradual_unfreeze():
    m = model(); L = len(encoder_layers(m)); tl, _ = loaders()
    t = Trainer(m, tl, None, cfg(lr=1e-3, head_lr_scale=10, layer_decay=0.5))
    lr = {n: g['initial_lr'] for g in t.optimizer.param_groups for n in g['names']}
    assert lr['head.weight'] == pytest.approx(1e-2)
    assert lr[f'backbone.encoder.layer.{L - 1}.attention.self.query.weight'] == pytest.approx(1e-3)
    assert lr['backbone.encoder.layer.0.attention.self.query.weight'] == pytest.approx(1e-3 * 0.5 ** (L - 1))
    assert lr['backbone.embeddings.word_embeddings.weight'] == pytest.approx(1e-3 * 0.5 ** L)
    m = model(); start = {k: v.clone() for k, v in m.state_dict().items()}; seen = {}
    class Changed(Callback):
        def on_epoch_end(self, s): seen[s.epoch] = {k for k, v in m.state_dict().items() if not torch.equal(v, start[k])}
    fit(m, tl, None, cfg(epochs=3, gradual_unfreeze=1), [Changed()])
    assert seen[1] == {'head.weight', 'head.bias'}
    assert all(k.startswith(('head.', f'backbone.encoder.layer.{L - 1}.')) for k in seen[2]) and len(seen[2]) > 2
    assert any(k.startswith('backbone.embeddings.') for k in seen[3])

def test_predict_logits_in_dataset_order():
    ids, y = data(30); m = model()
    a = predict_logits(m, make_loader(ids, y, 8, 0, shuffle=True, bucket=True), 'cpu')
    b = predict_logits(m, make_loader(ids, None, 30, 0), 'cpu')
    assert torch.allclose(a, b, atol=1e-5)

def test_bf16_on_cpu_trains():
    tl, vl = loaders()
    s = fit(model(), tl, vl, cfg(precision='bf16'))
    assert s.step == 2 * len(tl) and s.metrics['loss'] == s.metrics['loss']

def test_clear_config_errors(tmp_path):
    tl, vl = loaders()
    with pytest.raises(SpecftConfigError, match="--select-metric 'f1' is not known"): fit(model(), tl, vl, cfg(select_metric='f1'))
    with pytest.raises(SpecftConfigError, match='out_dir'): fit(model(), tl, vl, cfg(), resume=True)
    try: import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(SpecftConfigError, match='pip install tensorboard'): fit(model(), tl, vl, cfg(log='tensorboard'))

def test_resume_with_other_settings_is_refused(tmp_path):
    tl, vl = loaders(); fit(model(), tl, vl, cfg(), out_dir=tmp_path)
    with pytest.raises(SpecftConfigError, match="resume with the run's own settings"):
        fit(model(), tl, vl, cfg(epochs=3), out_dir=tmp_path, resume=True)

def test_resume_without_checkpoint_warns_and_starts_afresh(tmp_path):
    tl, vl = loaders()
    with pytest.warns(UserWarning, match='starting afresh'): s = fit(model(), tl, vl, cfg(), out_dir=tmp_path, resume=True)
    assert s.step == 2 * len(tl)

def test_predict_keeps_a_random_loaders_order():
    "A loader whose order is random (no set_epoch) is not 'reordered' by a second, different draw"
    from specft.train import predict_with_labels
    ids, y = data(20); m = model(); collate = make_loader(ids, y, 4, 0).collate_fn
    def dl(): return torch.utils.data.DataLoader(list(zip(ids, y)), batch_size=4, shuffle=True, collate_fn=collate,
                                                 generator=torch.Generator().manual_seed(0))
    seen = [int(v) for b in dl() for v in b['labels']]
    _, got = predict_with_labels(m, dl(), 'cpu')
    assert got.tolist() == seen != y

def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip('tensorboard')
    tl, vl = loaders()
    fit(model(), tl, vl, cfg(log='tensorboard'), out_dir=tmp_path)
    assert list((tmp_path/'tensorboard').glob('events.out.tfevents.*'))
