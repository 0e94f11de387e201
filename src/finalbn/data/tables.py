"""A labels table as people export it, and its labels as archives write them (`sources` reads a
csv dataset through it).

    df, how = read(path, "dataset isic: labels table t.csv", ["image", "dx"], separator=None, encoding=None)
    how    # {"encoding": "cp1252", "encoding_from": "fallback", "separator": ";", "separator_from": "sniffed"}
    label_key("1.0") == label_key("1")      # numbers compare as numbers, other text as text

- Encoding: `table_encoding` when set; else from a byte-order mark (UTF-8, UTF-16: Excel's
  "Unicode Text", UTF-32); else UTF-8; else cp1252 (the fallback, recorded and said). A table
  that is none of these, or holds NUL bytes without a mark (UTF-16 without one), is refused.
- Separator: `table_separator` when set; else the one `csv.Sniffer` finds among `, ; tab |`,
  whatever the suffix, provided the header then holds the columns the dataset names; else the
  first of these that does.
- Every cell is text (names with leading zeros stay as written); pandas parses.
- One-hot tables (`one_hot: true`): a row's class is the listed class column holding 1.

Raises DataError (one line) naming the encoding and separator found and the option to set.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from decimal import Decimal
from pathlib import Path
from typing import cast

import pandas as pd
from charset_normalizer import from_bytes

from finalbn.config import DatasetConfig
from finalbn.infra.errors import DataError

SEPARATORS = (",", ";", "\t", "|")
SEPARATOR_WORDS = {"tab": "\t", "\\t": "\t"}  # how a tab is written in params.yaml or --set
FALLBACK = "cp1252"  # Excel's "CSV" on Western Windows
# UTF-32's marks first: UTF-32-LE's starts with UTF-16-LE's
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_OPTIONS = "set table_separator and table_encoding if the table is written otherwise"


def label_key(text: str) -> Decimal | str:
    """What a label compares by: the number for numeric text (`1`, `1.0`, `1e0` are one label),
    else the text itself (surrounding spaces dropped)."""
    text = text.strip()
    return Decimal(text) if _NUMBER.fullmatch(text) else text


def separator_of(option: str | None) -> str | None:
    """The character `table_separator` names (`tab` and a typed `\\t` are a tab)."""
    return SEPARATOR_WORDS.get(option, option) if option else None


def read(
    path: Path, where: str, needed: list[str], separator: str | None = None, encoding: str | None = None
) -> tuple[pd.DataFrame, dict]:
    """The table as text cells (header stripped) and how it was read; `where` starts each message."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc.strerror or exc})") from None
    text, enc, enc_from = _decode(raw, where, encoding)
    if not text.strip():
        raise DataError(f"{where} is empty")
    sniffed = _sniff(text)
    if separator:
        seps, sep_from = [cast(str, separator_of(separator))], "table_separator"  # a str: `separator` is set
    else:
        seps = list(
            dict.fromkeys(
                [*([sniffed] if sniffed else []), *(("\t",) if path.suffix.lower() == ".tsv" else ()), *SEPARATORS]
            )
        )
        sep_from = "sniffed"
    sep = next((s for s in seps if set(needed) <= set(_header(text, s))), seps[0])
    if sep != sniffed and sep_from == "sniffed":
        sep_from = "header"  # the first separator under which the header holds the named columns
    how = {"encoding": enc, "encoding_from": enc_from, "separator": sep, "separator_from": sep_from}
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where} is empty") from None
    except (pd.errors.ParserError, csv.Error) as exc:
        raise DataError(
            f"{where} cannot be read as CSV ({' '.join(str(exc).split())}); {read_as(how)}: {_OPTIONS}"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df, how


def read_as(how: dict) -> str:
    """`read as cp1252 (fallback: not UTF-8), separator ';' (sniffed)`, for messages."""
    notes = {"fallback": " (fallback: not UTF-8)", "BOM": " (byte-order mark)"}
    return (
        f"read as {how['encoding']}{notes.get(how['encoding_from'], '')}, separator {how['separator']!r} "
        f"({how['separator_from']})"
    )


def _decode(raw: bytes, where: str, encoding: str | None) -> tuple[str, str, str]:
    """(text, encoding, where the encoding came from: table_encoding, BOM, UTF-8 or fallback)."""
    if encoding:
        try:
            return raw.decode(encoding), encoding, "table_encoding"
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{where} is not {encoding} (table_encoding): {_bad(exc)}{_guess(raw)}; set "
                "table_encoding to its encoding, or null to detect it"
            ) from None
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec), codec, "BOM"
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where} starts with a {codec} byte-order mark but is not {codec} ({_bad(exc)}); "
                    "set table_encoding to its encoding"
                ) from None
    if b"\x00" in raw:  # UTF-16/32 without a mark decodes as UTF-8 full of NULs: never guess that
        raise DataError(
            f"{where} holds NUL bytes and no byte-order mark (UTF-16 or UTF-32 without one?"
            f"{_guess(raw, ' ')}); set table_encoding (e.g. utf-16-le)"
        )
    try:
        return raw.decode("utf-8"), "utf-8", "UTF-8"
    except UnicodeDecodeError as exc:
        not_utf8 = exc
    try:
        return raw.decode(FALLBACK), FALLBACK, "fallback"
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where} is neither UTF-8 ({_bad(not_utf8)}) nor {FALLBACK} ({_bad(exc)}){_guess(raw)}; "
            "set table_encoding to its encoding (e.g. cp1250, latin-1, shift_jis)"
        ) from None


