"""Reading, validating and tokenizing training data.

Data files
----------
:func:`read_rows` reads one data source into raw :class:`Row` records:

* ``*.jsonl`` / ``*.ndjson``: one JSON object per line; blank lines are skipped. ``Row.line`` is the
  1-based line number in the file.
* ``*.json``: either a JSON array of objects (``Row.line`` is the 1-based index of the record in the
  array) or JSON-lines content (treated exactly like ``.jsonl``). One object spread over several lines
  (pretty-printed) is refused with one problem: it is a document, not rows.

JSON is read strictly: a key given twice, ``NaN``/``Infinity`` (or a number that overflows to it), a lone
surrogate, an integer of more than 4300 digits, or nesting deeper than 32 levels is a problem naming the
record and field, as is a line that is not UTF-8.
* ``*.parquet``: ``Row.line`` is the 1-based record index.
* ``hf:<spec>``: loaded with the ``datasets`` library. ``<spec>`` may be a directory written by
  ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` (loaded with ``load_from_disk``), a local data
  file (``.json``/``.jsonl``/``.parquet``/``.csv``, loaded with the matching packaged builder), or
  anything ``datasets.load_dataset`` accepts (a local dataset directory or a hub name). ``split``
  picks the split. ``Row.line`` is the 1-based record index and ``Row.file`` is the spec as given.

Row formats
-----------
Every text field is either a string that is non-empty after stripping, or a non-empty list of
messages ``{"role": ..., "content": ...}`` with ``role`` one of system/user/assistant/tool and a string
``content``. Within one row the prompt and the response(s) must be all strings or all message lists.

Rows in other public formats (HH-RLHF, UltraFeedback, Alpaca, ShareGPT, OpenAI content parts) are
rewritten into these fields by :mod:`tether.data.formats` as they are read; problems name the file's own
fields.

* SFT (``kind="sft"``): ``{"prompt", "completion"}``, or ``{"messages": [...]}``, a conversation ending
  with an assistant message. With ``assistant_turns="all"`` (the default) every assistant message without
  ``"weight": 0`` is trained: the prompt is everything before the first of them and the user/tool turns
  after it are scored as context only (``Example.chosen_mask``). With ``"last"`` the prompt is every message
  before the final one.
* Preference pairs (``kind="pairs"``): ``{"prompt", "chosen", "rejected"}``. TRL's "implicit prompt"
  style is accepted too: without a ``prompt`` key, ``chosen`` and ``rejected`` are full conversations and
  the prompt is their longest shared leading run of messages. ``chosen`` must differ from ``rejected``.
* Response message lists must end with an assistant message whose content is non-empty.
* Every other scalar column (str/int/float/bool/null) is kept verbatim in ``Example.meta``.

Rendering
---------
* Message-list rows always go through ``tokenizer.apply_chat_template``::

      prompt_text   = render(prompt_msgs, add_generation_prompt=True)
      full_text     = render(prompt_msgs + response_msgs)
      response_text = full_text[len(prompt_text):]   # full_text must start with prompt_text

* String rows: with ``chat_template="always"`` the prompt becomes one user message and the response one
  assistant message, rendered as above. With ``"never"`` the raw text is used verbatim:
  ``prompt_text = prompt`` and ``response_text = response + tokenizer.eos_token`` (nothing is inserted
  between them, so put any separating space/newline in the data). ``"auto"`` means ``"always"`` when the
  tokenizer has a chat template, else ``"never"``.

Tokenization
------------
``prompt_text`` and each ``response_text`` are tokenized separately with ``add_special_tokens=False``
and the ids concatenated (so a token never straddles the prompt/response boundary). If the tokenizer
adds a BOS token by default (``encode(..., add_special_tokens=True)`` starts with ``bos_token_id``),
``bos_token_id`` is prepended to the prompt ids unless they already start with it (e.g. because the chat
template wrote the BOS text). Nothing else is added: EOS comes from the chat template or from the
``eos_token`` appended to raw responses. A response that tokenizes to no ids is a problem.

Truncation policy
-----------------
Applied per row, in this order (lengths in tokens, BOS included in the prompt):

1. If ``max_prompt_length`` is set and the prompt is longer, keep its **last** ``max_prompt_length``
   tokens (the start is cut, BOS included; the end, next to the response, is kept). Counted in
   ``n_prompt_truncated``.
2. If ``len(prompt) + 1 > max_length`` there is no room for even one response token: the row is a problem
   ("prompt is N tokens, longer than max_length=M allows ..."), or, with ``drop_long_prompts=True``, it is
   dropped and counted in ``n_dropped``.
3. Otherwise each response is cut **at its end** to ``max_length - len(prompt)`` tokens (so a cut
   response loses its EOS). For pairs, chosen and rejected are cut independently (they may become equal;
   that is not reported). A row with at least one cut response is counted once in ``n_truncated``.

Bounded work
------------
A row's work is bounded by ``max_length``, not by its size: before tokenizing, each response text is cut
to its first ``2 × max_length × C`` characters and each prompt text to its last, where ``C`` is the length
of the longest string in the tokenizer's vocabulary (no token covers more characters). The cut text
therefore still holds at least ``2 × max_length`` tokens: a response keeps the same first tokens and a
prompt the same last tokens as its full text would, and a prompt that was cut is reported (or dropped) as
too long, "at least N tokens". Should a cut text give fewer than ``max_length`` tokens after all (a
normalizer that deletes characters), the full text is tokenized.

Problems
--------
Nothing stops at the first problem: every row is checked and all problems are raised together as one
:class:`~tether.errors.DataError`, each naming file, line and field. Everything here is deterministic.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tether.data.formats import HH, Origin, canonical, describe_format, original_name, render_hh
from tether.errors import ConfigError, DataError, Problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "Example",
    "Kind",
    "Row",
    "TokenizedData",
    "check_rows",
    "detect_kind",
    "read_rows",
    "shuffled",
    "split_pairs",
    "split_train_eval",
    "tokenize_rows",
    "with_mismatched_completions",
]

Kind = Literal["sft", "pairs", "unpaired"]
ChatTemplateMode = Literal["auto", "always", "never"]
AssistantTurns = Literal["all", "last"]

ROLES = ("system", "user", "assistant", "tool")
TEXT_FIELDS = frozenset({"prompt", "completion", "messages", "chosen", "rejected"})
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


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


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


def _json_type(value: object) -> str:
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
            problems.append(Problem(spec, lineno, None, f"not a JSON object (got {_json_type(value)})"))
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
                Problem(spec, index, None, f"record is not a JSON object (got {_json_type(record)})")
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


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------


def _looks_pairs(data: dict[str, Any]) -> bool:
    return "chosen" in data or "rejected" in data


def _looks_sft(data: dict[str, Any]) -> bool:
    return "completion" in data or "messages" in data


def _looks_unpaired(data: dict[str, Any]) -> bool:
    return "label" in data and "completion" in data and not _looks_pairs(data)


def _describe(data: dict[str, Any]) -> str:
    """A short name for a row's format, for wrong-kind messages."""
    if _looks_pairs(data):
        return "/".join(k for k in ("prompt", "chosen", "rejected") if k in data)
    if "messages" in data:
        return "messages"
    if "completion" in data:
        return "/".join(k for k in ("prompt", "completion") if k in data)
    keys = ", ".join(sorted(map(str, data)))
    return f"only {keys}" if keys else "no fields"


