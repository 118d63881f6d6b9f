"""``mtlgen patient show``: a patient's summary in the terminal (rich)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mtlgen.progression import STATUSES
from mtlgen.report.summary import PROBABILITY_SOURCES, PatientSummary, due_date_text

_COLOURS = {"progressive": "red", "stable": "white", "responding": "green"}


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


_NUMERIC = ("day", "core mL", "lesion mL", "NCC", "MI")


def visits_table(summary: PatientSummary) -> Table:
    """Visits with dates, contrasts (missing ones marked), volumes, their source, alignment."""
    visits = Table(title="visits", title_justify="left")
    for column in (
        "visit",
        "date",
        "day",
        "contrasts",
        "core mL",
        "lesion mL",
        "from",
        "NCC",
        "MI",
    ):
        visits.add_column(column, justify="right" if column in _NUMERIC else "left")
    for v in summary.visits:
        contrasts = " ".join(
            c if c in v.contrasts else f"[dim]({c} missing)[/]" for c in summary.contrasts
        )
        source = {"label": "label", "model": "[yellow]model seg.[/]"}.get(v.source, "-")
        visits.add_row(
            v.key,
            v.date.isoformat() if v.date else "-",
            f"{v.days:.0f}",
            contrasts,
            _num(v.core_ml),
            _num(v.lesion_ml),
            source,
            _num(v.ncc, ".3f"),
            _num(v.mi, ".3f"),
        )
    return visits


def render(summary: PatientSummary, model_note: str, console: Console | None = None) -> None:
    """Print the patient's visits, growth, status, forecast, alignment and review items."""
    console = console or Console()
    visits = visits_table(summary)
    lines = []
    g = summary.growth
    if g is None:
        lines.append("growth: fewer than two measured visits")
    else:
        text = f"growth ({g.visits} measured visits): {g.rate_ml_per_year:+.2f} mL/year"
        if g.doubling_days is not None:
            kind = "doubling" if g.doubling_days > 0 else "halving"
            text += f", {kind} time {abs(g.doubling_days):.0f} days"
        lines.append(text)
    status = summary.status or "not enough measured visits"
    lines.append(
        f"status: [bold {_COLOURS.get(status, 'white')}]{status}[/] (last measured visit vs the "
        f"one before; thresholds +{summary.increase:.0%} progressive, -{summary.decrease:.0%} "
        "responding, params.yaml progression)"
    )
    lines.append(f"next visit due: {due_date_text(summary)} (day {summary.due_days:.0f})")
    f = summary.forecast
    if f is None:
        lines.append(f"forecast: none, {escape(model_note)}")
    else:
        interval = "no interval"
        if f.low_ml is not None:
            high = "inf" if f.high_ml is None else f"{f.high_ml:.2f}"
            interval = f"{f.low_ml:.2f}-{high} mL ({f.level:.0%})"
        lines.append(
            f"forecast ({escape(model_note)}) at day {f.target_days:.0f}: core {f.core_ml:.2f} mL, "
            f"{interval}, status [bold {_COLOURS[f.status]}]{f.status}[/]"
        )
        if f.probabilities:
            lines.append(
                f"status probabilities ({PROBABILITY_SOURCES[f.probability_source]}): "
                + ", ".join(f"{s} {f.probabilities[s]:.0%}" for s in STATUSES)
            )
    review = (
        "\n".join(f"[red]- {escape(r)}[/]" for r in summary.review)
        if summary.review
        else "nothing awaits review"
    )
    console.print(
        Panel(
            Group(
                visits,
                Text.from_markup("\n".join(lines)),
                Text.from_markup("awaiting review:\n" + review),
            ),
            title=f"patient {summary.patient}",
            title_align="left",
        )
    )
