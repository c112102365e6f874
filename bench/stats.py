"""Numbers and tables: percentiles of samples and plain-text tables with aligned columns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SLACK_ACK_DEADLINE_MS = 3000.0


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """n, p50, p99, max and how many exceeded Slack's 3 s deadline."""
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "max": max(samples) if samples else None,
        "over_3s": sum(1 for s in samples if s > SLACK_ACK_DEADLINE_MS),
    }


def fmt(value: Any, digits: int = 0) -> str:
    """A cell: numbers rounded, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


@dataclass
class Table:
    """A titled table; numbers are right-aligned, text left-aligned."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digits: dict[str, int] = field(default_factory=dict)  # per column; default 0

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        texts = [[fmt(c, self.digits.get(self.columns[i], 0)) for i, c in enumerate(row)] for row in self.rows]
        widths = [max([len(h), *(len(r[i]) for r in texts)]) for i, h in enumerate(self.columns)]
        numeric = [
            all(isinstance(row[i], (int, float)) or row[i] is None for row in self.rows) and i > 0
            for i in range(len(self.columns))
        ]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)
            ).rstrip()

        out = [self.title, "=" * len(self.title), line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in texts]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        rows = [[round(c, 3) if isinstance(c, float) else c for c in row] for row in self.rows]
        return {"title": self.title, "columns": self.columns, "rows": rows, "notes": self.notes}