def detect_kind(rows: Sequence[Row]) -> Kind:
    """``'pairs'`` if the rows have chosen/rejected, ``'sft'`` if they have prompt/completion or messages.

    A mixed file goes with the majority (ties go to the format of the first recognisable row); the rows
    of the other format are then reported by :func:`tokenize_rows`. Raises :class:`DataError` when no
    row has a recognisable format.
    """
    n_pairs = n_sft = n_unpaired = 0
    first: Kind | None = None
    for row in rows:
        if _looks_unpaired(row.data):
            n_unpaired += 1
            first = first or "unpaired"
        elif _looks_pairs(row.data):
            n_pairs += 1
            first = first or "pairs"
        elif _looks_sft(row.data):
            n_sft += 1
            first = first or "sft"
    if first is None:
        file = rows[0].file if rows else "<data>"
        keys = sorted({str(k) for row in rows for k in row.data})
        found = f"found fields: {', '.join(keys)}" if keys else "no rows"
        raise DataError(
            [
                Problem(
                    file,
                    None,
                    None,
                    "cannot tell the data format: rows need prompt/completion, messages, or "
                    f"prompt/chosen/rejected ({found})",
                )
            ]
        )
    counts: dict[Kind, int] = {"pairs": n_pairs, "sft": n_sft, "unpaired": n_unpaired}
    top = max(counts.values())
    leaders = [k for k, n in counts.items() if n == top]
    return first if first in leaders else leaders[0]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

Messages = list[dict[str, Any]]
Text = str | Messages


@dataclass
class _Parsed:
    """A validated row: the prompt, its response(s) and whether they are message lists."""

    prompt: Text
    responses: list[Text]
    response_fields: list[str]
    prompt_field: str
    conversational: bool
    #: SFT conversations trained on every assistant turn: per message of the one response, whether it is
    #: trained (an assistant message without ``weight: 0``); None: the whole response is trained
    trained: list[bool] | None = None


