import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imet.errors import UserError
from imet.metrics.f2 import f2_score
from imet.train.loop import LOSSES, build_loss, mixup, sample_beta


def test_registry_names():
    assert set(LOSSES) == {"bce", "focal", "soft_f2"}


def test_bce_known_value():
    logits = torch.zeros(3, 4)
    targets = torch.tensor([[1, 0, 0, 1]] * 3, dtype=torch.float32)
    assert build_loss("bce")(logits, targets).item() == pytest.approx(math.log(2), rel=1e-6)


def test_bce_pos_weight_weighs_positives():
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    # positive term doubled: (2 log2 + log2) / 2
    assert build_loss("bce", pos_weight=2.0)(logits, targets).item() == \
        pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_focal_known_value_and_reduces_to_bce():
    logits, targets = torch.zeros(1, 1), torch.ones(1, 1)
    # alpha * (1 - p)^gamma * -log p with p = 0.5
    assert build_loss("focal", alpha=0.25, gamma=2.0)(logits, targets).item() == \
        pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen)
    targets = (torch.rand(5, 7, generator=gen) > 0.7).float()
    focal = build_loss("focal", alpha=-1, gamma=0.0)(logits, targets)
    assert focal.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets).item(),
                                         rel=1e-6)


def test_focal_down_weights_easy_examples():
    easy = build_loss("focal", alpha=-1, gamma=2.0)(torch.tensor([[4.0]]), torch.ones(1, 1))
    bce = F.binary_cross_entropy_with_logits(torch.tensor([[4.0]]), torch.ones(1, 1))
    assert easy.item() < bce.item() / 100


def test_soft_f2_known_value():
    logits = torch.zeros(1, 4)  # p = 0.5 everywhere
    targets = torch.tensor([[1.0, 0, 0, 0]])
    # tp = 0.5; F2 = 5 tp / (4 * 1 + sum p) = 2.5 / 6
    assert build_loss("soft_f2")(logits, targets).item() == pytest.approx(1 - 2.5 / 6, rel=1e-5)


def test_soft_f2_matches_hard_f2_for_confident_logits():
    rng = np.random.default_rng(0)
    y = rng.random((50, 12)) < 0.2
    y[np.arange(50), rng.integers(0, 12, 50)] = True  # every row has a true label
    pred = rng.random((50, 12)) < 0.3
    logits = torch.from_numpy(np.where(pred, 30.0, -30.0))
    loss = build_loss("soft_f2")(logits, torch.from_numpy(y.astype(np.float32)))
    assert loss.item() == pytest.approx(1 - f2_score(y, pred), abs=1e-5)


def test_losses_gradients_are_correct():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(4, 6, generator=gen, dtype=torch.float64) > 0.6).double()
    for name, kwargs in [("soft_f2", {}), ("focal", {"alpha": 0.25, "gamma": 2.0}), ("bce", {})]:
        loss = build_loss(name, **kwargs)
        assert torch.autograd.gradcheck(lambda x: loss(x, targets), (logits,)), name


def test_soft_f2_gradient_direction():
    logits = torch.zeros(2, 5, requires_grad=True)
    targets = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    build_loss("soft_f2")(logits, targets).backward()
    grad = logits.grad
    assert (grad[targets == 1] < 0).all() and (grad[targets == 0] > 0).all()


def test_build_loss_rejects_unknown_name_and_parameter():
    with pytest.raises(UserError, match="unknown loss 'hinge'.*bce"):
        build_loss("hinge")
    with pytest.raises(UserError, match="takes no parameter gamma"):
        build_loss("bce", gamma=2)


def test_mixup_is_deterministic_from_generator():
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = (torch.rand(8, 5, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    a = mixup(x, y, 0.4, torch.Generator().manual_seed(7))
    b = mixup(x, y, 0.4, torch.Generator().manual_seed(7))
    c = mixup(x, y, 0.4, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert a[2] != c[2]


def test_mixup_mixes_pairs_convexly():
    x = torch.arange(6, dtype=torch.float32).view(6, 1) * 10
    y = torch.eye(6)
    mixed_x, mixed_y, lam = mixup(x, y, 1.0, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(mixed_y.sum(dim=1), torch.ones(6))
    # each row is lam * itself + (1 - lam) * its partner, the same partner for x and y
    partner = torch.where(mixed_y * (1 - torch.eye(6)) > 0, 1, 0).argmax(dim=1)
    own = torch.arange(6)
    partner = torch.where(mixed_y[own, own] >= 1 - 1e-6, own, partner)
    assert torch.allclose(mixed_x[:, 0], lam * x[:, 0] + (1 - lam) * x[partner, 0], atol=1e-4)


def test_mixup_alpha_zero_is_identity():
    x, y = torch.randn(4, 2), torch.ones(4, 3)
    mixed_x, mixed_y, lam = mixup(x, y, 0.0, torch.Generator().manual_seed(0))
    assert mixed_x is x and mixed_y is y and lam == 1.0


def test_mixup_lambda_follows_beta():
    gen = torch.Generator().manual_seed(0)
    draws = np.array([sample_beta(0.4, gen) for _ in range(3000)])
    assert draws.min() >= 0 and draws.max() <= 1
    assert draws.mean() == pytest.approx(0.5, abs=0.03)
    # Var Beta(a, a) = 1 / (4 (2a + 1))
    assert draws.var() == pytest.approx(1 / (4 * 1.8), rel=0.1)
