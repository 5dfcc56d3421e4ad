"""CSV files that are safe to open in a spreadsheet: a file named ``=HYPERLINK(...).png`` must
not become a formula in the predictions someone opens (CSV injection)."""

from __future__ import annotations

import pandas as pd
from kedro_datasets.pandas import CSVDataset

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP's list)."""
ESCAPE = "'"


def escape_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every text cell that starts like a formula prefixed with ``'``
    (numbers stay numbers: -0.5 is no formula)."""
    escaped = table.copy()
    for column in escaped.columns:
        if escaped[column].dtype == object or pd.api.types.is_string_dtype(escaped[column]):
            escaped[column] = escaped[column].map(_escape)
    return escaped


def unescape_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`escape_formulas` for a table read back."""
    restored = table.copy()
    for column in restored.columns:
        if restored[column].dtype == object or pd.api.types.is_string_dtype(restored[column]):
            restored[column] = restored[column].map(_unescape)
    return restored


def _escape(value: object) -> object:
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, ESCAPE)):
        return ESCAPE + value  # a leading ' is escaped too, so reading back is exact
    return value


def _unescape(value: object) -> object:
    if isinstance(value, str) and value.startswith(ESCAPE):
        return value[len(ESCAPE) :]
    return value


class SpreadsheetSafeCSVDataset(CSVDataset):
    """kedro-datasets' pandas CSVDataset that escapes formula-like text cells on save and
    restores them on load."""

    def save(self, data: pd.DataFrame) -> None:
        super().save(escape_formulas(data))

    def load(self) -> pd.DataFrame:
        return unescape_formulas(super().load())
