"""A run's output folder: its versioned JSON and its CSV of curves (pure: no torch).

``bscrit svag --out`` and ``bscrit confirm --out`` each write a folder of two files, a JSON
artifact (``"kind"``, ``"schema"``) and a CSV with one row per evaluation point. A
:class:`RunArtifact` names the two files and holds the JSON's *own* schema number and upgrades:
a run artifact never borrows the measurement's (:data:`bscrit.artifacts.measurement.SCHEMA`), so a
new measurement format cannot re-version it, and it is read with its own upgrades only.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from bscrit.artifacts.files import dumps, read_json
from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.artifacts.measurement import check_schema
from bscrit.errors import ArtifactError

__all__ = ["RunArtifact", "csv_table", "none_to_nan", "values_from_json", "values_to_json"]

PathLike = str | os.PathLike[str]


class _Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=_Result)
#: ``upgrades[v]`` rewrites a schema-v artifact as schema v + 1.
Upgrades = Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]


def none_to_nan(x: float | None) -> float:
    """A JSON number read back: ``null`` (a value that was not finite) → NaN."""
    return math.nan if x is None else float(x)


def values_to_json(values: Mapping[str, Sequence[float]]) -> dict[str, list[float | None]]:
    """Test function → its values, non-finite ones as ``null``."""
    return {k: [finite_or_none(v) for v in vs] for k, vs in values.items()}


def values_from_json(d: Mapping[str, Sequence[float | None]]) -> dict[str, tuple[float, ...]]:
    """The inverse of :func:`values_to_json` (``null`` → NaN)."""
    return {k: tuple(none_to_nan(v) for v in vs) for k, vs in d.items()}


def csv_table(
    head: Sequence[str],
    metrics: Sequence[str],
    rows: Iterable[tuple[Sequence[Any], Mapping[str, Sequence[float]], int]],
) -> str:
    """CSV text: the columns ``head`` then ``metrics``; each row ``(first cells, values, i)``
    continues with ``values[m][i]`` of every metric, a non-finite value as an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*head, *metrics])
    for cells, values, i in rows:
        w.writerow([*cells, *(_cell(values[m][i]) for m in metrics)])
    return buf.getvalue()


def _cell(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else ""


@dataclass(frozen=True)
class RunArtifact(Generic[T]):
    """The folder a kind of run writes (``--out``): its two files and its JSON's own format.

    Attributes:
        kind: the JSON's ``"kind"`` ("bscrit.svag").
        schema: the JSON's own format number, with its own history (never the measurement's).
        json_name, csv_name: the two files in the folder.
        name: what error messages call it ("SVAG").
        command: the command that writes it (for error messages).
        to_csv: the CSV text of a result.
        from_dict: a result from its JSON (``(d, source)``; it calls :meth:`check`).
        upgrades: ``upgrades[v]`` rewrites a schema-v file as schema v + 1.
    """

    kind: str
    schema: int
    json_name: str
    csv_name: str
    name: str
    command: str
    to_csv: Callable[[T], str]
    from_dict: Callable[[dict[str, Any], str], T]
    upgrades: Upgrades = field(default_factory=dict)

    def paths(self, out_dir: PathLike) -> tuple[Path, Path]:
        """The two files :meth:`write` writes into ``out_dir``."""
        return Path(out_dir) / self.json_name, Path(out_dir) / self.csv_name

    def header(self) -> dict[str, Any]:
        """The first keys of the JSON: ``schema`` and ``kind``."""
        return {"schema": self.schema, "kind": self.kind}

    def write(self, result: T, out_dir: PathLike) -> tuple[Path, Path]:
        """Write the JSON and the CSV of ``result`` into ``out_dir`` (created), each file
        atomically."""
        from bscrit.artifacts.folders import write_folder

        files = [(self.json_name, dumps(result.to_dict())), (self.csv_name, self.to_csv(result))]
        j, c = write_folder(out_dir, files)
        return j, c

    def load(self, path: PathLike) -> T:
        """Read the JSON in ``path`` (the file, or the folder holding it)."""
        from bscrit.artifacts.folders import file_in

        p = file_in(path, self.json_name)
        return self.from_dict(read_json(p), str(p))

    def check(self, d: Any, source: str) -> dict[str, Any]:
        """``d`` as a dict of :attr:`schema`: its kind checked, an older schema upgraded with
        :attr:`upgrades`, a newer one refused ("upgrade bscrit")."""
        return check_schema(d, self.kind, source, schema=self.schema, upgrades=dict(self.upgrades))

    def malformed(self, source: str, e: Exception) -> ArtifactError:
        """The error for a file of the right kind that lacks a key or holds a bad value."""
        return ArtifactError(
            f"{source}: malformed {self.name} artifact ({type(e).__name__}: {e}); "
            f"expected the {self.json_name} written by `{self.command} --out`"
        )