@dataclass
class _RowChecker:
    """Collects the problems of one row."""

    row: Row
    problems: list[Problem] = field(default_factory=list)
    all_turns: bool = True  # SFT conversations: train every assistant turn (False: only the last)

    def add(self, field_name: str | None, message: str) -> None:
        name = original_name(field_name, self.row.origin)
        self.problems.append(Problem(self.row.file, self.row.line, name, message))

    def text(self, name: str, *, response: bool) -> Text | None:
        """Validate field ``name`` (which must be present) as a string or a message list."""
        value = self.row.data[name]
        if isinstance(value, str):
            if not value.strip():
                self.add(name, "is empty")
                return None
            return value
        if isinstance(value, list):
            return self.messages(name, value, response=response)
        self.add(
            name,
            f"must be a non-empty string or a list of {{role, content}} messages, got {_json_type(value)}",
        )
        return None

    def messages(self, name: str, value: list[Any], *, response: bool) -> Messages | None:
        if not value:
            self.add(name, "is an empty list")
            return None
        if not any(isinstance(msg, dict) for msg in value):  # e.g. token ids: one problem, not one per item
            kinds = sorted({_json_type(msg) for msg in value})
            self.add(
                name,
                f"must be a non-empty string or a list of {{role, content}} messages, got a list of {'/'.join(kinds)}",
            )
            return None
        before = len(self.problems)
        for i, msg in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(msg, dict):
                self.add(where, f"must be a {{role, content}} message, got {_json_type(msg)}")
                continue
            role = msg.get("role")
            if "role" not in msg:
                self.add(f"{where}.role", "missing")
            elif not isinstance(role, str):
                self.add(f"{where}.role", f"must be a string, got {_json_type(role)}")
            elif role not in ROLES:
                self.add(f"{where}.role", f"'{role}' is not one of {', '.join(ROLES)}")
            content = msg.get("content")
            if "content" not in msg:
                self.add(f"{where}.content", "missing")
            elif content is None and role == "assistant" and msg.get("tool_calls"):
                if not isinstance(msg["tool_calls"], list):
                    self.add(f"{where}.tool_calls", f"must be a list, got {_json_type(msg['tool_calls'])}")
            elif isinstance(content, list):
                kinds = sorted(
                    {str(p.get("type")) if isinstance(p, dict) else _json_type(p) for p in content}
                )
                self.add(
                    f"{where}.content",
                    f"content parts other than text ({', '.join(kinds)}) are not supported; give text parts "
                    '[{"type": "text", "text": ...}] or a string',
                )
            elif not isinstance(content, str):
                self.add(f"{where}.content", f"must be a string, got {_json_type(content)}")
            if "weight" in msg and (msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool)):
                self.add(f"{where}.weight", f"must be 0 or 1, got {msg['weight']!r}")
            elif "weight" in msg and role != "assistant":
                self.add(f"{where}.weight", "only assistant messages have a weight")
        if len(self.problems) > before:
            return None
        if response:
            self.check_ends_with_assistant(name, value)
            if len(self.problems) > before:
                return None
        return value

    def check_ends_with_assistant(self, name: str, msgs: Messages) -> None:
        last = len(msgs) - 1
        if msgs[last]["role"] != "assistant":
            self.add(
                f"{name}[{last}].role",
                f"the last message must be from the assistant (got '{msgs[last]['role']}')",
            )
        elif not (msgs[last]["content"] or "").strip() and not msgs[last].get("tool_calls"):
            self.add(f"{name}[{last}].content", "the final assistant message is empty")

    def same_type(self, prompt: tuple[str, Text], responses: list[tuple[str, Text]]) -> bool:
        """All string or all message lists; a problem otherwise."""
        p_name, p_value = prompt
        p_conv = isinstance(p_value, list)
        ok = True
        for r_name, r_value in responses:
            if isinstance(r_value, list) != p_conv:
                got = "a message list" if isinstance(r_value, list) else "a string"
                want = "a message list" if p_conv else "a string"
                self.add(r_name, f"is {got} but '{p_name}' is {want}; use strings or message lists for both")
                ok = False
        return ok


def _parse_sft(checker: _RowChecker) -> _Parsed | None:
    data = checker.row.data
    if _looks_pairs(data) and not _looks_sft(data):
        checker.add(
            "completion",
            f"method needs prompt/completion (or messages) rows but this row has {_describe(data)}",
        )
        return None
    if "messages" in data:
        if "prompt" in data or "completion" in data:
            checker.add("messages", "row has both 'messages' and prompt/completion; use one format")
            return None
        value = data["messages"]
        if not isinstance(value, list):
            checker.add("messages", f"must be a list of {{role, content}} messages, got {_json_type(value)}")
            return None
        msgs = checker.messages("messages", value, response=True)
        if msgs is None:
            return None
        if len(msgs) < 2:
            checker.add("messages", "needs at least one message before the final assistant message")
            return None
        return _conversation(checker, msgs)
    missing = [k for k in ("prompt", "completion") if k not in data]
    for name in missing:
        checker.add(
            name, f"missing (SFT rows need prompt/completion or messages; this row has {_describe(data)})"
        )
    if missing:
        return None
    prompt = checker.text("prompt", response=False)
    completion = checker.text("completion", response=True)
    if prompt is None or completion is None:
        return None
    if not checker.same_type(("prompt", prompt), [("completion", completion)]):
        return None
    return _Parsed(prompt, [completion], ["completion"], "prompt", isinstance(prompt, list))


