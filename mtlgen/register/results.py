"""What registering a patient (or a source) did: counts of registered, held-for-review and
unchanged files and the rejections, each with its one-line reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtlgen.io.source_types import ScanSource, VisitSource
from mtlgen.registry.record import RejectionRecord


@dataclass(frozen=True)
class Rejected:
    """One rejected file: its source path (shown only on request), the manifest line that named
    it, the visit and contrast it claimed, and why (a reason never holds the path)."""

    path: str
    visit: str | None
    kind: str
    reason: str
    line: int | None = None


@dataclass
class PatientResult:
    """What registering one patient did. ``pseudonym`` is None if the source id was invalid;
    ``label`` names the patient either way (``invalid-id-<hash>`` then)."""

    pseudonym: str | None
    registered: int = 0
    unchanged: int = 0
    needs_review: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    label: str = ""


@dataclass
class SourceResult:
    patients: list[PatientResult]

    @property
    def registered(self) -> int:
        return sum(p.registered for p in self.patients)

    @property
    def unchanged(self) -> int:
        return sum(p.unchanged for p in self.patients)

    @property
    def needs_review(self) -> int:
        return sum(p.needs_review for p in self.patients)

    @property
    def rejected(self) -> list[Rejected]:
        return [r for p in self.patients for r in p.rejected]


@dataclass
class Ledger:
    """The running result of registering one patient, with the sha256 of each rejected file
    (recorded with its rejection; the first one seen for a visit and path)."""

    result: PatientResult
    shas: dict[tuple[str, str], str] = field(default_factory=dict)

    def reject(
        self, visit: VisitSource | None, scan: ScanSource, reason: str, sha: str = ""
    ) -> None:
        """Record a rejection; the scan's paths are cut out of ``reason``."""
        for path in sorted({str(scan.path), *map(str, scan.files)}, key=len, reverse=True):
            reason = reason.replace(path, "<file>")
        visit_id = visit.visit_id if visit else None
        self.result.rejected.append(
            Rejected(str(scan.path), visit_id, scan.modality, reason, scan.line)
        )
        self.shas.setdefault((visit_id or "", str(scan.path)), sha)

    def rejections(self) -> list[RejectionRecord]:
        """The rejections as the registry records them."""
        return [
            RejectionRecord(
                r.visit,
                r.kind,
                r.path,
                self.shas.get((r.visit or "", r.path), ""),
                r.reason,
                self.result.label,
                r.line,
            )
            for r in self.result.rejected
        ]
