"""Cron expressions: the five-field syntax Prefect schedules accept, checked without Prefect."""

from __future__ import annotations

import re

_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_FIELDS = (  # name, lowest, highest, names allowed in place of numbers
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day of month", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?$")


def _value(text: str, lo: int, hi: int, names: list[str]) -> int:
    if text in names:
        return names.index(text) + (1 if lo == 1 else 0)
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ValueError(f"{text!r} is not in {lo}..{hi}")
    return int(text)


def check_cron(expr: str) -> str:
    """Return ``expr`` if it is a valid cron expression (5 fields, or a macro like ``@daily``)."""
    text = expr.strip().lower()
    if text in _MACROS:
        return expr.strip()
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"cron {expr!r}: expected 5 fields 'minute hour day-of-month month day-of-week' "
            f"(e.g. '0 2 * * *' = 02:00 daily) or one of {sorted(_MACROS)}"
        )
    for part, (name, lo, hi, names) in zip(parts, _FIELDS, strict=True):
        for item in part.split(","):
            match = _ITEM.match(item)
            try:
                if match is None:
                    raise ValueError(f"{item!r} is not N, N-M, * or a step like */15")
                span, step = match.groups()
                if step is not None and int(step) == 0:
                    raise ValueError("step 0")
                if span != "*":
                    bounds = [_value(v, lo, hi, names) for v in span.split("-")]
                    if bounds != sorted(bounds):
                        raise ValueError(f"range {span!r} runs backwards")
            except ValueError as exc:
                raise ValueError(f"cron {expr!r}: {name} field: {exc}") from None
    return expr.strip()