def _bad(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"


def _guess(raw: bytes, sep: str = "; ") -> str:
    """charset-normalizer's guess at an encoding, for a refusal's hint (never used to read)."""
    best = from_bytes(raw[: 1 << 16]).best()
    return f"{sep}charset-normalizer guesses {best.encoding}" if best is not None else ""


def _sniff(text: str) -> str | None:
    """The separator csv.Sniffer finds in the first lines, among SEPARATORS (None: it finds none)."""
    sample = "".join(text.splitlines(keepends=True)[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(SEPARATORS)).delimiter
    except csv.Error:
        return None


def _header(text: str, sep: str) -> list[str]:
    try:
        return [str(c).strip() for c in pd.read_csv(io.StringIO(text), sep=sep, nrows=0, dtype=str).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error):
        return []


# ---------------------------------------------------------------- labels


def row_labels(ds: DatasetConfig, df: pd.DataFrame) -> list[tuple[str, str | None]]:
    """Per row, (label as written, why the row has none or None). With a label column, its text.
    One-hot (`ds.one_hot`): the class column among majority/minority that holds 1; a row whose 1
    is in an unlisted column is labelled by that column (in neither list); a row with no 1, several
    1s or a value other than 0/1 in the listed columns has no label and says why."""
    if not ds.one_hot:
        return [(v.strip(), None) for v in df[ds.label_column]]
    classes = list(dict.fromkeys(c.strip() for c in (*ds.majority, *ds.minority)))
    others = [c for c in df.columns if c not in classes and c != ds.image_column]
    return [_one_hot(row, classes, others) for row in df[classes + others].to_dict("records")]


def _one_hot(row: dict[str, str], classes: list[str], others: list[str]) -> tuple[str, str | None]:
    odd = next(((c, row[c]) for c in classes if label_key(row[c]) not in (0, 1)), None)
    if odd:
        return "", f"class column {odd[0]!r} holds {odd[1]!r}, not 0 or 1"
    ones = [c for c in classes if label_key(row[c]) == 1]
    if len(ones) > 1:
        return "+".join(ones), f"several classes: columns {', '.join(map(repr, ones))} each hold 1"
    if ones:
        return ones[0], None
    elsewhere = [c for c in others if label_key(row[c]) == 1]
    if elsewhere:
        label = "+".join(elsewhere)
        return label, (
            f"label {label!r} is in neither majority nor minority (the row's 1 is in column "
            f"{', '.join(map(repr, elsewhere))})"
        )
    return "", f"no class: none of the columns {', '.join(map(repr, classes))} holds 1"
