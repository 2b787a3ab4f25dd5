"specft.adversarial: FGM and PGD on the word embeddings, checked against autograd, inside every path of the engine."
import contextlib, io, json
from unittest import mock
import pytest, torch
import torch.nn.functional as F
from torch import nn
from specft.core import SpecftConfigError, SpecftModelError
from specft.batch import make_loader
from specft.cli import main
from specft.model import build_classifier, pool
from specft.peft import PeftSettings, build_peft_classifier
from specft.pipeline import Predictor, RunConfig, run
from specft.train import (Callback, TrainConfig, Trainer, _labels_of, _to, autocast_dtype, fit, forward, latest_checkpoint,
                          logits_of, split_batch)
from specft.adversarial import EmbeddingAttack, l2_per_text, pgd_step, word_embeddings

torch.set_num_threads(1)

def data(n=40, seed=0):
    "Token ids of random length whose label is a function of the first token"
    g = torch.Generator().manual_seed(seed)
    ids = [[101] + torch.randint(1000, 1030, (int(torch.randint(2, 16, (1,), generator=g)),), generator=g).tolist() + [102]
           for _ in range(n)]
    return ids, [0 if x[1] < 1015 else 1 if x[1] < 1025 else 2 for x in ids]

def loader(bs=8, n=40, shuffle=True):
    ids, y = data(n)
    return make_loader(ids, y, bs, pad_id=0, shuffle=shuffle, seed=0)

def no_dropout(m):
    for mod in m.modules():
        if isinstance(mod, nn.Dropout): mod.p = 0.0
    return m

def model(seed=0, dropout=True):
    clf = build_classifier('tiny', 3, seed=seed)[0]
    return clf if dropout else no_dropout(clf)

def trainer(kind='fgm', m=None, **kw):
    c = TrainConfig(**{**dict(adversarial=kind, adv_eps=0.7, logit_adjust=0.0, precision='fp32', device='cpu', lr=1e-3), **kw})
    return Trainer(m if m is not None else model(dropout=False).train(), loader(), None, c)

def grads(t, group):
    t._accumulate(group)
    g = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
    t.model.zero_grad(); return g

def same(a, b): return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

@pytest.fixture
def batch(): return next(iter(loader(8, shuffle=False)))

def reference_loss(m, b):
    "The model's mean cross-entropy on batch `b` as a function of the word-embedding output (through inputs_embeds)"
    x, y = split_batch(b)
    def loss_of(e):
        h = m.backbone(inputs_embeds=e, attention_mask=x['attention_mask']).last_hidden_state
        return F.cross_entropy(m.head(pool(h, x['attention_mask'], m.pooling)), y)
    return loss_of, word_embeddings(m)(x['input_ids'])

def test_fgm_matches_autograd_and_leaves_the_embeddings_untouched(batch):
    t = trainer('fgm'); table = word_embeddings(t.model).weight.detach().clone()
    g_engine = grads(t, [batch])
    assert torch.equal(word_embeddings(t.model).weight, table)
    loss_of, e = reference_loss(t.model, batch)
    e0 = e.detach().requires_grad_()
    g, = torch.autograd.grad(loss_of(e0), e0)
    r_ref = 0.7 * g / g.flatten(1).norm(dim=1)[:, None, None]
    assert torch.allclose(t.attack.last, r_ref, atol=1e-7)
    assert torch.allclose(l2_per_text(t.attack.last).flatten(), torch.full((8,), 0.7))
    (loss_of(e) + loss_of(e + r_ref)).backward()     # grad(clean) + grad(adversarial), by hand
    for n, p in t.model.named_parameters(): assert torch.allclose(g_engine[n], p.grad, atol=1e-6), n

def test_pgd_matches_autograd_and_stays_in_the_ball(batch):
    t = trainer('pgd', adv_eps=0.5, adv_alpha=0.3, adv_steps=3)
    t._accumulate([batch])
    loss_of, e = reference_loss(t.model, batch)
    r = torch.zeros_like(e)
    for _ in range(3):
        rk = r.detach().requires_grad_()
        g, = torch.autograd.grad(loss_of(e.detach() + rk), rk)
        r = pgd_step(r, g, 0.3, 0.5)
    assert torch.allclose(t.attack.last, r, atol=1e-6)
    assert (l2_per_text(t.attack.last) <= 0.5 * (1 + 1e-6)).all()

def test_pgd_keeps_only_the_last_steps_gradient(batch):
    # the weights' gradients are grad(clean) + grad(adversarial at r_K): the intermediate passes leave no trace
    t = trainer('pgd', adv_eps=0.5, adv_alpha=0.3, adv_steps=3)
    g_engine = grads(t, [batch])
    loss_of, e = reference_loss(t.model, batch)
    (loss_of(e) + loss_of(e + t.attack.last)).backward()
    for n, p in t.model.named_parameters(): assert torch.allclose(g_engine[n], p.grad, atol=1e-6), n

def accumulate_786f9a7(self, group:list):
    "Trainer._accumulate before adversarial training existed, verbatim"
    group = [_to(b, self.device) for b in group]
    total = sum(self._norm(_labels_of(b)) for b in group)
    dt = autocast_dtype(self.precision); out = 0.0
    for b in group:
        for p in self._pieces(b):
            x, y = split_batch(p)
            with torch.autocast(self.device.type, dtype=dt, enabled=dt is not None):
                logits = logits_of(forward(self.model, x))
            loss = self._loss(logits.float(), y, total, p)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            out = out + loss.detach()
    return out

