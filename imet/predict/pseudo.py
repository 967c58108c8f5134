"""`imet pseudo-label`: the test images the ensemble is confident about, as an extra training set
(imet/data/labels.py reads it: `imet train --extra DIR`).

The test images are predicted as `imet predict` predicts them (imet/predict/pipeline.py: the
same open, TTA and ensemble path). An image is kept by `--rule`:
  top  its highest probability is at least P (`--min-prob`);
  all  that, and no class is uncertain: every probability is >= P or <= 1 - P.
A kept image's hard labels are its classes of probability >= P; with `--soft` its targets are
the ensemble's probabilities themselves (DIR/soft_targets.npz)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imet.data.labels import SOFT_TARGETS, CompetitionLayout
from imet.errors import UserError
from imet.fileio import atomic_copy, atomic_write_text
from imet.predict.infer import Log, log_stderr, parse_tta
from imet.predict.pipeline import InferenceOptions, ensemble, infer_members, open_test
from imet.probfile import Probabilities, save_probabilities

RULES = ("top", "all")


def keep_confident(probs: np.ndarray, min_prob: float, rule: str) -> np.ndarray:
    """Bool [N]: the images `rule` keeps at `min_prob`."""
    kept = probs.max(axis=1) >= min_prob
    if rule == "all":
        kept &= ((probs >= min_prob) | (probs <= 1 - min_prob)).all(axis=1)
    return kept


def pseudo_label(data: Path, sources: Sequence[Path], out: Path, *, min_prob: float = 0.9,
                 rule: str = "top", soft: bool = False, method: str = "mean",
                 weights: Sequence[float] | None = None, options: InferenceOptions | None = None,
                 log: Log = log_stderr) -> dict[str, Any]:
    """Writes OUT/train/<id>.png, OUT/labels.csv and OUT/train.csv (or OUT/soft_targets.npz);
    returns a summary. Every refusal comes before anything is written."""
    if rule not in RULES:
        raise UserError(f"--rule: unknown rule {rule!r}; choose {', '.join(RULES)}")
    if not 0.5 < min_prob <= 1:
        raise UserError(f"--min-prob: {min_prob} is outside (0.5, 1]")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already holds files; pseudo-label into an empty or new folder")
    options = options or InferenceOptions()
    start = time.perf_counter()
    test = open_test(data, sources, "pseudo-label")
    members = infer_members(test.members, test.ids, test.paths, options, None, log)
    combined = ensemble(members, method, weights)
    kept = np.flatnonzero(keep_confident(combined.probs, min_prob, rule))
    if not len(kept):
        raise UserError(f"pseudo-label: no test image passes --rule {rule} at --min-prob "
                        f"{min_prob}; lower --min-prob")
    ids = [test.ids[i] for i in kept]
    probs = combined.probs[kept]
    extra = CompetitionLayout(out)
    for image_id, source in zip(ids, (test.paths[i] for i in kept)):
        atomic_copy(source, extra.image_path("train", image_id))
    atomic_copy(test.layout.labels_csv, extra.labels_csv)
    if soft:
        save_probabilities(out / SOFT_TARGETS, Probabilities(
            ids, probs, test.labels.attribute_ids,
            {"labels_fingerprint": test.labels.fingerprint(), "split": "pseudo-label",
             "runs": [m.meta.get("name") for m in members]}))
    else:
        rows = [test.labels.decode_row(row >= min_prob) for row in probs]
        atomic_write_text(extra.train_csv, "id,attribute_ids\n" + "".join(
            f"{i},{r}\n" for i, r in zip(ids, rows)))
    seconds = time.perf_counter() - start
    log(f"pseudo-label: kept {len(ids)} of {len(test.ids)} test images (--rule {rule}, "
        f"--min-prob {min_prob}), {'soft targets' if soft else 'hard labels'} in {out} "
        f"({seconds:.1f}s)")
    return {"kind": "pseudo-label", "out": str(out), "kept": len(ids), "images": len(test.ids),
            "rule": rule, "min_prob": min_prob, "soft": soft,
            "runs": [m.meta for m in members], "tta": list(parse_tta(options.tta)),
            "labels_fingerprint": test.labels.fingerprint(), "seconds": round(seconds, 2)}
