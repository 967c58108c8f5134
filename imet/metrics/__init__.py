"""Metrics: sample-averaged F2, decoding of probabilities into labels, threshold search and
submission-format CSVs. The lowest layer: numpy only (plus imet.errors and imet.fileio)."""
