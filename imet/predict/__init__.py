"""imet.predict: TTA inference, out-of-fold validation and thresholds, ensembles, submissions.

The functions kernels call directly (imported lazily, so `import imet.predict` costs nothing):

    from imet.predict import InferenceOptions, predict_test, validate_runs
    options = InferenceOptions(tta=("none", "hflip"))
    validate_runs(data, folds_csv, [run_dir], out_dir, options=options)
    predict_test(data, [run_a, run_b], "submission.csv", method="mean", options=options)

Lower-level: `load_run` + `predict_run` (one model over any list of images),
`ensemble_probabilities`, `load_probabilities`/`save_probabilities`, `read_thresholds`,
`make_submission`/`write_submission`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "InferenceOptions": "imet.predict.pipeline",
    "predict_test": "imet.predict.pipeline",
    "predict_run": "imet.predict.pipeline",
    "validate_runs": "imet.predict.validate",
    "load_run": "imet.predict.runs",
    "Probabilities": "imet.predict.probfile",
    "load_probabilities": "imet.predict.probfile",
    "save_probabilities": "imet.predict.probfile",
    "read_thresholds": "imet.predict.thresholdfile",
    "write_thresholds": "imet.predict.thresholdfile",
    "make_submission": "imet.predict.submission",
    "write_submission": "imet.predict.submission",
    "parse_tta": "imet.predict.infer",
}
_RENAMED = {"ensemble_probabilities": ("imet.predict.ensemble", "ensemble")}

__all__ = sorted([*_EXPORTS, *_RENAMED])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _RENAMED:
        module, attribute = _RENAMED[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'imet.predict' has no attribute {name!r}")
