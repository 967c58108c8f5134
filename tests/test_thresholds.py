"""Threshold search: the fast sweeps against brute force over `binarize` on the same grid."""
import numpy as np
import pytest

from imet.metrics.f2 import binarize, metric_score
from imet.metrics.thresholds import (
    best_global_threshold,
    cross_fitted,
    default_grid,
    global_curve,
    search_thresholds,
)

GRID = np.round(np.arange(0.02, 1.0, 0.02), 2)


def _data(seed, n=240, c=24, n_culture=8):
    """Labels with class-dependent calibration, so per-group/per-class thresholds matter."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < rng.uniform(0.03, 0.25, c)
    y[np.arange(n), rng.integers(0, c, n)] = True          # every image has a label, as in iMet
    scale = rng.uniform(0.3, 1.0, c)                        # over/under-confident classes
    logits = 2.5 * (y - 0.5) + rng.normal(0, 1.2, (n, c))
    probs = (scale / (1 + np.exp(-logits))).astype(np.float32)
    groups = np.array(["culture"] * n_culture + ["tag"] * (c - n_culture))
    return y, probs, groups


def _score(y, probs, thr, min_labels=1, max_labels=None, metric="f2"):
    return metric_score(metric, y, binarize(probs, thr, min_labels, max_labels))


@pytest.mark.parametrize("min_labels,max_labels", [(0, None), (1, None), (3, None), (1, 3),
                                                   (2, 5)])
def test_global_curve_equals_brute_force(min_labels, max_labels):
    y, probs, _ = _data(1)
    grid, curve = global_curve(y, probs, GRID, min_labels, max_labels)
    brute = [_score(y, probs, t, min_labels, max_labels) for t in grid]
    np.testing.assert_allclose(curve, brute, atol=1e-12)
    t, f2 = best_global_threshold(y, probs, GRID, min_labels, max_labels)
    assert f2 == pytest.approx(max(brute), abs=1e-12)
    assert _score(y, probs, t, min_labels, max_labels) == pytest.approx(f2, abs=1e-12)


def test_global_curve_default_grid_and_many_chunks(monkeypatch):
    import imet.metrics.thresholds as th
    monkeypatch.setattr(th, "_CHUNK_ENTRIES", 200)  # many small row chunks
    y, probs, _ = _data(2, n=150)
    grid, curve = global_curve(y, probs)
    np.testing.assert_array_equal(grid, default_grid())
    idx = np.arange(0, grid.size, 7)
    np.testing.assert_allclose(curve[idx], [_score(y, probs, grid[i]) for i in idx], atol=1e-12)


def _assert_coordinate_optimal(y, probs, thr, coords, min_labels, max_labels, tol,
                               metric="f2"):
    """No single coordinate (a set of classes sharing a threshold) improves on the grid."""
    base = _score(y, probs, thr, min_labels, max_labels, metric)
    for cols in coords:
        for t in GRID:
            trial = thr.copy()
            trial[cols] = t
            assert _score(y, probs, trial, min_labels, max_labels, metric) <= base + tol, (cols, t)


@pytest.mark.parametrize("min_labels", [0, 1])
def test_group_thresholds_are_exact_coordinate_optima(min_labels):
    y, probs, groups = _data(3)
    thr = search_thresholds(y, probs, groups, "group", grid=GRID, min_labels=min_labels)
    assert len(np.unique(thr[groups == "culture"])) == 1
    assert len(np.unique(thr[groups == "tag"])) == 1
    coords = [np.flatnonzero(groups == g) for g in ("culture", "tag")]
    _assert_coordinate_optimal(y, probs, thr, coords, min_labels, None, tol=1e-12)
    glob = search_thresholds(y, probs, groups, "global", grid=GRID, min_labels=min_labels)
    assert _score(y, probs, thr, min_labels) >= _score(y, probs, glob, min_labels) - 1e-12


@pytest.mark.parametrize("min_labels", [0, 1])
def test_class_thresholds_are_exact_coordinate_optima_with_group_fallback(min_labels):
    y, probs, groups = _data(4)
    support = y.sum(axis=0)
    min_support = int(np.median(support))
    thr = search_thresholds(y, probs, groups, "class", min_support=min_support, grid=GRID,
                            min_labels=min_labels)
    by_group = search_thresholds(y, probs, groups, "group", grid=GRID, min_labels=min_labels)
    rare = support < min_support
    assert rare.any() and (~rare).any()
    np.testing.assert_array_equal(thr[rare], by_group[rare])
    _assert_coordinate_optimal(y, probs, thr, [[c] for c in np.flatnonzero(~rare)],
                               min_labels, None, tol=1e-12)
    assert _score(y, probs, thr, min_labels) > _score(y, probs, by_group, min_labels)


def test_class_search_with_label_limits_stays_close_to_optimal():
    # min_labels > 1 / max_labels are modelled (top-k stats): stated tolerance 0.01 F2 per
    # coordinate; in practice the model is exact here or nearly so
    y, probs, groups = _data(5)
    thr = search_thresholds(y, probs, groups, "class", min_support=5, grid=GRID,
                            min_labels=2, max_labels=4)
    _assert_coordinate_optimal(y, probs, thr, [[c] for c in range(0, y.shape[1], 3)],
                               2, 4, tol=0.01)
    glob = search_thresholds(y, probs, groups, "global", grid=GRID, min_labels=2, max_labels=4)
    assert _score(y, probs, thr, 2, 4) >= _score(y, probs, glob, 2, 4)


def test_cross_fitted_is_honest():
    y, probs, groups = _data(6, n=400, c=30)
    fit = cross_fitted(y, probs, groups, "class", min_support=5, grid=GRID, seed=3)
    np.testing.assert_array_equal(
        fit.thresholds, search_thresholds(y, probs, groups, "class", 5, GRID))
    assert fit.score_in_sample == pytest.approx(_score(y, probs, fit.thresholds))
    assert fit.score == pytest.approx(np.mean(fit.score_halves), abs=1e-12)  # halves of equal size
    assert fit.score < fit.score_in_sample and fit.optimism > 0  # per-class thresholds overfit
    again = cross_fitted(y, probs, groups, "class", min_support=5, grid=GRID, seed=3)
    assert again.score == fit.score
    glob = cross_fitted(y, probs, groups, "global", grid=GRID, seed=3)
    assert 0 < glob.score <= 1 and glob.optimism < fit.optimism


def test_bad_arguments_are_refused():
    y, probs, groups = _data(7, n=20, c=6, n_culture=2)
    with pytest.raises(ValueError, match="mode"):
        search_thresholds(y, probs, groups, "per-image")
    with pytest.raises(ValueError, match="groups"):
        search_thresholds(y, probs, groups[:3], "group")
    with pytest.raises(ValueError, match="shape"):
        search_thresholds(y[:, :5], probs, groups, "global")
    with pytest.raises(ValueError, match="grid"):
        best_global_threshold(y, probs, grid=[])


def test_results_do_not_depend_on_row_chunking(monkeypatch):
    import imet.metrics.thresholds as th
    y, probs, groups = _data(8)
    whole = [search_thresholds(y, probs, groups, mode, 5, GRID) for mode in ("group", "class")]
    monkeypatch.setattr(th, "_CHUNK_ENTRIES", 300)
    chunked = [search_thresholds(y, probs, groups, mode, 5, GRID) for mode in ("group", "class")]
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)


GROUPS_2020 = ("country", "culture", "dimension", "medium", "tags")


def _data_2020(seed, n=240):
    """Five groups as in 2020 and 2021 (the `tags::` prefix), each calibrated differently."""
    rng = np.random.default_rng(seed)
    sizes = (3, 6, 2, 9, 7)
    groups = np.repeat(np.array(GROUPS_2020), sizes)
    c = groups.size
    y = rng.random((n, c)) < 0.12
    y[np.arange(n), rng.integers(0, c, n)] = True
    scale = np.repeat(np.array([0.35, 0.9, 0.5, 0.7, 1.0]), sizes)
    logits = 2.5 * (y - 0.5) + rng.normal(0, 1.2, (n, c))
    return y, (scale / (1 + np.exp(-logits))).astype(np.float32), groups


def test_five_groups_each_get_an_exact_coordinate_optimal_threshold():
    from imet.metrics.thresholds import search_context
    y, probs, groups = _data_2020(11)
    thr = search_thresholds(y, probs, groups, "group", grid=GRID)
    per_group = {g: np.unique(thr[groups == g]) for g in GROUPS_2020}
    assert all(len(t) == 1 for t in per_group.values())
    assert len({float(t[0]) for t in per_group.values()}) >= 3  # the scales differ, so do they
    coords = [np.flatnonzero(groups == g) for g in GROUPS_2020]
    _assert_coordinate_optimal(y, probs, thr, coords, 1, None, tol=1e-12)
    glob = search_thresholds(y, probs, groups, "global", grid=GRID)
    assert _score(y, probs, thr) > _score(y, probs, glob)
    thresholds, ratio = search_context(y, probs, groups, grid=GRID)
    assert all(len(np.unique(thresholds[groups == g])) == 1 for g in GROUPS_2020)
    for mode in ("group", "class", "context"):
        fit = cross_fitted(y, probs, groups, mode, min_support=5, grid=GRID, seed=1)
        assert 0 < fit.score <= fit.score_in_sample + 1e-12 and fit.thresholds.shape == (groups.size,)


# ---- micro-F1 (iMet 2020's Evaluation section): the same searches, pooled counts

def test_micro_f1_equals_sklearn():
    from sklearn.metrics import f1_score
    from imet.metrics.f2 import micro_f1_score
    y, probs, _ = _data(12)
    for t in (0.1, 0.4, 0.9):
        pred = binarize(probs, t)
        assert micro_f1_score(y, pred) == pytest.approx(f1_score(y, pred, average="micro"),
                                                        abs=1e-12)
    assert micro_f1_score(np.zeros((3, 4)), np.zeros((3, 4))) == 0.0
    with pytest.raises(ValueError, match="metric"):
        metric_score("macro-f1", y, y)


@pytest.mark.parametrize("min_labels,max_labels", [(0, None), (1, None), (3, None), (1, 3)])
def test_micro_f1_global_curve_equals_brute_force(min_labels, max_labels):
    y, probs, _ = _data(13)
    grid, curve = global_curve(y, probs, GRID, min_labels, max_labels, metric="micro-f1")
    brute = [_score(y, probs, t, min_labels, max_labels, "micro-f1") for t in grid]
    np.testing.assert_allclose(curve, brute, atol=1e-12)
    f2_best, _ = best_global_threshold(y, probs, GRID, min_labels, max_labels)
    micro_best, _ = best_global_threshold(y, probs, GRID, min_labels, max_labels, "micro-f1")
    assert micro_best != f2_best  # F2 weighs recall 4x: its best threshold is lower
    assert micro_best > f2_best


@pytest.mark.parametrize("min_labels", [0, 1])
def test_micro_f1_group_and_class_thresholds_are_exact_coordinate_optima(min_labels):
    y, probs, groups = _data_2020(14)
    thr = search_thresholds(y, probs, groups, "group", grid=GRID, min_labels=min_labels,
                            metric="micro-f1")
    coords = [np.flatnonzero(groups == g) for g in GROUPS_2020]
    _assert_coordinate_optimal(y, probs, thr, coords, min_labels, None, 1e-12, "micro-f1")
    per_class = search_thresholds(y, probs, groups, "class", min_support=5, grid=GRID,
                                  min_labels=min_labels, metric="micro-f1")
    eligible = np.flatnonzero(y.sum(axis=0) >= 5)
    _assert_coordinate_optimal(y, probs, per_class, [[c] for c in eligible], min_labels, None,
                               1e-12, "micro-f1")
    assert (_score(y, probs, per_class, min_labels, metric="micro-f1")
            > _score(y, probs, thr, min_labels, metric="micro-f1"))
    as_f2 = search_thresholds(y, probs, groups, "group", grid=GRID, min_labels=min_labels)
    assert (_score(y, probs, thr, min_labels, metric="micro-f1")
            > _score(y, probs, as_f2, min_labels, metric="micro-f1"))


def test_micro_f1_cross_fit_pools_both_halves():
    y, probs, groups = _data_2020(15, n=300)
    for mode in ("global", "class", "context"):
        fit = cross_fitted(y, probs, groups, mode, min_support=5, grid=GRID, seed=2,
                           metric="micro-f1")
        assert fit.metric == "micro-f1" and 0 < fit.score <= fit.score_in_sample + 1e-12
        assert fit.score_in_sample == pytest.approx(metric_score(
            "micro-f1", y, binarize(probs, fit.thresholds, context=fit.context)))
        assert min(fit.score_halves) - 1e-12 <= fit.score <= max(fit.score_halves) + 1e-12
