"""imet.predict: TTA inference, out-of-fold validation and thresholds, ensembles, submissions.

`imet validate` runs `validate.validate_runs`, `imet predict` runs `pipeline.predict_test` and
`imet pseudo-label` runs `pseudo.pseudo_label`; all of them predict through
`pipeline.predict_run` and `infer.run_model`, training's evaluation through `infer.run_model`
too. The probabilities file, `imet.probfile`, sits below every layer: training reads it too.
"""

# `imet predict --time-budget`: what is left out first when every run x every TTA view would not
# fit (imet.predict.pipeline.plan_inference follows it; --help and the README quote it). Here,
# not in pipeline, so that the command's --help reads it without importing torch.
DROP_ORDER = ("TTA views, the last listed first, from every run alike (a flipped image is "
              "nearly the same evidence; another model is new evidence)",
              "then whole runs, the last given first (give your best run first)")
