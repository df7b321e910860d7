"""Turn what users pass as X (strings, pairs, dicts, DataFrames, datasets) into rows of template fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["to_rows"]


def to_rows(X: Any, fields: Sequence[str], columns: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Rows as ``{field: text}`` dicts for a template with ``fields``.

    ``X`` may be a string, a list of strings (one-field templates), a list of tuples (fields in
    template order), a list of dicts, a pandas DataFrame or Series, or a ``datasets.Dataset``.
    ``columns`` maps template fields to other column names: ``{"text": "review"}``.
    """
    columns = dict(columns or {})
    unknown = set(columns) - set(fields)
    if unknown:
        raise ValueError(f"columns maps fields {sorted(unknown)} that the template does not have; its fields are {list(fields)}")
    source = {f: columns.get(f, f) for f in fields}

    if X is None:
        raise ValueError("X is None: pass texts (a string, a list of strings, of tuples or of dicts, a DataFrame or a dataset)")
    if isinstance(X, str):
        X = [X]
    elif isinstance(X, Mapping) and X and all(isinstance(v, str) for v in X.values()):
        X = [X]  # one row given as a dict, {"text": "good food"}
    elif not isinstance(X, (Sequence, Mapping)) and not hasattr(X, "__len__"):
        try:
            X = list(X)  # a generator or another one-pass iterable
        except TypeError:
            raise TypeError(
                f"X must be texts (a string, a list, a DataFrame or a dataset), got {type(X).__name__}: {X!r}"
            ) from None
    table = _as_columns(X)
    if table is not None:
        for field, column in source.items():
            if column not in table:
                raise ValueError(
                    f"column {column!r} for template field {field!r} is missing; the data has columns "
                    f"{list(table)}: rename a column or map it (columns={{{field!r}: '<column>'}}, or --column {field}=COLUMN "
                    "on the command line)"
                )
        n = len(next(iter(table.values()))) if table else 0
        rows = [{f: table[c][i] for f, c in source.items()} for i in range(n)]
    else:
        rows = [_row(x, i, fields, source) for i, x in enumerate(X)]
    for i, row in enumerate(rows):
        for f, value in row.items():
            if not isinstance(value, str):
                kind = "missing" if value is None or value != value else f"a {type(value).__name__}, not a string"
                raise ValueError(f"row {i}: field {f!r} (column {source[f]!r}) is {kind}: {value!r}")
    return rows


def _as_columns(X: Any) -> dict[str, list[Any]] | None:
    """Column-wise view of DataFrame-like and Dataset inputs, else None."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None:
        if isinstance(X, pd.DataFrame):
            return {str(c): X[c].tolist() for c in X.columns}
        if isinstance(X, pd.Series):
            return None  # treated as a sequence of values
    try:
        import datasets
    except ImportError:  # pragma: no cover
        datasets = None
    if datasets is not None and isinstance(X, datasets.Dataset):
        return {c: X[c] for c in X.column_names}
    if isinstance(X, Mapping):
        out = {}
        for k, v in X.items():
            if isinstance(v, str) or not isinstance(v, (Sequence, Iterable)):
                raise ValueError(
                    f"a dict X is either one row ({{field: text}}, every value a string) or columns ({{field: [texts]}}); "
                    f"key {k!r} holds {type(v).__name__} {v!r}"
                )
            out[str(k)] = list(v)
        lengths = {len(v) for v in out.values()}
        if len(lengths) > 1:
            raise ValueError(f"the columns of a dict X have different lengths: { {k: len(v) for k, v in out.items()} }")
        return out
    return None


def _row(x: Any, i: int, fields: Sequence[str], source: Mapping[str, str]) -> dict[str, Any]:
    if isinstance(x, Mapping):
        missing = [c for c in source.values() if c not in x]
        if missing:
            raise ValueError(f"row {i}: key {missing[0]!r} is missing; the row has keys {list(x)}")
        return {f: x[c] for f, c in source.items()}
    if isinstance(x, str):
        if len(fields) != 1:
            raise ValueError(
                f"row {i} is a single string but the template has fields {list(fields)}: "
                "pass tuples in field order, dicts, or a DataFrame"
            )
        return {fields[0]: x}
    if isinstance(x, Sequence):
        if len(x) != len(fields):
            raise ValueError(f"row {i} has {len(x)} values but the template has fields {list(fields)}")
        return dict(zip(fields, x))
    raise TypeError(f"row {i}: expected a string, a tuple or a dict, got {type(x).__name__}: {x!r}")
