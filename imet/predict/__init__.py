"""imet.predict: TTA inference, out-of-fold validation and thresholds, ensembles, submissions.

`imet validate` runs `validate.validate_runs`, `imet predict` runs `pipeline.predict_test` and
`imet pseudo-label` runs `pseudo.pseudo_label`; all of them predict through
`pipeline.predict_run` and `infer.run_model`, training's evaluation through `infer.run_model`
too. The probabilities file, `imet.probfile`, sits below every layer: training reads it too.
"""
