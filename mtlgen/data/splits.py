"""Patient-level train/val/test splits: fixed by seed, written to a file DVC can track.

A patient's visits never cross splits. Adding patients later keeps everyone already assigned
where they were (assignment is by a seeded hash of the pseudonym, not by list position).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mtlgen.config import Params
from mtlgen.io.atomic import write_text_atomic
from mtlgen.registry.series import load_series

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, patient: str) -> str:
        for name in SPLITS:
            if patient in getattr(self, name):
                return name
        raise KeyError(f"patient {patient!r} is in no split")

    def sha256(self) -> str:
        return hashlib.sha256(_dump(self).encode()).hexdigest()


def _unit(seed: int, patient: str) -> float:
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def make_split(patients: list[str], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Assign each patient by a seeded hash; the smallest splits get at least one patient
    each when there are at least three patients."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"split fractions val={val_fraction}, test={test_fraction}: expected each in [0, 1) "
            "with val + test < 1"
        )
    ranked = sorted(set(patients), key=lambda p: _unit(seed, p))
    n = len(ranked)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    test, val, train = ranked[:n_test], ranked[n_test : n_test + n_val], ranked[n_test + n_val :]
    return Split(seed, tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def _dump(split: Split) -> str:
    return json.dumps(asdict(split), indent=2, sort_keys=True) + "\n"


def save_split(split: Split, path: Path | str) -> Path:
    return write_text_atomic(path, _dump(split))


def load_split(path: Path | str) -> Split:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        split = Split(int(raw["seed"]), *(tuple(raw[name]) for name in SPLITS))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: split file not found (run `mtlgen split` first)") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a split file ({exc}); expected seed, train, val, test") from None
    seen: dict[str, str] = {}
    for name in SPLITS:
        for patient in getattr(split, name):
            if patient in seen:
                raise ValueError(f"{path}: patient {patient!r} is in both {seen[patient]} and {name}")
            seen[patient] = name
    return split


def split_registry(params: Params, path: Path | str | None = None) -> tuple[Split, Path]:
    """Split the registry's patients by ``params.data`` and save it (default ``data.split_file``)."""
    patients = [s.patient for s in load_series(params.registry.url, params.registry.sqlite_timeout_s)]
    if not patients:
        raise ValueError(f"registry {params.registry.url} has no patients: register scans first")
    data = params.data
    split = make_split(patients, data.val_fraction, data.test_fraction, params.seed)
    return split, save_split(split, path or data.split_file)
