"""Which (context visits -> target visit) pairs a patient series offers.

Training datasets and evaluation enumerate samples here, so both ask the same questions:
- ``future``: the target is a later visit; the context is the up-to-K visits just before it.
- ``reconstruction``: the target lies between observed visits; the context is the up-to-K
  nearest other visits in time, on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mtlgen.io.series import PatientSeries

SampleKind = Literal["future", "reconstruction"]


@dataclass(frozen=True)
class SampleSpec:
    patient: str
    context: tuple[int, ...]  # indices into ``PatientSeries.visits``, ordered by time
    target: int
    kind: SampleKind


def enumerate_samples(
    series: PatientSeries, max_context: int, reconstruction: bool = True
) -> list[SampleSpec]:
    """All samples of ``series``; future targets need >= 1 earlier visit."""
    if max_context < 1:
        raise ValueError(f"max_context must be >= 1, got {max_context}")
    n = len(series.visits)
    specs = [
        SampleSpec(series.patient, tuple(range(max(0, j - max_context), j)), j, "future")
        for j in range(1, n)
    ]
    if reconstruction:
        days = [v.days for v in series.visits]
        for j in range(1, n - 1):
            others = sorted((i for i in range(n) if i != j), key=lambda i: (abs(days[i] - days[j]), i))
            context = tuple(sorted(others[:max_context]))
            if context[-1] > j:  # a real gap filler: it sees at least one later visit
                specs.append(SampleSpec(series.patient, context, j, "reconstruction"))
    return specs
