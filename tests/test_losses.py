"specft.losses against torch.nn.functional: random inputs, several seeds and shapes, weights and smoothing together."
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from specft.core import SpecftConfigError, SpecftDataError, SpecftError
from specft.losses import (binary_cross_entropy, class_weights, cross_entropy, cross_entropy_grad, l2_penalty,
                           log_softmax, logsumexp)

SHAPES = [(1, 2), (5, 3), (32, 3), (17, 10)]


def _inputs(seed, N, C, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(N, C, generator=g) * scale).to(dtype)
    y = torch.randint(0, C, (N,), generator=g)
    w = (torch.rand(C, generator=g) * 3 + 0.05).to(dtype)
    return z, y, w


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('N,C', SHAPES)
@pytest.mark.parametrize('use_weight', [False, True])
@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3, 1.0])
def test_cross_entropy_matches_torch(seed, N, C, use_weight, eps):
    z, y, w = _inputs(seed, N, C)
    weight = w if use_weight else None
    ours = cross_entropy(z, y, weight=weight, label_smoothing=eps)
    ref = F.cross_entropy(z, y, weight=weight, label_smoothing=eps)
    assert abs(ours.item() - ref.item()) < 1e-6


@pytest.mark.parametrize('scale', [10.0, 100.0, 1000.0])
@pytest.mark.parametrize('use_weight', [False, True])
def test_cross_entropy_large_logits_float64(scale, use_weight):
    z, y, w = _inputs(7, 20, 5, scale=scale, dtype=torch.float64)
    weight = w if use_weight else None
    for eps in (0.0, 0.2):
        ours, ref = cross_entropy(z, y, weight, eps), F.cross_entropy(z, y, weight=weight, label_smoothing=eps)
        assert torch.isfinite(ours) and abs(ours.item() - ref.item()) < 1e-6


def test_cross_entropy_large_logits_float32_stay_finite():
    z = torch.tensor([[1000., 0., -1000.], [-500., -400., -600.]])
    y = torch.tensor([2, 0])
    ours = cross_entropy(z, y)
    assert torch.isfinite(ours)
    assert torch.allclose(ours, F.cross_entropy(z, y), rtol=1e-6)


def test_weights_and_smoothing_follow_torch_not_per_example_weighting():
    z, y, w = _inputs(3, 12, 4)
    q = 0.8 * F.one_hot(y, 4) + 0.2 / 4
    per_example = (w[y] * -(q * F.log_softmax(z, -1)).sum(-1)).sum() / w[y].sum()
    ours = cross_entropy(z, y, w, 0.2)
    assert abs(ours.item() - F.cross_entropy(z, y, weight=w, label_smoothing=0.2).item()) < 1e-6
    assert abs(ours.item() - per_example.item()) > 1e-4


def test_only_weight_ratios_matter_in_the_mean():
    z, y, w = _inputs(4, 9, 3)
    assert abs(cross_entropy(z, y, w, 0.1).item() - cross_entropy(z, y, 7.5 * w, 0.1).item()) < 1e-6


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('use_weight', [False, True])
@pytest.mark.parametrize('eps', [0.0, 0.25])
def test_cross_entropy_gradients_match_torch_and_formula(seed, use_weight, eps):
    z, y, w = _inputs(seed, 8, 5)
    weight = w if use_weight else None
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    cross_entropy(z1, y, weight, eps).backward()
    F.cross_entropy(z2, y, weight=weight, label_smoothing=eps).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)
    assert torch.allclose(cross_entropy_grad(z, y, weight, eps), z2.grad, atol=1e-6)


def test_gradient_is_softmax_minus_onehot():
    z, y, _ = _inputs(0, 6, 4)
    expected = (F.softmax(z, -1) - F.one_hot(y, 4)) / 6
    assert torch.allclose(cross_entropy_grad(z, y), expected, atol=1e-7)


@pytest.mark.parametrize('scale', [1.0, 50.0, 500.0])
def test_logsumexp_and_log_softmax(scale):
    z = torch.randn(4, 6, 7, generator=torch.Generator().manual_seed(1)) * scale
    assert torch.allclose(logsumexp(z), torch.logsumexp(z, -1), rtol=1e-6, atol=1e-5)
    assert torch.allclose(log_softmax(z), F.log_softmax(z, -1), rtol=1e-6, atol=1e-5)
    assert torch.isfinite(log_softmax(z)).all()


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('shape', [(1,), (10,), (4, 5), (2, 3, 4)])
def test_binary_cross_entropy_matches_torch(seed, shape):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(shape, generator=g)
    for t in (torch.rand(shape, generator=g).round(), torch.rand(shape, generator=g)):  # hard and soft labels
        assert abs(binary_cross_entropy(p, t).item() - F.binary_cross_entropy(p, t).item()) < 1e-6


def test_binary_cross_entropy_edges_clamped_like_torch():
    p, t = torch.tensor([0., 1., 0., 1., 1e-30]), torch.tensor([1., 0., 0., 1., 1.])
    assert binary_cross_entropy(p, t).item() == pytest.approx(F.binary_cross_entropy(p, t).item(), abs=1e-5)
    assert torch.isfinite(binary_cross_entropy(p, t))


def test_binary_cross_entropy_refuses_logits():
    with pytest.raises(SpecftDataError, match='look like logits'):
        binary_cross_entropy(torch.tensor([3.0, -2.0]), torch.tensor([1.0, 0.0]))


def test_l2_penalty_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    theta = [torch.randn(4, 3, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()]
    lam = 0.03
    assert l2_penalty(theta).item() == pytest.approx(sum((t.detach() ** 2).sum().item() for t in theta), rel=1e-6)
    for grad, t in zip(torch.autograd.grad(lam * l2_penalty(theta), theta), theta):
        assert torch.allclose(grad, 2 * lam * t.detach())
    lin = nn.Linear(3, 2)
    assert l2_penalty(lin).item() == pytest.approx(l2_penalty(list(lin.parameters())).item())
    assert l2_penalty([]).item() == 0.0


def test_class_weights_balanced_like_sklearn():
    y = torch.tensor([0] * 50 + [1] * 7 + [2] * 120 + [3] * 3)
    ref = compute_class_weight('balanced', classes=np.arange(4), y=y.numpy())
    assert np.allclose(class_weights(y, 4).numpy(), ref, rtol=1e-6)
    with pytest.raises(SpecftDataError, match=r'class ids \[4\]'):
        class_weights(y, 5)


def test_cross_entropy_user_errors():
    z = torch.randn(3, 3)
    with pytest.raises(SpecftDataError, match='label map') as e:
        cross_entropy(z, torch.tensor([0, 3, -1]))
    assert 'rows [1, 2]' in str(e.value) and isinstance(e.value, SpecftError)
    with pytest.raises(SpecftConfigError, match='one weight per class'):
        cross_entropy(z, torch.tensor([0, 1, 2]), weight=torch.ones(2))
    with pytest.raises(SpecftConfigError, match='outside'):
        cross_entropy(z, torch.tensor([0, 1, 2]), label_smoothing=-0.1)
