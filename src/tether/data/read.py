"""Reading data files into raw :class:`Row` records.

:func:`read_rows` reads one data source and rewrites rows in other public formats into tether's fields
(:mod:`tether.data.formats`):

* ``*.jsonl`` / ``*.ndjson``: one JSON object per line; blank lines are skipped. ``Row.line`` is the
  1-based line number in the file.
* ``*.json``: either a JSON array of objects (``Row.line`` is the 1-based index of the record in the
  array) or JSON-lines content (treated exactly like ``.jsonl``). One object spread over several lines
  (pretty-printed) is refused with one problem: it is a document, not rows.
* ``*.parquet``: ``Row.line`` is the 1-based record index.
* ``hf:<spec>``: loaded with the ``datasets`` library. ``<spec>`` may be a directory written by
  ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` (loaded with ``load_from_disk``), a local data
  file (``.json``/``.jsonl``/``.parquet``/``.csv``, loaded with the matching packaged builder), or
  anything ``datasets.load_dataset`` accepts (a local dataset directory or a hub name). ``split``
  picks the split. ``Row.line`` is the 1-based record index and ``Row.file`` is the spec as given.

JSON is read strictly: a key given twice, ``NaN``/``Infinity`` (or a number that overflows to it), a lone
surrogate, an integer of more than 4300 digits, or nesting deeper than 32 levels is a problem naming the
record and field, as is a line that is not UTF-8.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.data.formats import Origin, canonical
from tether.errors import DataError, Problem

__all__ = ["Row", "json_type", "read_rows"]

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_JSON_SUFFIXES = (".json",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_HF_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


@dataclass(frozen=True)
class Row:
    """One raw record: where it came from and its fields.

    ``line`` is the 1-based line number for JSON-lines content, or the 1-based record index for JSON
    arrays, Parquet files and ``hf:`` datasets.
    """

    file: str
    line: int
    data: dict[str, Any]
    #: the public format the row was read as (:mod:`tether.data.formats`)
    origin: Origin = field(default_factory=Origin)


def read_rows(spec: str, *, split: str = "train", problems: list[Problem] | None = None) -> list[Row]:
    """Every record of a data source, in tether's row fields (see :func:`_read_raw` and
    :mod:`tether.data.formats` for the public formats that are rewritten)."""
    return [Row(r.file, r.line, *canonical(r.data)) for r in _read_raw(spec, split=split, problems=problems)]


def _read_raw(spec: str, *, split: str = "train", problems: list[Problem] | None = None) -> list[Row]:
    """Read every record of a data source (see the module docstring for the accepted sources).

    Raises :class:`DataError` listing every problem found: missing file, unknown extension, each
    malformed JSON line, each record that is not a JSON object, or no rows at all. With a ``problems``
    list, the per-record problems (malformed lines, non-objects) are appended to it instead and the good
    records are returned, so a caller can check those too and report everything at once.
    """
    if spec.startswith("hf:"):
        return _read_hf(spec, split)
    path = Path(spec)
    if not path.exists():
        raise DataError([Problem(spec, None, None, "file not found")])
    if path.is_dir():
        raise DataError(
            [
                Problem(
                    spec, None, None, f"is a directory; to load it with the datasets library use 'hf:{spec}'"
                )
            ]
        )
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        rows = _read_parquet(spec, path)
    elif suffix in _JSONL_SUFFIXES or suffix in _JSON_SUFFIXES:
        text = _read_text(spec, path)
        found: list[Problem] = []
        if suffix in _JSON_SUFFIXES and text.lstrip().startswith("["):
            rows = _parse_json_array(spec, text, found)
        else:
            if suffix in _JSON_SUFFIXES and text.lstrip().startswith("{"):
                _refuse_one_document(spec, text)
            rows = _parse_jsonl(spec, text, found)
        if found and (problems is None or not rows):
            raise DataError(found)
        if problems is not None:
            problems.extend(found)
    else:
        raise DataError(
            [
                Problem(
                    spec,
                    None,
                    None,
                    f"unknown data file extension '{path.suffix or '(none)'}' "
                    "(expected .jsonl, .json or .parquet, or 'hf:<dataset>')",
                )
            ]
        )
    if not rows:
        raise DataError([Problem(spec, None, None, "no rows")])
    return rows


def _read_text(spec: str, path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError([Problem(spec, None, None, f"cannot read file ({err.strerror or err})")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    problems = []  # every line that is not UTF-8, by line number
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            what = f"{err.reason} at column {err.start + 1}: byte 0x{line[err.start]:02x}"
            problems.append(Problem(spec, lineno, None, f"not UTF-8 text ({what})"))
    raise DataError(problems)


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Duplicated(dict):
    """A JSON object in which ``duplicate`` was given twice (plain JSON would keep the last silently)."""

    duplicate: str


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        obj = _Duplicated(obj)
        obj.duplicate = dup
    return obj


_MAX_DEPTH = 32  # a row is at most 4 deep (row, message list, message, content)


def _loads(text: str, spec: str, line: int | None) -> Any:
    """``json.loads`` with duplicate keys marked; what Python cannot read becomes one :class:`Problem`."""
    try:
        return json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as err:
        where = line if line is not None else err.lineno
        return Problem(spec, where, None, f"malformed JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return Problem(spec, line, None, "JSON nested too deeply to read")
    except ValueError as err:  # an integer with more digits than Python converts (4300)
        return Problem(spec, line, None, f"cannot read a number ({str(err).split(':')[0].lower()})")


def _unusable(spec: str, line: int, value: Any) -> Problem | None:
    """The first value of a parsed JSON record that Python or a tokenizer cannot take, as a Problem naming
    its field: a duplicated key, a non-finite number (``NaN``, ``Infinity``, ``1e999``), a lone surrogate
    (``"\\ud800"``), or nesting deeper than any row format needs."""
    stack: list[tuple[Any, str | None, int]] = [(value, None, 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > _MAX_DEPTH:
            top = (where or "").split("[")[0].split(".")[0] or None
            return Problem(spec, line, top, f"nested more than {_MAX_DEPTH} levels deep")
        if isinstance(v, _Duplicated):
            return Problem(spec, line, _join(where, v.duplicate), "given twice in one object")
        if isinstance(v, dict):
            for k in v:
                if _has_surrogate(k):
                    return Problem(spec, line, where, f"a key contains {_has_surrogate(k)}")
            stack.extend((x, _join(where, k), depth + 1) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in reversed(list(enumerate(v))))
        elif isinstance(v, float) and not math.isfinite(v):
            what = "NaN" if math.isnan(v) else f"{'-' * (v < 0)}Infinity (or beyond ±1.8e308)"
            return Problem(spec, line, where, f"is {what}, not a finite number")
        elif isinstance(v, str) and _has_surrogate(v):
            return Problem(spec, line, where, f"contains {_has_surrogate(v)}")
    return None


def _join(where: str | None, key: str) -> str:
    return key if where is None else f"{where}.{key}"


def _has_surrogate(text: str) -> str:
    """'a lone surrogate (\\udXXX), which is not Unicode' if ``text`` has one (no tokenizer takes it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"a lone surrogate (\\u{ord(text[err.start]):04x}), which is not valid Unicode"
    return ""


def _parse_jsonl(spec: str, text: str, problems: list[Problem]) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 is no line break
        if not line.strip():
            continue
        value = _loads(line, spec, lineno)
        if isinstance(value, Problem):
            problems.append(value)
            continue
        if not isinstance(value, dict):
            problems.append(Problem(spec, lineno, None, f"not a JSON object (got {json_type(value)})"))
            continue
        bad = _unusable(spec, lineno, value)
        if bad is not None:
            problems.append(bad)
            continue
        rows.append(Row(spec, lineno, value))
    return rows


def _parse_json_array(spec: str, text: str, problems: list[Problem]) -> list[Row]:
    value = _loads(text, spec, None)
    if isinstance(value, Problem):
        raise DataError([value])
    rows: list[Row] = []
    for index, record in enumerate(value, start=1):
        if not isinstance(record, dict):
            problems.append(
                Problem(spec, index, None, f"record is not a JSON object (got {json_type(record)})")
            )
            continue
        bad = _unusable(spec, index, record)
        if bad is not None:
            problems.append(bad)
            continue
        rows.append(Row(spec, index, record))
    return rows


def _refuse_one_document(spec: str, text: str) -> None:
    """A ``.json`` file that starts with ``{`` and is one object spread over several lines (pretty-printed)
    is not data rows: raise one clear :class:`DataError`. JSON-lines content passes."""
    first = text.lstrip().split("\n", 1)[0].strip()
    value = _loads(text, spec, None)
    if isinstance(value, Problem):
        if first != "{":
            return  # JSON lines (the first line holds a whole object), read line by line
        raise DataError([value])  # a pretty-printed object that does not parse: where it breaks
    if not isinstance(value, dict) or "\n" not in text.strip():
        return  # one object on one line: one JSON-lines row
    lists = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    hint = (
        f"; its '{lists[0]}' key holds a list of {len(value[lists[0]])} objects: put that list at the top level"
        if lists
        else ""
    )
    raise DataError(
        [
            Problem(
                spec,
                None,
                None,
                "holds one JSON object, not rows: a .json data file is a JSON array of row objects "
                f"([{{...}}, {{...}}]) or one object per line{hint}",
            )
        ]
    )


def _read_parquet(spec: str, path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for unreadable files
        raise DataError([Problem(spec, None, None, f"cannot read Parquet file ({err})")]) from None
    return [Row(spec, index, record) for index, record in enumerate(records, start=1)]


def _read_hf(spec: str, split: str) -> list[Row]:
    name = spec[len("hf:") :]
    if not name:
        raise DataError([Problem(spec, None, None, "'hf:' needs a dataset name or a local path after it")])
    try:
        import datasets
    except ImportError:
        raise DataError(
            [
                Problem(
                    spec,
                    None,
                    None,
                    "'hf:' data needs the 'datasets' package (pip install 'tether[datasets]')",
                )
            ]
        ) from None
    path = Path(name)
    try:
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    available = ", ".join(sorted(loaded)) or "none"
                    raise DataError(
                        [Problem(spec, None, None, f"split '{split}' not found (available: {available})")]
                    )
                loaded = loaded[split]
        elif path.is_file():
            builder = _HF_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    [
                        Problem(
                            spec,
                            None,
                            None,
                            f"unknown data file extension '{path.suffix or '(none)'}' for the datasets library "
                            f"(expected one of {', '.join(sorted(_HF_FILE_BUILDERS))})",
                        )
                    ]
                )
            loaded = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        else:
            loaded = datasets.load_dataset(name, split=split)
        records = loaded.to_list()
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFoundError, ValueError, hub errors)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError([Problem(spec, None, None, f"could not load dataset ({first_line})")]) from None
    rows = [Row(spec, index, dict(record)) for index, record in enumerate(records, start=1)]
    if not rows:
        raise DataError([Problem(spec, None, None, f"no rows (split '{split}')")])
    return rows