def _conversation(checker: _RowChecker, msgs: Messages) -> _Parsed | None:
    """An SFT conversation: trained on every assistant message without ``weight: 0`` (the prompt is what
    comes before the first one), or with ``all_turns=False`` on the final assistant message only."""
    trained = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in msgs]
    if not checker.all_turns or (sum(trained) == 1 and trained[-1]):
        if not trained[-1]:
            checker.add(
                f"messages[{len(msgs) - 1}].weight",
                "the final assistant message has weight 0: nothing to train on",
            )
            return None
        return _Parsed(msgs[:-1], [msgs[-1:]], ["messages"], "messages", conversational=True)
    if not any(trained):
        checker.add("messages", "every assistant message has weight 0: nothing to train on")
        return None
    first = trained.index(True)
    if first == 0:
        checker.add("messages", "needs at least one message before the first trained assistant message")
        return None
    return _Parsed(msgs[:first], [msgs[first:]], ["messages"], "messages", True, trained[first:])


def _parse_unpaired(checker: _RowChecker) -> _Parsed | None:
    """TRL's unpaired preference rows: an SFT row (prompt/completion or messages) plus a boolean
    ``label`` (True: a desirable completion, False: an undesirable one)."""
    data = checker.row.data
    if "label" not in data:
        checker.add("label", "missing (unpaired rows need prompt, completion and a true/false label)")
        return None
    if not isinstance(data["label"], bool):
        checker.add("label", f"must be true or false, got {_json_type(data['label'])}")
        return None
    return _parse_sft(checker)


def _parse_pairs(checker: _RowChecker) -> _Parsed | None:
    data = checker.row.data
    if _looks_sft(data) and not _looks_pairs(data):
        checker.add(
            "chosen",
            f"method needs preference pairs (prompt/chosen/rejected) but this row has {_describe(data)}",
        )
        return None
    missing = [k for k in ("chosen", "rejected") if k not in data]
    for name in missing:
        checker.add(name, "missing (preference rows need prompt/chosen/rejected)")
    if missing:
        return None
    if "prompt" not in data:
        return _parse_implicit_prompt(checker)
    prompt = checker.text("prompt", response=False)
    chosen = checker.text("chosen", response=True)
    rejected = checker.text("rejected", response=True)
    if prompt is None or chosen is None or rejected is None:
        return None
    if not checker.same_type(("prompt", prompt), [("chosen", chosen), ("rejected", rejected)]):
        return None
    if chosen == rejected:
        checker.add("rejected", "chosen and rejected are identical")
        return None
    return _Parsed(prompt, [chosen, rejected], ["chosen", "rejected"], "prompt", isinstance(prompt, list))


def _parse_implicit_prompt(checker: _RowChecker) -> _Parsed | None:
    """chosen/rejected as full conversations sharing a leading prompt (TRL's implicit prompt)."""
    data = checker.row.data
    if not (isinstance(data["chosen"], list) and isinstance(data["rejected"], list)):
        checker.add(
            "prompt",
            "missing (a row without 'prompt' must give chosen and rejected as full conversations, "
            "i.e. message lists that start with the same prompt messages)",
        )
        return None
    chosen = checker.text("chosen", response=True)
    rejected = checker.text("rejected", response=True)
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        return None
    if chosen == rejected:
        checker.add("rejected", "chosen and rejected are identical")
        return None
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        checker.add(
            "prompt",
            "missing, and chosen and rejected share no leading messages to use as the prompt",
        )
        return None
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(msgs):
            checker.add(name, "has no messages after the prompt it shares with the other response")
            return None
    return _Parsed(
        chosen[:shared], [chosen[shared:], rejected[shared:]], ["chosen", "rejected"], "chosen", True
    )


# --------------------------------------------------------------------------------------------------
# Tokenizing
# --------------------------------------------------------------------------------------------------


_PARSERS = {"sft": _parse_sft, "pairs": _parse_pairs, "unpaired": _parse_unpaired}


