"""Context-aware decoding: per-image thresholds max(t, r * the image's top probability), fitted
on OOF probabilities, chosen only by cross-fitted F2, written to thresholds.json and applied by
predict."""
import numpy as np
import pytest

from imet.metrics.f2 import binarize, f2_score
from imet.metrics.thresholds import cross_fitted, search_context
from imet.predict.pipeline import read_thresholds, write_thresholds
from imet.predict.validate import choose_decoding


def context_data(n=1500, c=24, seed=0):
    """Every probability scales with the image's top one (a sure image is sure of everything):
    true second labels at 0.7-0.9 of the top, false ones below 0.5 of it. No threshold shared
    by all images separates them; max(t, r * top) with r in (0.5, 0.7) does."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, c), dtype=bool)
    probs = np.zeros((n, c), dtype=np.float32)
    top = rng.uniform(0.3, 1.0, n)
    first = rng.integers(0, c, n)
    y[np.arange(n), first] = True
    probs[np.arange(n), first] = top
    for i in range(n):
        others = np.setdiff1d(np.arange(c), [first[i]])
        true = rng.choice(others, 2, replace=False)
        y[i, true] = True
        probs[i, true] = rng.uniform(0.7, 0.9, 2) * top[i]
        false = np.setdiff1d(others, true)
        probs[i, false] = rng.uniform(0, 0.5, false.size) * top[i]
    return y, probs, np.array(["culture"] * (c // 2) + ["tag"] * (c - c // 2))


def test_binarize_applies_the_per_image_threshold():
    rng = np.random.default_rng(1)
    probs = rng.random((50, 7)).astype(np.float32)
    thresholds = rng.uniform(0.1, 0.5, 7)
    for ratio in (0.0, 0.3, 0.8, 1.0):
        per_image = np.maximum(thresholds[None, :], ratio * probs.max(axis=1, keepdims=True))
        expected = probs >= per_image.astype(np.float32)
        got = binarize(probs, thresholds, min_labels=0, context=ratio)
        assert np.array_equal(got, expected)
    assert binarize(probs, thresholds, context=1.0).sum(axis=1).min() >= 1
    with pytest.raises(ValueError, match="context ratio"):
        binarize(probs, thresholds, context=1.5)


def test_context_search_finds_the_ratio_and_wins_only_cross_fitted():
    y, probs, groups = context_data()
    thresholds, ratio = search_context(y, probs, groups)
    assert 0.5 <= ratio <= 0.7
    group = cross_fitted(y, probs, groups, "group", seed=0)
    context = cross_fitted(y, probs, groups, "context", seed=0)
    assert context.context == ratio and context.score > group.score + 0.05
    in_sample = f2_score(y, binarize(probs, thresholds, context=ratio))
    assert in_sample == pytest.approx(context.score_in_sample)
    choice = choose_decoding(y, probs, groups)
    assert choice.mode == "context" and choice.context == ratio


def test_without_a_context_signal_the_simpler_mode_is_kept():
    rng = np.random.default_rng(2)
    y = rng.random((800, 20)) < 0.15
    probs = np.clip(y * 0.45 + rng.random((800, 20)) * 0.5, 0, 1).astype(np.float32)
    groups = np.array(["culture"] * 10 + ["tag"] * 10)
    choice = choose_decoding(y, probs, groups, modes=("global", "context"))
    context = choice.fits["context"]
    # ratio 0 is the plain group search: context is never worse in-sample than group, and it
    # is chosen only where its cross-fitted F2 beats global.
    assert context.score_in_sample >= cross_fitted(y, probs, groups, "group").score_in_sample - 1e-9
    assert (choice.mode == "context") == (context.score > choice.fits["global"].score + 1e-9)


def test_thresholds_file_carries_the_ratio(tmp_path):
    path = write_thresholds(tmp_path / "thresholds.json", np.full(3, 0.2), [1, 2, 3], "fp",
                            "context", context=0.55)
    assert read_thresholds(path)["context"] == 0.55
    text = path.read_text().replace('"context": 0.55', '"context": 3')
    path.write_text(text)
    from imet.errors import UserError
    with pytest.raises(UserError, match='field "context"'):
        read_thresholds(path)
