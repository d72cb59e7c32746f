"""How the numbers of a text column are written: decimal mark, thousands grouping, and what stays ambiguous.

A CSV cell such as ``1.021`` is one thousand and twenty-one in a German export and a little over
one in an American one; ``1,000`` is a thousand or one. Reading either the wrong way is a silent
misread, the worst kind: the model trains on it and no check notices. So the format is decided on
every value of the column (not on a sample of the file), and where the column alone cannot tell, on
what the rest of the file says: a file that writes ``47,37`` elsewhere writes decimals with commas,
so its ``1.021`` groups thousands. A column that nothing decides is an error naming the options
that do (``--decimal``, ``--thousands``), never a guess.

Pure functions on the column's distinct values; ``ingest`` does the reading and the notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnops.errors import InvalidInputError

MINUS_SIGNS = "\u2212\u2013"  # Unicode minus and en dash, as spreadsheets and word processors write a negative number
_SPACES = "\u00a0\u202f"  # no-break and narrow no-break spaces (French and Swiss locales group thousands with them)
_NUMBER_POINT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NUMBER_COMMA = re.compile(r"[+-]?\d*,\d+")
# one mark followed by exactly three digits: a decimal or a thousands group, the value alone cannot tell
_AMBIGUOUS = {".": re.compile(r"[+-]?[1-9]\d{0,2}\.\d{3}"), ",": re.compile(r"[+-]?[1-9]\d{0,2},\d{3}")}
# well-formed thousands groups with the other mark as the decimal: 1.234.567  1.234,5  1,234,567  1,234.5
_GROUPED = {
    (".", ","): re.compile(r"[+-]?[1-9]\d{0,2}(?:\.\d{3})+(?:,\d+)?"),
    (",", "."): re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?"),
}
# groups of three digits by spaces or apostrophes (1 234,5  1'234.5): unambiguous, always read
_SPACE_GROUPED = re.compile(r"[+-]?[1-9]\d{0,2}(?:[ '" + _SPACES + r"]\d{3})+(?:[.,]\d+)?")
# what a person would call a number even though it is not plain: 5%  (12.50)  $1,200  -3 €
_NUMBER_LIKE = re.compile(r"[(+-]?\s*[$€£¥]?\s*[+-]?\d[\d.,' " + _SPACES + r"]*\s*[%€$£¥)]?")


class AmbiguousNumbersError(InvalidInputError):
    """A column's numbers read two ways and nothing in the file says which."""


def normalized(values: pd.Series) -> pd.Series:
    """Text values stripped, with Unicode minus signs as ASCII ones."""
    text = values.astype(str).str.strip()
    for sign in MINUS_SIGNS:
        text = text.str.replace(sign, "-", regex=False)
    return text


@dataclass(frozen=True)
class Evidence:
    """What a column's distinct values say about the decimal mark: examples of each kind found."""

    comma: str | None = None  # a value only a decimal comma explains: 47,37  1.234,56  1.234.567
    point: str | None = None  # a value only a decimal point explains: 3.5  0.568  1,234.56  1,234,567
    ambiguous: dict[str, str] | None = None  # mark -> an example such as 1.021 or 1,000

    @property
    def decimal(self) -> str | None:
        """The column's own verdict: one mark explained, the other not; None when it has neither or both."""
        if self.comma and not self.point:
            return ","
        if self.point and not self.comma:
            return "."
        return None


def _first(values: pd.Series, mask: pd.Series) -> str | None:
    hit = values[mask.to_numpy()]
    return str(hit.iloc[0]) if len(hit) else None


def evidence(values: pd.Series) -> Evidence:
    """Evidence from a column's distinct (normalized) text values."""
    amb = {m: values.str.fullmatch(rx) for m, rx in _AMBIGUOUS.items()}
    comma_only = (values.str.fullmatch(_NUMBER_COMMA) & ~amb[","]) | (values.str.fullmatch(_GROUPED[(".", ",")]) & ~amb["."])
    point_only = (values.str.fullmatch(_NUMBER_POINT) & ~amb["."]) | (values.str.fullmatch(_GROUPED[(",", ".")]) & ~amb[","])
    spaced = values.str.fullmatch(_SPACE_GROUPED)
    comma_only |= spaced & values.str.contains(",", regex=False)
    point_only |= spaced & values.str.contains(".", regex=False)
    ambiguous = {m: ex for m, hit in amb.items() if (ex := _first(values, hit)) is not None}
    return Evidence(_first(values, comma_only), _first(values, point_only), ambiguous or None)