def check_rows(rows: Sequence[Row], kind: Kind, *, assistant_turns: AssistantTurns = "all") -> list[Problem]:
    """The field problems of ``rows`` read as ``kind`` (missing/empty/mistyped fields, identical chosen and
    rejected), without a tokenizer: the checks :func:`tokenize_rows` makes before it renders a row."""
    problems: list[Problem] = []
    for row in rows:
        checker = _RowChecker(row, all_turns=assistant_turns == "all")
        _PARSERS[kind](checker)
        problems.extend(checker.problems)
    return problems


@dataclass(frozen=True)
class Example:
    """One tokenized training example.

    For SFT and unpaired rows ``chosen_ids`` holds the completion and ``rejected_ids`` is ``None``;
    ``label`` is an unpaired row's label (True: desirable), else ``None``. An unpaired row of a method
    that declares ``mismatched_completion`` (KTO) carries in ``rejected_ids`` another row's completion, to
    be scored after this row's prompt (:func:`with_mismatched_completions`): the engine lays it out and
    the reference scores it exactly as a pair's second answer. ``meta`` holds the row's other scalar
    columns verbatim (e.g. ``source``, used to split sDPO stages).
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None
    file: str
    line: int
    meta: dict[str, Any]
    label: bool | None = None
    #: per token of ``chosen_ids``, whether it is scored (a conversation trained on several assistant turns:
    #: the user turns between them are not); None: every token is
    chosen_mask: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class TokenizedData:
    """The examples of :func:`tokenize_rows` and what happened to the rows on the way."""

    examples: list[Example]
    n_rows: int
    n_truncated: int
    """Rows whose response(s) were cut to fit ``max_length``."""
    n_prompt_truncated: int
    """Rows whose prompt was cut to ``max_prompt_length``."""
    n_dropped: int
    """Rows dropped because the prompt alone does not fit (only with ``drop_long_prompts=True``)."""
    notes: list[str] = field(default_factory=list)
    """How rows were read, for the user: public formats rewritten, prompts already chat-formatted, ..."""


@dataclass
class _Rendered:
    row: Row
    prompt_text: str
    response_texts: list[str]
    prompt_field: str
    response_fields: list[str]
    #: a conversation trained on several assistant turns: its one response as (text, trained) pieces,
    #: tokenized separately so that no token straddles a boundary
    pieces: list[tuple[str, bool]] | None = None


def _has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS first when asked for its default special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    return bool(with_special) and with_special[0] == bos and (not without or without[0] != bos)


def _render_chat(tokenizer: PreTrainedTokenizerBase, msgs: Messages, *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=False)
    if not isinstance(text, str):  # pragma: no cover - defensive: some processors return lists
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, not str")
    return text


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def tokenize_rows(
    rows: list[Row],
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: Kind,
    max_length: int,
    max_prompt_length: int | None = None,
    chat_template: ChatTemplateMode = "auto",
    drop_long_prompts: bool = False,
    assistant_turns: AssistantTurns = "all",
) -> TokenizedData:
    """Validate, render and tokenize ``rows`` as ``kind`` examples, truncating to fit ``max_length``.

    See the module docstring for the formats, rendering, BOS handling and the exact truncation policy.
    Every row is checked; if any has a problem, a :class:`DataError` listing all of them is raised.
    """
    if kind not in _PARSERS:
        raise ConfigError(f"kind must be one of {', '.join(_PARSERS)}, got {kind!r}")
    if chat_template not in ("auto", "always", "never"):
        raise ConfigError(f"chat_template must be 'auto', 'always' or 'never', got {chat_template!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")
    if max_prompt_length is not None and (not isinstance(max_prompt_length, int) or max_prompt_length < 1):
        raise ConfigError(f"max_prompt_length must be a positive integer, got {max_prompt_length!r}")

    has_template = _has_chat_template(tokenizer)
    wrap_strings = chat_template == "always" or (chat_template == "auto" and has_template)
    problems: list[Problem] = []
    file_problems: dict[tuple[str, str], Problem] = {}  # one per (file, reason), not one per row

    def file_problem(row: Row, reason: str, message: str) -> None:
        if (row.file, reason) not in file_problems:
            file_problems[(row.file, reason)] = Problem(
                row.file, None, None, f"{message} (first at line {row.line})"
            )

    # 1. validate and render every row to text
    markers = _template_markers(tokenizer) if wrap_strings and has_template else []
    renders_tools = has_template and "tool_calls" in str(tokenizer.chat_template)
    notes = _Notes()
    rendered: list[_Rendered] = []
    for row in rows:
        checker = _RowChecker(row, all_turns=assistant_turns == "all")
        parsed = _PARSERS[kind](checker)
        if parsed is not None:
            how = None
            notes.read(row)
            if parsed.conversational:
                if row.origin.format == HH and (not has_template or chat_template == "never"):
                    how = "hh"
                    notes.add(row, "HH-RLHF rows rendered in their own Human:/Assistant: dialogue text")
                elif not has_template:
                    file_problem(
                        row, "template", "tokenizer has no chat template; conversational rows need one"
                    )
                elif not renders_tools and _has_tool_calls(parsed):
                    file_problem(
                        row,
                        "tools",
                        "assistant tool-call turns (content null with tool_calls) need a chat template that "
                        "renders tool_calls and this tokenizer's does not; drop those turns, write the call as "
                        "the assistant's text, or use a model whose template supports tools",
                    )
                else:
                    how = "template"
            elif wrap_strings and not has_template:
                file_problem(row, "always", "chat_template='always' but the tokenizer has no chat template")
            elif wrap_strings:
                found = [m for m in markers if m in parsed.prompt]
                how = "verbatim" if found else "template"
                if found:
                    notes.add(
                        row,
                        f"string prompts already hold the chat template's markers ({', '.join(found)}): "
                        "used as written, not templated again",
                    )
            elif not tokenizer.eos_token:
                file_problem(
                    row, "eos", "tokenizer has no eos_token; raw-text (chat_template='never') rows need one"
                )
            else:
                how = "raw"
            item = _render_row(checker, parsed, tokenizer, how) if how else None
            if item is not None:
                rendered.append(item)
        problems.extend(checker.problems)

    # 2. tokenize in batches, no more of each text than max_length tokens can cover (see "Bounded work")
    cap = 2 * max_length * _max_token_chars(tokenizer)
    prompt_texts = [r.prompt_text for r in rendered]
    prompt_ids_all = _encode_bounded(tokenizer, prompt_texts, cap, max_length + 1, keep_end=True)
    flat_responses = [t for r in rendered for t in _texts(r)]
    response_ids_flat = _encode_bounded(tokenizer, flat_responses, cap, max_length + 1, keep_end=False)
    bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None

    # 3. truncate and build examples
    examples: list[Example] = []
    n_truncated = n_prompt_truncated = n_dropped = 0
    pos = 0
    for item, prompt_ids in zip(rendered, prompt_ids_all, strict=True):
        row = item.row
        n_texts = len(_texts(item))
        responses = response_ids_flat[pos : pos + n_texts]
        pos += n_texts
        mask = None
        if item.pieces is not None:  # one response of several pieces: the trained tokens as a mask
            mask = [
                t
                for (_, trained), ids in zip(item.pieces, responses, strict=True)
                for t in [trained] * len(ids)
            ]
            responses = [[t for ids in responses for t in ids]]
        row_problems = [
            Problem(row.file, row.line, name, "response is empty after tokenization")
            for name, ids in zip(item.response_fields, responses, strict=True)
            if not ids
        ]
        if row_problems:
            problems.extend(row_problems)
            continue
        if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
            prompt_ids = [bos, *prompt_ids]
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            n_prompt_truncated += 1
        if len(prompt_ids) + 1 > max_length:
            if drop_long_prompts:
                n_dropped += 1
            else:
                problems.append(
                    Problem(
                        row.file,
                        row.line,
                        item.prompt_field,
                        f"prompt is {'at least ' * (len(item.prompt_text) > cap)}{len(prompt_ids)} tokens, "
                        f"longer than max_length={max_length} allows "
                        "(at least one response token must fit); raise max_length, set max_prompt_length, "
                        "or set drop_long_prompts",
                    )
                )
            continue
        budget = max_length - len(prompt_ids)
        if any(len(ids) > budget for ids in responses):
            n_truncated += 1
            responses = [ids[:budget] for ids in responses]
            mask = None if mask is None else mask[:budget]
        meta = {
            k: v
            for k, v in row.data.items()
            if k not in TEXT_FIELDS and (v is None or isinstance(v, (str, int, float, bool)))
        }
        examples.append(
            Example(
                prompt_ids=list(prompt_ids),
                chosen_ids=list(responses[0]),
                rejected_ids=list(responses[1]) if kind == "pairs" else None,
                file=row.file,
                line=row.line,
                meta=meta,
                label=row.data["label"] if kind == "unpaired" else None,
                chosen_mask=None if mask is None or all(mask) else tuple(mask),
            )
        )

    if file_problems or problems:
        # file-wide problems first, then row problems in file order (stable: a row's fields keep their order)
        file_order = {row.file: i for i, row in reversed(list(enumerate(rows)))}
        problems.sort(key=lambda p: (file_order.get(p.file, len(file_order)), p.line or 0))
        raise DataError(list(file_problems.values()) + problems)
    return TokenizedData(
        examples=examples,
        n_rows=len(rows),
        n_truncated=n_truncated,
        n_prompt_truncated=n_prompt_truncated,
        n_dropped=n_dropped,
        notes=notes.lines(),
    )


def _render_row(
    checker: _RowChecker, parsed: _Parsed, tokenizer: PreTrainedTokenizerBase, how: str
) -> _Rendered | None:
    """Render a validated row to prompt text and response texts (problems go to ``checker``): through the
    chat template (``template``), as raw text + EOS (``raw``), as written + EOS unless it ends with one
    (``verbatim``: already chat-formatted), or in HH-RLHF's dialogue text + EOS (``hh``)."""
    eos = tokenizer.eos_token or ""
    if how in ("raw", "verbatim", "hh"):
        if how == "hh":
            texts = [render_hh(parsed.prompt, r) for r in parsed.responses]  # type: ignore[arg-type]
            prompt_text, responses = texts[0][0], [t[1] for t in texts]
        else:
            prompt_text, responses = str(parsed.prompt), [str(r) for r in parsed.responses]
        keep = how == "verbatim"
        return _Rendered(
            checker.row,
            prompt_text,
            [r if keep and eos and r.endswith(eos) else r + eos for r in responses],
            parsed.prompt_field,
            parsed.response_fields,
        )
    if parsed.conversational:
        prompt_msgs: Messages = parsed.prompt  # type: ignore[assignment]
        response_msgs: list[Messages] = parsed.responses  # type: ignore[assignment]
    else:
        prompt_msgs = [{"role": "user", "content": parsed.prompt}]
        response_msgs = [[{"role": "assistant", "content": r}] for r in parsed.responses]
    try:
        prompt_text = _render_chat(tokenizer, prompt_msgs, generation_prompt=True)
    except Exception as err:  # jinja raises arbitrary exceptions (e.g. raise_exception())
        checker.add(parsed.prompt_field, f"chat template failed: {_first_line(err)}")
        return None
    response_texts: list[str] = []
    for name, msgs in zip(parsed.response_fields, response_msgs, strict=True):
        try:
            full = _render_chat(tokenizer, prompt_msgs + msgs, generation_prompt=False)
        except Exception as err:
            checker.add(name, f"chat template failed: {_first_line(err)}")
            continue
        if not full.startswith(prompt_text):
            checker.add(
                name,
                "chat template does not extend the prompt: rendering prompt + response does not "
                "start with the prompt rendered with add_generation_prompt=True",
            )
            continue
        response_texts.append(full[len(prompt_text) :])
    if len(response_texts) < len(parsed.responses):
        return None
    out = _Rendered(checker.row, prompt_text, response_texts, parsed.prompt_field, parsed.response_fields)
    if parsed.trained is not None and not all(parsed.trained):
        out.pieces = _pieces(checker, tokenizer, prompt_msgs, response_msgs[0], parsed.trained, prompt_text)
        if out.pieces is None:
            return None
    return out


