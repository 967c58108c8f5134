"""`--prior-bias` (on by default from random init): a fresh head predicts each class's training
frequency, not 0.5."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imet.models import build_model
from imet.train.state import class_log_odds, init_prior_bias


def test_the_head_starts_at_each_class_frequency_and_an_unseen_class_stays_finite():
    targets = np.zeros((10, 4), dtype=np.uint8)
    targets[:5, 0] = 1     # half the images
    targets[:1, 1] = 1     # one in ten
    targets[:, 3] = 1      # every image
    model = build_model("tiny_cnn", 4)
    init_prior_bias(model, targets)
    bias = model.head.linear.bias.detach().double()
    np.testing.assert_allclose(torch.sigmoid(bias[:2]).numpy(), [0.5, 0.1], rtol=1e-6)
    assert torch.isfinite(bias).all() and bias[2] < -9 and bias[3] > 9
    # on an input of zeros the features are the same for every class: the output is the prior
    with torch.no_grad():
        model.eval()
        out = torch.sigmoid(model.head(torch.zeros(1, model.head.linear.in_features)))
    np.testing.assert_allclose(out[0, :2].numpy(), [0.5, 0.1], rtol=1e-5)


def test_soft_targets_give_their_mean_and_a_wrong_width_is_refused():
    soft = np.array([[0.2, 1.0], [0.6, 0.0]], dtype=np.float16)
    np.testing.assert_allclose(class_log_odds(soft), np.log([0.4 / 0.6, 1.0]), rtol=1e-3)
    with pytest.raises(ValueError, match="3 classes, the head 2"):
        init_prior_bias(build_model("tiny_cnn", 2), np.zeros((4, 3)))
