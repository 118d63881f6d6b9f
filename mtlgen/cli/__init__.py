"""The ``mtlgen`` command line: thin shells over library functions.

Global options come first: ``mtlgen -p params.yaml -S synth.patients=8 synth``. Commands on
data (``mtlgen.cli.data``): synth, show, register, registry, split; on models
(``mtlgen.cli.models``): train, evaluate, promote, predict; on patients over time
(``mtlgen.cli.report``): patient show, report.
"""

from __future__ import annotations

import typer

from mtlgen.cli import data, models, report
from mtlgen.cli.settings import settings_options

app = typer.Typer(
    help="Longitudinal, generative multi-task learning for medical images.\n\n"
    "Settings come from params.yaml (validated); override single keys with -S key.path=value.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(settings_options)
app.add_typer(data.app)
app.add_typer(models.app)
app.add_typer(report.app)
