"""Cron expressions as Prefect's ``Cron`` schedule accepts them, checked with croniter (the
library Prefect's own validator uses), with the offending field named in the error."""

from __future__ import annotations

_CRON_FIELDS = (  # croniter's order: a 6th field is seconds, a 7th the year
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L"),
    ("month", "1-12, jan-dec"),
    ("day-of-week", "0-7, sun-sat, 1#2, L5"),
    ("second", "0-59"),
    ("year", "1970-2099"),
)
_CRON_FORM = (
    "expected 5 fields 'minute hour day-of-month month day-of-week' (e.g. '0 2 * * *' = 02:00 "
    "daily; each field *, N, N-M, N,M or a step like */15) or a macro such as @daily"
)


def _cron_problem(expr: str) -> str | None:
    """What Prefect's ``Cron`` schedule would reject in ``expr`` (None if nothing). Prefect checks
    ``croniter.is_valid`` and refuses random/hashed fields (R, H); its vendored croniter also lacks
    the nearest-weekday form (15W) that newer croniter releases accept."""
    from croniter import croniter

    fields = expr.split()
    if not croniter.is_valid(expr):
        if len(fields) == 1 and fields[0].startswith("@"):
            return "unknown macro (@hourly, @daily, @midnight, @weekly, @monthly, @yearly)"
        if not 5 <= len(fields) <= 7:
            return f"{len(fields)} field(s)"
        for i, text in enumerate(fields):
            probe = " ".join(text if j == i else "*" for j in range(len(fields)))
            if not croniter.is_valid(probe):
                name, allowed = _CRON_FIELDS[i]
                return f"{name} field {text!r} is not valid ({allowed})"
        return "the fields do not combine into a valid schedule"
    for i, text in enumerate(fields):
        name = _CRON_FIELDS[i][0]
        if text.casefold() in ("r", "h"):
            return f"{name} field {text!r}: random/hashed values are not supported by Prefect"
        if i == 2 and "w" in text.casefold():
            return f"{name} field {text!r}: nearest weekday (W) is not supported by Prefect"
    return None


def check_cron(expr: str) -> str:
    """Return ``expr`` if Prefect's ``Cron`` schedule accepts it, else raise ValueError naming
    the offending cron field and showing the expected form."""
    problem = _cron_problem(expr)
    if problem is not None:
        raise ValueError(f"cron {expr!r}: {problem}; {_CRON_FORM}")
    return expr.strip()