def file_decimal(columns: dict[str, Evidence]) -> str | None:
    """The decimal mark the file's columns agree on; None when none tells or they disagree."""
    verdicts = {e.decimal for e in columns.values()} - {None}
    return verdicts.pop() if len(verdicts) == 1 else None


@dataclass(frozen=True)
class NumberFormat:
    decimal: str  # "." or ","
    thousands: str  # the mark grouping thousands ("" for none); spaces and apostrophes group always
    decided_by: str  # "option", "column", "file" or "default": how the decimal mark was decided


def column_format(name: str, ev: Evidence, in_file: str | None, decimal: str | None, thousands: str | None) -> NumberFormat:
    """The format a column is read in; ``decimal`` and ``thousands`` are the options (None: detect).

    Raises ``AmbiguousNumbersError`` when the column has values such as 1,000 or 1.021 and neither the
    options, the column nor the rest of the file decides between a decimal and a thousands group.
    """
    if decimal is not None:
        chosen, how = decimal, "option"
    elif thousands in (".", ","):
        chosen, how = ("," if thousands == "." else "."), "option"
    elif ev.decimal is not None:
        chosen, how = ev.decimal, "column"
    elif in_file is not None:
        chosen, how = in_file, "file"
    elif thousands is not None and ev.ambiguous and list(ev.ambiguous) == [","]:
        chosen, how = ",", "option"  # no grouping by commas: 1,000 is a decimal
    elif thousands is not None or not ev.ambiguous:
        chosen, how = ".", "default"
    else:
        mark, example = next(iter(ev.ambiguous.items()))
        whole = example.replace(mark, "")
        fraction = example.replace(mark, ".")
        raise AmbiguousNumbersError(
            f"column {name!r}: values such as {example!r} read either as {whole} ({mark!r} grouping thousands) or as "
            f"{float(fraction):g} (a decimal {'comma' if mark == ',' else 'point'}), and nothing else in the file says which; "
            f"set --thousands {mark!r} for {whole}, or --decimal {mark!r} for {float(fraction):g}",
            field="--thousands",
        )
    grouping = thousands if thousands is not None else ("." if chosen == "," else ",")
    return NumberFormat(chosen, grouping, how)


def parse(values: pd.Series, fmt: NumberFormat) -> tuple[pd.Series, int]:
    """Numbers from normalized text values (NaN where a value is not a number in this format), and how many were grouped."""
    text = values.copy()
    grouped = pd.Series(False, index=values.index)
    if fmt.thousands in (".", ",") and fmt.thousands != fmt.decimal:
        grouped = values.str.fullmatch(_GROUPED[(fmt.thousands, fmt.decimal)])
        text = text.where(~grouped, text.str.replace(fmt.thousands, "", regex=False))
    spaced = text.str.fullmatch(_SPACE_GROUPED)
    text = text.where(~spaced, text.str.replace(r"[ '" + _SPACES + "]", "", regex=True))
    other = "." if fmt.decimal == "," else ","
    wrong = text.str.contains(other, regex=False)  # the other mark left over: not a number in this format
    text = text.str.replace(",", ".", regex=False) if fmt.decimal == "," else text
    numbers = pd.to_numeric(text.where(~wrong), errors="coerce")
    return numbers.astype("float64"), int((grouped | spaced).sum())


def number_like(values: pd.Series) -> pd.Series:
    """Whether each normalized value looks like a number written for people (percent, currency, parentheses)."""
    return values.str.fullmatch(_NUMBER_LIKE).fillna(False).astype(bool)


def share(mask: pd.Series, counts: np.ndarray) -> float:
    """The share of rows (each distinct value weighted by how often it occurs) where ``mask`` holds."""
    total = counts.sum()
    return float(counts[mask.to_numpy()].sum() / total) if total else 0.0