def _pieces(
    checker: _RowChecker,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Messages,
    response: Messages,
    trained: list[bool],
    prompt_text: str,
) -> list[tuple[str, bool]] | None:
    """The response of a conversation as (text, trained) pieces: each trained assistant message from where
    the template starts its answer (after the generation prompt) to the end of its turn; everything else
    (user and tool turns, the generation prompts) untrained."""
    pieces: list[tuple[str, bool]] = []
    done = prompt_text
    for i, msg in enumerate(response):
        before = prompt + response[:i]
        try:
            if trained[i] and i > 0:
                start = _render_chat(tokenizer, before, generation_prompt=True)
                if not start.startswith(done):
                    break
                pieces.append((start[len(done) :], False))
                done = start
            end = _render_chat(tokenizer, [*before, msg], generation_prompt=False)
        except Exception as err:
            checker.add(f"messages[{len(prompt) + i}]", f"chat template failed: {_first_line(err)}")
            return None
        if not end.startswith(done):
            break
        pieces.append((end[len(done) :], trained[i]))
        done = end
    else:
        return [(text, flag) for text, flag in pieces if text]
    checker.add(
        "messages",
        "chat template renders earlier turns differently once later ones follow, so each assistant turn "
        "cannot be trained where it is; set data.assistant_turns: last",
    )
    return None


