"""Plain-text tables for the terminal: every column as wide as its widest value, numbers formatted for people.

One formatter serves every table the CLI prints (teachers, the comparison, runs, sweeps, presets).
Rows may be dicts, pydantic models or pandas records; a missing or NaN value prints as an empty cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

GAP = "  "  # between columns: two spaces keep neighbours apart even when both are numbers


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NaT are the values unequal to themselves
    except (TypeError, ValueError):  # e.g. pandas' NA, which has no truth value: not a missing number
        return False


def _cell(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
    """A formatter that prints a missing value as an empty cell."""
    return lambda value: "" if _missing(value) else fmt(value)


def fixed(digits: int, *, sign: bool = False) -> Callable[[Any], str]:
    """A number with `digits` decimals (and its sign, with sign=True): fixed(4)(0.98) -> '0.9800'."""
    spec = f"{'+' if sign else ''}.{digits}f"
    return _cell(lambda v: format(float(v), spec))


def millions(value: Any) -> str:
    """A count in millions: 1234567 -> '1.23M' (parameters)."""
    return "" if _missing(value) else f"{float(value) / 1e6:.2f}M"


def mega(value: Any) -> str:
    """A count in millions without a unit, for a column whose title carries it (MFLOPs): 4.2e6 -> '4.2'."""
    return "" if _missing(value) else f"{float(value) / 1e6:.1f}"


def percent(value: Any) -> str:
    """A fraction as a whole percentage: 0.5 -> '50%'."""
    return "" if _missing(value) else f"{float(value) * 100:.0f}%"


def minutes(value: Any) -> str:
    """A date and time to the minute: '2025-01-31 12:05'."""
    return "" if _missing(value) else value.strftime("%Y-%m-%d %H:%M")


def text(value: Any) -> str:
    """Any value as text; a missing one as an empty cell."""
    return "" if _missing(value) else str(value)


def as_dict(row: Any) -> dict[str, Any]:
    """A row as a dict: a pydantic model (extra fields included), a mapping, or a namedtuple."""
    if hasattr(row, "model_dump"):
        return row.model_dump()
    if hasattr(row, "_asdict"):
        return row._asdict()
    return dict(row)


@dataclass(frozen=True)
class Column:
    """A column: its title, the row field it shows (or a function of the row) and how it is printed."""

    title: str
    value: str | Callable[[Mapping[str, Any]], Any]
    fmt: Callable[[Any], str] = text
    left: bool = False  # names and labels line up on the left, numbers on the right

    def cell(self, row: Mapping[str, Any]) -> str:
        """This column's text for one row."""
        value = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        return self.fmt(value)


def plus_minus(mean: str, std: str, digits: int = 4, *, sign: bool = False) -> Callable[[Mapping[str, Any]], str]:
    """A cell value 'mean+-std' from two fields of a row: '0.9833+-0.0012'."""
    first, second = fixed(digits, sign=sign), fixed(digits)

    def value(row: Mapping[str, Any]) -> str:
        if _missing(row.get(mean)):
            return ""
        spread = second(row.get(std))
        return f"{first(row.get(mean))}+-{spread}" if spread else first(row.get(mean))
    return value


def text_table(rows: Iterable[Any], columns: Sequence[Column], *, header: bool = True, rule: bool = True) -> str:
    """The rows as a table: each column as wide as its widest cell (title included), GAP between columns."""
    # Laid out here rather than by DataFrame.to_string: pandas justifies every column the same way
    # (names must sit left, numbers right), and importing it costs `kdlab presets` about 1 s.
    cells = [[c.cell(as_dict(r)) for c in columns] for r in rows]
    titles = [c.title for c in columns]
    widths = [max([len(t) if header else 0, *(len(line[i]) for line in cells)]) for i, t in enumerate(titles)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if c.left else v.rjust(w) for v, w, c in zip(values, widths, columns)]
        return GAP.join(parts).rstrip()

    lines = []
    if header:
        lines.append(line(titles))
        if rule:
            lines.append("-" * len(GAP.join(" " * w for w in widths)))
    lines += [line(values) for values in cells]
    return "\n".join(lines)
