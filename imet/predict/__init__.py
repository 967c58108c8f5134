"""imet.predict: TTA inference, out-of-fold validation and thresholds, ensembles, submissions.

`imet validate` runs `validate.validate_runs`, `imet predict` runs `pipeline.predict_test`;
below them `runs.load_run` + `pipeline.predict_run` (one model over any list of images),
`ensemble.ensemble`, `thresholdfile` and `submission` (the files between kernels; the
probabilities file, `imet.probfile`, sits below every layer: training reads it too).
"""