def _texts(item: _Rendered) -> list[str]:
    """The texts tokenized for a rendered row's responses: its pieces, or one text per response."""
    return [t for t, _ in item.pieces] if item.pieces is not None else item.response_texts


def _template_markers(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's special tokens that its chat template writes around a user message: a string
    holding one of them is already chat-formatted."""
    probe = "\x00tether-probe\x00"
    try:
        text = _render_chat(tokenizer, [{"role": "user", "content": probe}], generation_prompt=True)
    except Exception:  # a template that fails on a probe has no markers to find
        return []
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    return sorted(t for t in specials if t and t in text and t != tokenizer.pad_token)


def _has_tool_calls(parsed: _Parsed) -> bool:
    texts = [parsed.prompt, *parsed.responses]
    return any(isinstance(m, dict) and m.get("tool_calls") for t in texts if isinstance(t, list) for m in t)


class _Notes:
    """What the user should know about how rows were read, once per file and kind of note."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], list[int]] = {}

    def add(self, row: Row, note: str) -> None:
        self._seen.setdefault((row.file, note), []).append(row.line)

    def read(self, row: Row) -> None:
        if row.origin.format is not None:
            self.add(row, f"rows read as {row.origin.format}: {describe_format(row.origin.format)}")
        if row.origin.note:
            self.add(row, row.origin.note)

    def lines(self) -> list[str]:
        return [
            f"{file}: {note} ({len(lines)} row{'s' * (len(lines) != 1)}, first at line {lines[0]})"
            for (file, note), lines in self._seen.items()
        ]


def _max_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters one token covers: its longest vocabulary string (byte-level BPE spells each byte
    as one character and a character is at least one byte, so this bounds characters too)."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def _encode_bounded(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], cap: int, need: int, *, keep_end: bool
) -> list[list[int]]:
    """Token ids of ``texts``, each first cut to ``cap`` characters (its last ones with ``keep_end``).

    A cut text must still give ``need`` tokens, or the full text is tokenized after all (a normalizer that
    drops characters can break the characters-per-token bound)."""
    cut = [t[-cap:] if keep_end else t[:cap] for t in texts]
    ids = _encode(tokenizer, cut)
    for i, text in enumerate(texts):
        if len(text) > cap and len(ids[i]) < need:
            ids[i] = _encode(tokenizer, [text])[0]
    return ids


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


