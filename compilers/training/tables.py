"""`seqdsl data csv`: a real table (``.csv`` or ``.parquet``) in, training and validation windows out.

    windows = table_windows("co2.csv", columns=["co2"], target="co2", window=36, horizon=12)
    # windows.train / windows.val: x (N, W, d) float32 and target (N, H) float32, normalised, with the statistics

Rows are taken in the file's order, which is the time order. The last ``val_fraction`` of the rows is the
validation part, and no window crosses the boundary: a training window (W input rows, then the H target rows)
lies wholly before it, a validation window wholly after it. Each column is normalised as (v − mean) / std with the
mean and the standard deviation of the training part alone, and the statistics are stored beside the arrays under
the names `seqdsl.compilers.normalise` reads (``x_mean``, ``x_std``, ``target_mean``, ``target_std``), so that they travel
with the model into ``build.json`` and, with ``--raw-io``, into ``model.onnx``.

A table is untrusted input: it is parsed by pandas (CSV, every cell read as text and converted here) or pyarrow
(Parquet), nothing in it is evaluated, and its size is bounded before it is read (`MAX_TABLE_BYTES`, `MAX_ROWS`,
and the windows written, `MAX_WINDOW_BYTES`). Each mistake is one `SpecError` (E0709) naming the file and, where
there is one, the row and the column (for a CSV, its line and the field's character column).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqdsl.errors import Location, SpecError, did_you_mean
from seqdsl.text import plain_text

#: A table file larger than this is refused before it is read (for Parquet also: the columns read, unpacked).
MAX_TABLE_BYTES = 512 * 2**20
#: A table of more rows than this is refused (the rows are counted before the values are converted).
MAX_ROWS = 5_000_000
#: The windows written (train and validation, float32) may take at most this many bytes.
MAX_WINDOW_BYTES = 4 * 2**30
SUFFIXES = (".csv", ".parquet")
#: Cells a CSV may use for "no value": each is reported as a missing value, not as a non-number.
_MISSING = {"", "nan", "na", "n/a", "null", "none", "-nan", "+nan"}


@dataclass
class Windows:
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    rows: int  # of the table
    split: int  # the first row of the validation part
    columns: list[str]
    target: str


def _shown(text: object, limit: int = 60) -> str:
    """A name or cell of the file as a message shows it: plain, one line, bounded."""
    return plain_text(str(text), limit).replace("\n", " ").replace("\t", " ")


class TableError(SpecError):
    """A SpecError about a table, whose excerpt is the offending line made plain (the file is not a spec: its
    lines may hold control characters, which never reach the terminal)."""

    excerpt_line: str | None = None

    def format(self, source: str | None = None) -> str:
        if source is None and self.excerpt_line is not None and self.loc.line:
            source = "\n" * (self.loc.line - 1) + self.excerpt_line
        elif source is None and self.loc.line:
            source = ""  # no excerpt rather than the raw line
        return super().format(source)


def _error(file: str, message: str, hint: str | None = None, line: int = 0, col: int = 0, length: int = 1,
           excerpt: str | None = None, path: str = "", **kw: str) -> TableError:
    exc = TableError("E0709", message, Location(file, line, col, path, length), hint=hint, **kw)
    exc.excerpt_line = excerpt
    return exc


def read_table(path: str | Path, columns: list[str]) -> np.ndarray:
    """The ``columns`` of the table at ``path`` as a (rows, columns) float64 array, every value finite."""
    file = str(path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        ends = _shown(suffix) or "no suffix"
        raise _error(file, f"{_shown(p.name)}: not a table seqdsl reads (the name ends in {ends})",
                     "give a .csv or a .parquet file")
    if not p.is_file():
        raise _error(file, f"{_shown(file)}: " + ("no such file" if not p.exists() else "not a file"),
                     "check the path")
    size = p.stat().st_size
    if size > MAX_TABLE_BYTES:
        raise _error(file, f"the table is {size / 2**20:,.0f} MiB, above the limit of {MAX_TABLE_BYTES // 2**20} MiB",
                     "cut the table to the rows and columns you train on")
    if len(set(columns)) != len(columns) or not columns:
        raise _error(file, "--columns: " + ("no column given" if not columns else "a column is named twice"),
                     "--columns NAME[,NAME...], each once", path="--columns")
    return _read_csv(p, file, columns) if suffix == ".csv" else _read_parquet(p, file, columns)


def _missing_column(file: str, name: str, have: list[str], line: int = 0) -> TableError:
    shown = ", ".join(f"`{_shown(c, 30)}`" for c in have[:12]) + (", ..." if len(have) > 12 else "")
    return _error(file, f"no column `{_shown(name)}` in the table", did_you_mean(name, have) or "--columns and "
                  "--target name columns of the header", line=line, col=1 if line else 0, found=shown or "no columns")


def _read_csv(p: Path, file: str, columns: list[str]) -> np.ndarray:
    import pandas as pd

    try:
        header = list(pd.read_csv(p, nrows=0, encoding="utf-8").columns)
        for name in columns:
            if name not in header:
                raise _missing_column(file, name, [str(c) for c in header], line=1)
        # blank lines kept (as missing values), so that data row r is line r + 1 of the file
        frame = pd.read_csv(p, usecols=columns, dtype=str, keep_default_na=False, na_filter=False,
                            skip_blank_lines=False, encoding="utf-8", nrows=MAX_ROWS + 1, engine="c")
    except SpecError:
        raise
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = _shown(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)
        raise _error(file, f"cannot read the table as CSV ({reason})",
                     "a UTF-8 CSV file with a header line naming the columns") from None
    _row_cap(file, len(frame))
    positions = [header.index(c) for c in columns]  # the field of each column in a line
    values = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        cells = frame[name].to_numpy(dtype=object)
        numbers = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = int(np.argmax(bad))
            raise _bad_cell(file, name, str(cells[row]), row, csv_field=positions[j], path=p)
        values[:, j] = numbers
    return values


def _read_parquet(p: Path, file: str, columns: list[str]) -> np.ndarray:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(p)
        header = list(meta.schema_arrow.names)
        for name in columns:
            if name not in header:
                raise _missing_column(file, name, header)
        _row_cap(file, meta.metadata.num_rows)
        unpacked = sum(group.column(j).total_uncompressed_size
                       for group in (meta.metadata.row_group(i) for i in range(meta.metadata.num_row_groups))
                       for j in range(group.num_columns) if group.column(j).path_in_schema in columns)
        if unpacked > MAX_TABLE_BYTES:
            raise _error(file, f"the columns read unpack to {unpacked / 2**20:,.0f} MiB, above the limit of "
                         f"{MAX_TABLE_BYTES // 2**20} MiB", "cut the table to the rows and columns you train on")
        table = meta.read(columns=columns)
    except SpecError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = _shown(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)
        raise _error(file, f"cannot read the table as Parquet ({reason})", "a Parquet file (pandas.to_parquet)") \
            from None
    values = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        column = table.column(name)
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            cells = column.to_pandas().to_numpy(dtype=object)
            numbers = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            cells = column.to_pandas().to_numpy(dtype=object)
            numbers = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64)
        else:
            raise _error(file, f"column `{_shown(name)}` is {_shown(kind, 40)}, not numbers", "--columns names "
                         "numeric columns (integers, floats, or text holding numbers)", path=f"column {_shown(name)}")
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = int(np.argmax(bad))
            raise _bad_cell(file, name, cells[row], row)
        values[:, j] = numbers
    return values


def _row_cap(file: str, rows: int) -> None:
    if rows > MAX_ROWS:
        raise _error(file, f"the table has more than {MAX_ROWS:,} rows", "cut it to the rows you train on")


def _bad_cell(file: str, name: str, cell: object, row: int, csv_field: int | None = None,
              path: Path | None = None) -> TableError:
    """One located error for the cell of column ``name`` at data row ``row`` (0-based): missing, not a number, or
    not finite."""
    text = "" if cell is None else str(cell)
    lowered = text.strip().lower()
    if cell is None or lowered in _MISSING or (isinstance(cell, float) and np.isnan(cell)):
        what, hint = "is missing (NaN or empty)", "fill or drop the rows without a value (e.g. pandas interpolate)"
    elif lowered.lstrip("+-") in ("inf", "infinity") or _is_number(text):
        what, hint = f"is {_shown(text, 30)}, not finite", "a value is a finite number"
    else:
        what, hint = f"holds {_shown(text, 30)!r}, not a number", "every value of the columns is a number"
    message = f"row {row + 1}, column `{_shown(name)}`: the value {what}"
    if csv_field is None or path is None:
        return _error(file, message, hint, path=f"row {row + 1}, column {_shown(name)}")
    line = row + 2  # after the header line
    raw = _line_of(path, line)
    col, length = _field_column(raw, csv_field) if raw is not None else (1, 1)
    return _error(file, message, hint, line=line, col=col, length=length,
                  excerpt=_shown(raw, 160) if raw is not None else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _line_of(path: Path, line: int) -> str | None:
    """Line ``line`` (1-based) of ``path``, or None where a quoted field spans lines (the count would be off)."""
    with path.open("r", encoding="utf-8", newline="") as f:
        for number, text in enumerate(f, 1):
            if number == line:
                return text.rstrip("\r\n")
    return None


def _field_column(line: str, field: int) -> tuple[int, int]:
    """The 1-based character column and length of CSV field ``field`` in ``line`` (1 and 1 where quoting makes
    the offset unclear)."""
    if '"' in line:
        return 1, 1
    fields = next(csv.reader(io.StringIO(line)), [])
    if field >= len(fields):
        return 1, 1
    return sum(len(f) + 1 for f in fields[:field]) + 1, max(1, len(fields[field]))


def windows(values: np.ndarray, file: str, columns: list[str], target: str, window: int, horizon: int,
            val_fraction: float = 0.2) -> Windows:
    """Cut ``values`` (rows, columns) into training and validation windows, normalised with the training part's
    statistics (module doc)."""
    if target not in columns:
        raise _error(file, f"--target `{_shown(target)}` is not one of --columns",
                     "the target is one of the columns read (--columns co2 --target co2)", path="--target")
    for option, value in (("--window", window), ("--horizon", horizon)):
        if not isinstance(value, int) or value < 1:
            raise _error(file, f"{option} must be a positive integer, got {value}", path=option)
    if not 0.0 < val_fraction < 1.0:
        raise _error(file, f"--val-fraction must lie strictly between 0 and 1, got {val_fraction}",
                     "for example --val-fraction 0.2: the last fifth of the rows", path="--val-fraction")
    rows = len(values)
    split = rows - int(round(rows * val_fraction))
    span = window + horizon
    need = f"{window} + {horizon} rows (--window + --horizon)"
    if split < span or rows - split < span:
        part, have = ("training", split) if split < span else ("validation", rows - split)
        raise _error(file, f"the table has {rows:,} rows: its {part} part ({have:,} rows) holds no window of {need}",
                     "give a longer table, a shorter --window or --horizon, or another --val-fraction",
                     found=f"{rows:,} rows, the last {rows - split:,} for validation")
    n_train, n_val = split - span + 1, rows - split - span + 1
    size = (n_train + n_val) * (window * len(columns) + horizon) * 4
    if size > MAX_WINDOW_BYTES:
        raise _error(file, f"the windows would take {size / 2**30:.1f} GiB, above the limit of "
                     f"{MAX_WINDOW_BYTES // 2**30} GiB", "use a shorter --window, or fewer rows or columns")
    train_part = values[:split]
    mean = train_part.mean(axis=0)
    std = train_part.std(axis=0)
    flat = np.flatnonzero(~(std > 1e-12 * np.maximum(1.0, np.abs(mean))))
    if flat.size:
        name = columns[int(flat[0])]
        raise _error(file, f"column `{_shown(name)}` is constant over the training part: it cannot be normalised",
                     "drop the column from --columns", path=f"column {_shown(name)}")
    t = columns.index(target)
    normal = (values - mean) / std

    def cut(start: int, stop: int) -> dict[str, np.ndarray]:
        starts = np.arange(start, stop - span + 1)
        x = normal[starts[:, None] + np.arange(window)[None, :]]
        y = normal[starts[:, None] + window + np.arange(horizon)[None, :], t]
        return {"x": x.astype(np.float32), "target": y.astype(np.float32),
                "x_mean": mean.astype(np.float32), "x_std": std.astype(np.float32),
                "target_mean": np.float32(mean[t]), "target_std": np.float32(std[t])}

    return Windows(cut(0, split), cut(split, rows), rows, split, list(columns), target)


def table_windows(path: str | Path, columns: list[str], target: str, window: int, horizon: int,
                  val_fraction: float = 0.2) -> Windows:
    """`read_table` then `windows`: what `seqdsl data csv` writes."""
    return windows(read_table(path, columns), str(path), columns, target, window, horizon, val_fraction)


__all__ = ["MAX_ROWS", "MAX_TABLE_BYTES", "MAX_WINDOW_BYTES", "TableError", "Windows", "read_table", "windows",
           "table_windows"]