def test_none_trains_bit_identically_to_the_engine_before():
    c = TrainConfig(epochs=2, lr=1e-3, device='cpu', grad_accum=2, class_weights='auto')
    now, before = model(), model()
    fit(now, loader(), None, c)
    with mock.patch.object(Trainer, '_accumulate', accumulate_786f9a7): fit(before, loader(), None, c)
    assert same(now, before) and not same(now, model())
    assert trainer('none').attack is None

def test_pieces_and_the_grad_scaler_change_nothing(batch):
    t = trainer('fgm')
    whole = grads(t, [batch])
    t.state.micro_split = 4
    pieces = grads(t, [batch]); t.state.micro_split = 1
    for n in whole: assert torch.allclose(whole[n], pieces[n], atol=1e-6), n
    t.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10)
    scaled = grads(t, [batch])
    for n in whole: assert torch.equal(scaled[n] / 2 ** 10, whole[n]), n

def test_accumulation_group_equals_one_batch():
    # two batches accumulated into one step, or one batch of both: the same gradients with the attack (per-text norms)
    ids, y = data(16)
    t = trainer('fgm')
    small = list(make_loader(ids, y, 8, pad_id=0, bucket=False))
    big = list(make_loader(ids, y, 16, pad_id=0, bucket=False))
    g_small, g_big = grads(t, small), grads(t, big)
    for n in g_big: assert torch.allclose(g_small[n], g_big[n], atol=2e-6), n

@pytest.mark.parametrize('flags,msg', [(['--adversarial', 'fgsm'], 'use one of: none, fgm, pgd'),
                                       (['--adversarial', 'fgm', '--adv-eps', '0'], '--adv-eps must be a number > 0'),
                                       (['--adversarial', 'fgm', '--adv-eps', '-1'], '--adv-eps must be a number > 0'),
                                       (['--adversarial', 'pgd', '--adv-steps', '0'], '--adv-steps must be a whole number >= 1'),
                                       (['--adversarial', 'pgd', '--adv-alpha', 'nan'], '--adv-alpha must be a number > 0')])
def test_bad_flags_are_one_line_and_exit_2(flags, msg, tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(['train', '--model', 'tiny', '--out', str(tmp_path/'run'), *flags])
    assert code == 2 and msg in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
    assert not (tmp_path/'run'/'history.csv').exists()

class At(Callback):
    def __init__(self, k): self.k = k
    def on_step_end(self, state):
        if state.step == self.k: raise KeyboardInterrupt

def test_resume_with_fgm_is_bit_identical(tmp_path):
    # dropout on, accumulation, a checkpoint mid-epoch: killed after step 5, resumed from step 4
    c = TrainConfig(epochs=2, lr=1e-3, device='cpu', grad_accum=2, save_every=2, adversarial='fgm', log_every=2)
    ref = model(); fit(ref, loader(), None, c, out_dir=tmp_path/'a')
    m = model()
    with pytest.raises(KeyboardInterrupt): fit(m, loader(), None, c, [At(5)], out_dir=tmp_path/'b')
    assert latest_checkpoint(tmp_path/'b').name == 'step-4'
    m2 = model(seed=99)
    fit(m2, loader(), None, c, out_dir=tmp_path/'b', resume=True)
    assert same(ref, m2)
    assert (tmp_path/'a/history.csv').read_text() == (tmp_path/'b/history.csv').read_text()

def test_a_lora_run_with_fgm(tmp_path):
    lora = no_dropout(build_peft_classifier('tiny', 3, PeftSettings(method='lora'), seed=0)[0])
    b = next(iter(loader(8, shuffle=False)))
    with_attack, without = grads(trainer('fgm', lora.train()), [b]), grads(trainer('none', lora), [b])
    assert 'backbone.embeddings.word_embeddings.weight' not in with_attack and with_attack.keys() == without.keys()
    assert any(not torch.allclose(with_attack[n], without[n]) for n in with_attack if 'lora_' in n)
    words = {0: 'excellent', 1: 'okay', 2: 'awful'}
    rows = [f"r{i} w{7 * i % 50} w{(3 * i + 1) % 50} {words[i % 3]},{words[i % 3]}" for i in range(90)]
    (tmp_path/'reviews.csv').write_text('text,label\n' + '\n'.join(rows) + '\n')
    res = run(RunConfig(data=str(tmp_path/'reviews.csv'), model='tiny', method='lora', adversarial='pgd', adv_steps=2,
                        epochs=1, max_len=16, val_frac=0.2, device='cpu', out=str(tmp_path/'lora')))
    assert json.loads((res.run_dir/'run.json').read_text())['config']['adversarial'] == 'pgd'
    assert len(Predictor.load(res.run_dir, device='cpu').predict(['it helped', 'awful'])) == 2

def test_data_parallel_and_models_without_embeddings_are_refused():
    with mock.patch('torch.distributed.is_initialized', return_value=True), \
         mock.patch('torch.distributed.get_world_size', return_value=2):
        with pytest.raises(SpecftConfigError, match='does not run data-parallel'): trainer('fgm')
    class Bag(nn.Module):
        def __init__(self): super().__init__(); self.head = nn.Linear(4, 3)
        def forward(self, x): return self.head(x)
    dl = [(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(SpecftModelError, match="adversarial='none'"):
        fit(Bag(), dl, None, TrainConfig(adversarial='fgm', device='cpu', logit_adjust=0.0))
