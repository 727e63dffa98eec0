"""Tables of the command line that fit the terminal (or the 80 columns of a pipe).

Ids (job ids, dead-letter entry ids) are never cut or wrapped: an operator copies them
into the next command. Short columns (times, statuses, numbers) are shown whole or not
at all; text columns (notes, reasons) wrap. Columns that do not fit are left out, most
useful first kept, and the caller tells the user which ones (`hidden_hint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.table import Table

__all__ = ["Column", "fit_table", "hidden_hint"]

GAP = 2  # spaces between two columns (padding 1 on each side, none at the edges)


@dataclass(frozen=True, slots=True)
class Column:
    """One column: `kind` "id" is always shown whole, "fixed" whole or not at all,
    "text" wraps down to `min_width`. `keep` ranks the columns that may be left out:
    lower is kept first."""

    header: str
    kind: Literal["id", "fixed", "text"] = "fixed"
    keep: int = 0
    min_width: int = 16


def _natural(header: str, cells: Sequence[str]) -> int:
    widths = [cell_len(line) for cell in cells for line in cell.splitlines() or [""]]
    return max([cell_len(header), *widths])


def fit_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> tuple[Table, list[str]]:
    """A table of `rows` within `width` characters, and the headers left out.

    Every id column is shown whole even when the ids alone are wider than `width` (the
    terminal wraps the line; cutting an id would make it useless)."""
    natural = [_natural(c.header, [row[i] for row in rows]) for i, c in enumerate(columns)]
    need = [
        min(n, c.min_width) if c.kind == "text" else n
        for n, c in zip(natural, columns, strict=True)
    ]
    shown = {i for i, c in enumerate(columns) if c.kind == "id"}

    def total(picked: set[int]) -> int:
        return sum(need[i] for i in picked) + GAP * max(0, len(picked) - 1)

    optional = sorted(
        (i for i in range(len(columns)) if i not in shown), key=lambda i: columns[i].keep
    )
    for i in optional:
        if total(shown | {i}) <= width:
            shown.add(i)
    picked = sorted(shown)
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
    for i in picked:
        column = columns[i]
        if column.kind == "text":
            table.add_column(column.header, overflow="fold", min_width=need[i])
        else:
            table.add_column(column.header, no_wrap=True, overflow="fold", width=natural[i])
    for row in rows:
        table.add_row(*(row[i] for i in picked))
    if total(shown) > width:
        table.width = total(shown)  # ids wider than the terminal: longer lines, ids whole
    hidden = [columns[i].header for i in range(len(columns)) if i not in shown]
    return table, hidden


def hidden_hint(hidden: Sequence[str], width: int) -> str | None:
    """What to tell the user about left-out columns (None when all are shown)."""
    if not hidden:
        return None
    return (
        f"(not shown at {width} columns: {', '.join(hidden)}; "
        "widen the terminal, set COLUMNS, or use --json)"
    )
