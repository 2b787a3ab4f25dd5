"""specft.losses: error messages and numerical edge cases. The teaching claims (each loss and its gradient against
torch, weights and smoothing as torch defines them, class weights as scikit-learn) are checked where they are
taught, in nbs/01_losses.ipynb."""
import pytest
import torch
import torch.nn.functional as F

from specft.core import SpecftConfigError, SpecftDataError, SpecftError
from specft.losses import binary_cross_entropy, class_weights, cross_entropy


def test_cross_entropy_large_logits_float32_stay_finite():
    z = torch.tensor([[1000., 0., -1000.], [-500., -400., -600.]])
    y = torch.tensor([2, 0])
    ours = cross_entropy(z, y)
    assert torch.isfinite(ours)
    assert torch.allclose(ours, F.cross_entropy(z, y), rtol=1e-6)


def test_binary_cross_entropy_edges_clamped_like_torch():
    p, t = torch.tensor([0., 1., 0., 1., 1e-30]), torch.tensor([1., 0., 0., 1., 1.])
    assert binary_cross_entropy(p, t).item() == pytest.approx(F.binary_cross_entropy(p, t).item(), abs=1e-5)
    assert torch.isfinite(binary_cross_entropy(p, t))


def test_user_errors():
    with pytest.raises(SpecftDataError, match='look like logits'):
        binary_cross_entropy(torch.tensor([3.0, -2.0]), torch.tensor([1.0, 0.0]))
    y = torch.tensor([0] * 50 + [1] * 7 + [2] * 120 + [3] * 3)
    with pytest.raises(SpecftDataError, match=r'class ids \[4\]'):
        class_weights(y, 5)
    z = torch.randn(3, 3)
    with pytest.raises(SpecftDataError, match='label map') as e:
        cross_entropy(z, torch.tensor([0, 3, -1]))
    assert 'rows [1, 2]' in str(e.value) and isinstance(e.value, SpecftError)
    with pytest.raises(SpecftConfigError, match='one weight per class'):
        cross_entropy(z, torch.tensor([0, 1, 2]), weight=torch.ones(2))
    with pytest.raises(SpecftConfigError, match='outside'):
        cross_entropy(z, torch.tensor([0, 1, 2]), label_smoothing=-0.1)
