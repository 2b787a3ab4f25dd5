"""specft.optim: error messages and regressions. The teaching claims (each optimiser, parameter group and schedule
against torch and transformers) are checked where they are taught, in nbs/02_optim.ipynb."""
import copy
from functools import partial

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, get_scheduler

from specft.core import SpecftConfigError
from specft.losses import cross_entropy
from specft.optim import AdamW, StepOptimizer, decays, lr_lambda, param_groups, sgd_step


class Tiny(nn.Module):
    "A tiny random BERT (2 layers, hidden 32) with a linear head on the mean-pooled output"
    def __init__(self, seed=0, dropout=0.0):
        super().__init__()
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        self.backbone, self.head = BertModel(cfg, add_pooling_layer=False), nn.Linear(32, 3)

    def forward(self, ids, mask):
        h = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def batches(n, seed=0, bs=8, seq=16):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 1000, (bs, seq), generator=g)
        mask = (torch.arange(seq) < torch.randint(3, seq + 1, (bs, 1), generator=g)).long()
        out.append((ids * mask, mask, torch.randint(0, 3, (bs,), generator=g)))
    return out


def train(model, opt, data, sched=None):
    for ids, mask, y in data:
        loss = cross_entropy(model(ids, mask), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if sched is not None: sched.step()


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


head_x10 = lambda n: 10.0 if n.startswith('head.') else 1.0


# ---------------------------------------------------------------- AdamW against torch: what the lesson does not show

def test_adamw_matches_torch_with_other_hyperparameters():
    "The lesson trains with the defaults; other betas and eps must reach the step functions too"
    hp = dict(lr=3e-4, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    ours, ref = Tiny(), Tiny()
    wd, lr = hp['weight_decay'], hp['lr']
    kw = {k: v for k, v in hp.items() if k not in ('weight_decay', 'lr')}
    g_ours, g_ref = param_groups(ours, wd, lr, head_x10), param_groups(ref, wd, lr, head_x10)
    assert {g['weight_decay'] for g in g_ours} == {0.0, wd} and len({g['lr'] for g in g_ours}) == 2
    data = batches(100)
    train(ours, AdamW(g_ours, **kw), data)
    train(ref, torch.optim.AdamW(g_ref, **kw), data)
    assert max_diff(ours, ref) <= 1e-6
    assert max_diff(ours, Tiny()) > 1e-2          # it did train


def test_adamw_default_hyperparameters_match_torch():
    sig_ours = AdamW([nn.Parameter(torch.zeros(1))]).defaults
    sig_ref = torch.optim.AdamW([nn.Parameter(torch.zeros(1))]).defaults
    for k in ('lr', 'betas', 'eps', 'weight_decay'): assert sig_ours[k] == sig_ref[k]


def test_adamw_with_schedule_and_dropout_matches_torch():
    ours, ref = Tiny(dropout=0.1), Tiny(dropout=0.1)
    data, sched = batches(30, seed=1), partial(lr_lambda, warmup_steps=5, total_steps=30, kind='cosine')
    o1, o2 = AdamW(param_groups(ours, 0.01, 1e-3, head_x10)), torch.optim.AdamW(param_groups(ref, 0.01, 1e-3, head_x10))
    torch.manual_seed(5); train(ours, o1, data, torch.optim.lr_scheduler.LambdaLR(o1, sched))
    torch.manual_seed(5); train(ref, o2, data, torch.optim.lr_scheduler.LambdaLR(o2, sched))
    assert max_diff(ours, ref) <= 1e-6


def test_adamw_state_dict_resume_is_exact():
    data = batches(20, seed=2)
    straight = Tiny(); opt = AdamW(param_groups(straight, 0.01, 1e-3)); train(straight, opt, data)
    first = Tiny(); opt1 = AdamW(param_groups(first, 0.01, 1e-3)); train(first, opt1, data[:10])
    second = copy.deepcopy(first); opt2 = AdamW(param_groups(second, 0.01, 1e-3))
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))
    train(second, opt2, data[10:])
    assert max_diff(straight, second) == 0.0


# ---------------------------------------------------------------- errors and edge cases

def test_user_errors():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(SpecftConfigError, match='negative'): StepOptimizer(p, [sgd_step], lr=-0.1)
    with pytest.raises(SpecftConfigError, match='betas'): AdamW(p, betas=(0.9, 1.5))
    with pytest.raises(SpecftConfigError, match='weight_decay'): AdamW(p, weight_decay=-1)
    with pytest.raises(SpecftConfigError, match="'linear' or 'cosine'"): lr_lambda(3, 1, 10, 'exponential')
    m = Tiny().requires_grad_(False)
    with pytest.raises(SpecftConfigError, match='no trainable parameters.*unfreeze'): param_groups(m, 0.01, 1e-4)


def test_params_without_grad_are_left_alone():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = AdamW([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))


# ---------------------------------------------------------------- param_groups

def test_param_groups_catches_norm_weights_by_name_and_rms_norm():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.rms_norm = nn.RMSNorm(4)
            self.scale2d = nn.Parameter(torch.ones(1, 4))     # 2-D but not a norm: decays
            self.final_norm_w = nn.Parameter(torch.ones(1, 4))  # 2-D but named a norm: no decay
    groups = param_groups(Odd(), 0.1, 1e-3)
    no = {n for g in groups if g['weight_decay'] == 0 for n in g['names']}
    assert no == {'proj.bias', 'rms_norm.weight', 'final_norm_w'}
    assert decays('scale2d', torch.ones(1, 4)) and not decays('x.bias', torch.ones(3, 3))


def test_param_groups_work_with_torch_optimizers_and_keep_names():
    m = Tiny()
    opt = torch.optim.AdamW(param_groups(m, 0.01, 1e-4, head_x10), fused=True)
    assert all('names' in g for g in opt.param_groups)
    train(m, opt, batches(2))


# ---------------------------------------------------------------- lr_lambda

def _lrs(make, T):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, out = make(opt), []
    for _ in range(T + 1):
        out.append(sched.get_last_lr()[0]); opt.step(); sched.step()
    return out


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
@pytest.mark.parametrize('W,T', [(0, 1), (1, 10), (5, 5), (37, 1000)])
def test_lr_lambda_edge_cases_equal_get_scheduler(kind, W, T):
    "Edge cases the lesson does not show: one step in all, warmup to the last step, odd lengths"
    ref = _lrs(lambda o: get_scheduler(kind, o, num_warmup_steps=W, num_training_steps=T), T)
    ours = [lr_lambda(t, W, T, kind) for t in range(T + 1)]
    assert ours == pytest.approx(ref, abs=1e-12)
    via_lambdalr = _lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, partial(lr_lambda, warmup_steps=W, total_steps=T, kind=kind)), T)
    assert via_lambdalr == pytest.approx(ref, abs=1e-12)
