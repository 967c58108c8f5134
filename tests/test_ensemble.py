"""Ensembles, probability files, thresholds.json and submission rows (no model needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imet.errors import DataError, UserError
from imet.predict.pipeline import ensemble, make_submission, read_thresholds, write_thresholds
from imet.probfile import Probabilities, load_probabilities, save_probabilities

ATTRS = (3, 5, 8, 13)


def probs_of(ids, values, attrs=ATTRS, **meta):
    return Probabilities(list(ids), np.asarray(values, dtype=np.float32), attrs,
                         {"labels_fingerprint": "fp", **meta})


def test_probabilities_roundtrip_is_float16_and_pickle_free(tmp_path):
    rng = np.random.default_rng(0)
    p = probs_of(["a", "b", "c"], rng.random((3, 4)), run="r1")
    path = save_probabilities(tmp_path / "p.npz", p)
    loaded = load_probabilities(path)
    assert loaded.ids == ["a", "b", "c"] and loaded.attribute_ids == ATTRS
    assert loaded.meta["run"] == "r1" and loaded.labels_fingerprint == "fp"
    np.testing.assert_allclose(loaded.probs, p.probs, atol=1e-3)
    with np.load(path, allow_pickle=False) as data:
        assert data["probs"].dtype == np.float16
    assert [f.name for f in tmp_path.iterdir()] == ["p.npz"]  # no temp file left behind


def test_probabilities_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="junk.npz: not an imet probabilities file"):
        load_probabilities(bad)
    with pytest.raises(UserError, match="missing.npz: probabilities file not found"):
        load_probabilities(tmp_path / "missing.npz")


def test_mean_ensemble_aligns_rows_by_id():
    a = probs_of(["x", "y"], [[0.2, 0.4, 0.6, 0.8], [0.0, 0.0, 1.0, 1.0]])
    b = probs_of(["y", "x"], [[1.0, 1.0, 0.0, 0.0], [0.4, 0.4, 0.4, 0.4]])
    out = ensemble([a, b], "mean")
    assert out.ids == ["x", "y"]
    np.testing.assert_allclose(out.probs, [[0.3, 0.4, 0.5, 0.6], [0.5, 0.5, 0.5, 0.5]])
    weighted = ensemble([a, b], "mean", weights=[3, 1])
    np.testing.assert_allclose(weighted.probs[0], 0.75 * a.probs[0] + 0.25 * b.probs[1])


def test_rank_ensemble_keeps_the_rank_order_on_the_mean_scale():
    rng = np.random.default_rng(1)
    f16 = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731 (saved precision)
    base = f16(rng.uniform(0.2, 1.0, (50, 4)))
    # Same ordering, very different calibration: the rank ensemble must keep the ordering
    # and the mean ensemble's per-class values.
    a = probs_of(range(50), base)
    b = probs_of(range(50), f16(base ** 4))
    rank = ensemble([a, b], "rank").probs
    mean = ensemble([a, b], "mean").probs
    for c in range(4):
        np.testing.assert_array_equal(np.argsort(rank[:, c], kind="stable"),
                                      np.argsort(base[:, c], kind="stable"))
        np.testing.assert_allclose(np.sort(rank[:, c]), np.sort(mean[:, c]), rtol=1e-6)


def test_rank_ensemble_averages_disagreeing_orders():
    a = probs_of(["p", "q", "r"], [[0.1] * 4, [0.2] * 4, [0.3] * 4])
    b = probs_of(["p", "q", "r"], [[0.9] * 4, [0.5] * 4, [0.1] * 4])
    out = ensemble([a, b], "rank").probs
    # p: ranks 0 and 2, q: 1 and 1, r: 2 and 0 -> all tie at the middle of the mean ladder
    np.testing.assert_allclose(out[:, 0], [0.35, 0.35, 0.35], atol=1e-6)


def test_ensemble_refuses_another_label_space():
    a = probs_of(["x"], [[0.1, 0.2, 0.3, 0.4]])
    b = probs_of(["x"], [[0.1, 0.2, 0.3]], attrs=(3, 5, 9))
    with pytest.raises(UserError, match="run-b: label space differs from run-a"):
        ensemble([a, b], names=["run-a", "run-b"])
    c = Probabilities(["x"], np.zeros((1, 4), np.float32), ATTRS, {"labels_fingerprint": "other"})
    with pytest.raises(UserError, match="label space differs"):
        ensemble([a, c])


def test_ensemble_refuses_other_images():
    a = probs_of(["x", "y"], np.zeros((2, 4)))
    b = probs_of(["x", "z"], np.zeros((2, 4)))
    with pytest.raises(UserError, match="not the same set"):
        ensemble([a, b])


def test_average_ranks_match_scipy_with_float16_ties():
    from scipy.stats import rankdata

    from imet.predict.pipeline import average_ranks
    rng = np.random.default_rng(2)
    rows = rng.random((5, 400)).astype(np.float16).astype(np.float32)
    rows[:, :60] = 0.25  # a big tie block
    np.testing.assert_array_equal(average_ranks(rows), rankdata(rows, axis=1) - 1)


def test_thresholds_file_roundtrip_and_checks(tmp_path):
    path = write_thresholds(tmp_path / "thresholds.json", [0.1, 0.2, 0.3, 0.4], ATTRS, "fp",
                            "class", min_labels=1, max_labels=None, tta=["none"])
    doc = read_thresholds(path, ATTRS, "fp")
    np.testing.assert_allclose(doc["thresholds"], [0.1, 0.2, 0.3, 0.4])
    assert doc["mode"] == "class" and doc["tta"] == ["none"]
    glob = read_thresholds(write_thresholds(tmp_path / "g.json", 0.25, ATTRS, "fp", "global"))
    np.testing.assert_allclose(glob["thresholds"], [0.25] * 4)
    with pytest.raises(UserError, match="thresholds.json: thresholds are for 4 other"):
        read_thresholds(path, (1, 2, 3, 4))
    (tmp_path / "other.json").write_text(json.dumps({"thresholds": [0.5]}))
    with pytest.raises(UserError, match="other.json: not an imet thresholds file"):
        read_thresholds(tmp_path / "other.json")


def test_submission_rows_follow_sample_order_with_min_and_max_labels():
    p = probs_of(["b", "a", "c"], [[0.9, 0.8, 0.7, 0.1],   # b: 3 pass -> max 2
                                   [0.1, 0.2, 0.3, 0.4],   # a: none pass -> min 1: 13
                                   [0.6, 0.1, 0.1, 0.1]])  # c: 3
    ids, rows = make_submission(["a", "b", "c"], p, 0.5, min_labels=1, max_labels=2)
    assert ids == ["a", "b", "c"]
    assert rows == ["13", "3 5", "3"]


def test_submission_refuses_empty_duplicate_or_unpredicted_ids():
    p = probs_of(["a"], [[0.9, 0.1, 0.1, 0.1]])
    with pytest.raises(DataError, match="sample_submission.csv: no rows"):
        make_submission([], p, 0.5)
    with pytest.raises(DataError, match="row 3: id 'a' appears twice"):
        make_submission(["a", "a"], p, 0.5)
    with pytest.raises(DataError, match="no prediction for image 'z'"):
        make_submission(["a", "z"], p, 0.5)
