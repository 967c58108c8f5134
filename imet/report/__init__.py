"""imet.report: event subscribers that turn a training run into console progress, metrics.csv,
plots and run.json (the run registry, one layer up, lives in imet.registry)."""
from __future__ import annotations

import os
from typing import Iterable, TextIO


def report_subscribers(run_dir: str | os.PathLike, input_roots: Iterable[str | os.PathLike] = (),
                       every_s: float = 60.0, stream: TextIO | None = None) -> list:
    """The standard set for a training run: ConsoleProgress, MetricsWriter, ArtifactWriter.
    `input_roots` (or the run's shared `imet.report.find.InputFiles`, which `imet train` also
    gives the registry): where a resumed session finds the previous session's
    metrics.csv/run.json; searched once for all of them."""
    from imet.report.artifacts import ArtifactWriter
    from imet.report.console import ConsoleProgress
    from imet.report.find import input_files
    from imet.report.metrics_csv import MetricsWriter

    inputs = input_files(input_roots)
    return [ConsoleProgress(every_s=every_s, stream=stream), MetricsWriter(run_dir, inputs),
            ArtifactWriter(run_dir, inputs)]