# --------------------------------------------------------------------------------------------------
# Unpaired rows from pairs, and mismatched completions (KTO)
# --------------------------------------------------------------------------------------------------


def split_pairs(examples: Sequence[Example]) -> list[Example]:
    """Each pair as two unpaired examples with its prompt: the chosen answer desirable (``label`` True),
    the rejected one undesirable (False), in that order. Both keep the pair's file, line and meta."""
    out = []
    for e in examples:
        if e.rejected_ids is None:
            raise ValueError("split_pairs: an example without a rejected answer")
        for ids, label in ((e.chosen_ids, True), (e.rejected_ids, False)):
            out.append(Example(list(e.prompt_ids), list(ids), None, e.file, e.line, dict(e.meta), label))
    return out


def shuffled(examples: Sequence[Example], seed: int) -> list[Example]:
    """``examples`` in the order of ``random.Random(seed).shuffle`` (the same order for the same seed)."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def with_mismatched_completions(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Each unpaired example with a mismatched completion in ``rejected_ids`` (KTO's KL estimate).

    Example ``i``'s is the completion of the next example in the given order (cyclically) whose prompt
    differs from ``i``'s; when every example has the same prompt, simply the next one's (a single example:
    its own). It is cut at its end to fit ``max_length`` after ``i``'s prompt (``i``'s prompt always
    leaves room for one response token), so it never cuts the prompt. Deterministic: the order is the
    caller's (the run's seeded shuffle), nothing is random here.
    """
    n = len(examples)
    keys = [tuple(e.prompt_ids) for e in examples]
    partner: list[int | None] = [None] * n  # the next example with another prompt, found backwards in O(n)
    for t in range(2 * n - 1, -1, -1):
        i, j = t % n, (t + 1) % n
        partner[i] = j if keys[j] != keys[i] else partner[j]
    out = []
    for i, e in enumerate(examples):
        j = partner[i]
        kl = list(examples[(i + 1) % n if j is None else j].chosen_ids)[: max_length - len(e.prompt_ids)]
        out.append(Example(list(e.prompt_ids), list(e.chosen_ids), kl, e.file, e.line, dict(e.meta), e.label))
    return out


# --------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------


def split_train_eval(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into (train, eval) so that no prompt appears in both.

    Examples are grouped by ``prompt_ids``; the groups are shuffled with ``random.Random(seed)`` and
    taken into eval greedily while that brings the eval size closer to ``round(eval_fraction * n)``
    (at least 1 when ``eval_fraction > 0``), never taking the last group (train is never empty). Both
    splits keep the input order. Eval may come back empty, e.g. when every example shares one prompt;
    ``eval_fraction == 0`` always gives ``(examples, [])``.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    if eval_fraction == 0.0 or not examples:
        return list(examples), []
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(tuple(example.prompt_ids), []).append(index)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(eval_fraction * len(examples)))
    eval_indices: set[int] = set()
    n_eval = 0
    for group in order:
        if n_eval >= target:
            break
        new = n_eval + len(group)
        if new < len(examples) and abs(target - new) < abs(target - n_eval):
            eval_indices.update(group)
            n_eval = new
    train = [ex for i, ex in enumerate(examples) if i not in eval_indices]
    evals = [ex for i, ex in enumerate(examples) if i in eval_indices]
    return train, evals
