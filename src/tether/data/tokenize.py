"""Tokenizing checked, rendered rows into :class:`Example` token ids, truncated to fit.

One :class:`Tokenization` value holds the settings (``max_length``, ``max_prompt_length``,
``chat_template``, ``drop_long_prompts``, ``assistant_turns``); a run builds it once from its config
(``DataConfig.tokenization()``) and training, evaluation and ``tether generate`` all tokenize with it.
:meth:`Tokenization.tokenize_rows` checks (:mod:`tether.data.check`), renders (:mod:`tether.data.render`)
and tokenizes rows; :meth:`Tokenization.tokenize_prompts` does the same for prompts alone, to generate
from. :func:`tokenize_rows` is the same with the settings given one by one.

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

Prompts alone
-------------
:meth:`Tokenization.tokenize_prompts` renders a prompt as a row's prompt and applies steps 1 and 2 to it; a
prompt that leaves no room for a response token is always a problem (every prompt is answered:
``drop_long_prompts`` does not apply).

Problems
--------
Nothing stops at the first problem: every row is checked and all problems are raised together as one
:class:`~tether.errors.DataError`, each naming file, line and field. Everything here is deterministic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether.data.check import PARSERS, AssistantTurns, Text, parse_prompt
from tether.data.kinds import TEXT_FIELDS, Kind
from tether.data.read import Row
from tether.data.render import ChatTemplateMode, Rendered, render_rows
from tether.errors import ConfigError, DataError, Problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Example", "Tokenization", "TokenizedData", "tokenize_rows"]


@dataclass(frozen=True)
class Example:
    """One tokenized training example.

    For SFT and unpaired rows ``chosen_ids`` holds the completion and ``rejected_ids`` is ``None``;
    ``label`` is an unpaired row's label (True: desirable), else ``None``. An unpaired row of a method
    that declares ``mismatched_completion`` (KTO) carries in ``rejected_ids`` another row's completion, to
    be scored after this row's prompt (:func:`tether.data.split.with_mismatched_completions`): the engine lays it out and
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


def fingerprint(examples: Sequence[Example]) -> str:
    """A content hash of ``examples`` as tokenized (token ids, scored-token masks and labels, in order): a
    checkpoint records it, so a resume on a data file changed in place is noticed."""
    h = hashlib.sha256()
    for e in examples:
        row = [e.prompt_ids, e.chosen_ids, e.rejected_ids, e.label, e.chosen_mask]
        h.update(json.dumps(row, separators=(",", ":")).encode())
    return h.hexdigest()[:16]


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


@dataclass(frozen=True)
class Tokenization:
    """How rows become token ids: the ``data.*`` settings of a run (built by ``DataConfig.tokenization()``,
    whose defaults a plain model gets). Checked when built (a :class:`ConfigError`)."""

    max_length: int
    """Token budget per row (prompt + response)."""
    max_prompt_length: int | None
    """Keep only the last this-many prompt tokens (None: prompts are not cut)."""
    chat_template: ChatTemplateMode
    """How string rows are rendered: ``auto``, ``always`` or ``never`` (see :mod:`tether.data.render`)."""
    drop_long_prompts: bool
    """Drop (and count) rows whose prompt leaves no room for a response, instead of a problem."""
    assistant_turns: AssistantTurns
    """Which assistant turns of an SFT conversation are trained: ``all`` or ``last``."""

    def __post_init__(self) -> None:
        if self.chat_template not in ("auto", "always", "never"):
            raise ConfigError(
                f"chat_template must be 'auto', 'always' or 'never', got {self.chat_template!r}"
            )
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        mpl = self.max_prompt_length
        if mpl is not None and (not isinstance(mpl, int) or mpl < 1):
            raise ConfigError(f"max_prompt_length must be a positive integer, got {mpl!r}")

    def tokenize_rows(
        self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, *, kind: Kind
    ) -> TokenizedData:
        """Check, render and tokenize ``rows`` as ``kind`` examples, truncating to fit ``max_length``.

        See the module docstring for the rendering, BOS handling and the exact truncation policy. Every
        row is checked; if any has a problem, a :class:`DataError` listing all of them is raised.
        """
        _check_kind(kind)
        rendered = render_rows(
            rows,
            tokenizer,
            PARSERS[kind],
            chat_template=self.chat_template,
            all_turns=self.assistant_turns == "all",
        )
        enc = _Encoder(tokenizer, self.max_length)
        prompts, responses = enc.prompts(rendered.items), enc.responses(rendered.items)
        problems = rendered.problems
        examples: list[Example] = []
        n_truncated = n_prompt_truncated = n_dropped = 0
        for item, prompt_ids, (response_ids, mask) in zip(rendered.items, prompts, responses, strict=True):
            empty = _empty_responses(item, response_ids)
            if empty:
                problems.extend(empty)
                continue
            prompt_ids, cut = self._prompt(prompt_ids, enc.bos)
            n_prompt_truncated += cut
            if len(prompt_ids) + 1 > self.max_length:
                if self.drop_long_prompts:
                    n_dropped += 1
                else:
                    problems.append(enc.too_long(item, prompt_ids))
                continue
            budget = self.max_length - len(prompt_ids)
            if any(len(ids) > budget for ids in response_ids):
                n_truncated += 1
                response_ids = [ids[:budget] for ids in response_ids]
                mask = None if mask is None else mask[:budget]
            examples.append(_example(item.row, kind, prompt_ids, response_ids, mask))
        _raise_problems(rows, rendered.file_problems.values(), problems)
        return TokenizedData(
            examples=examples,
            n_rows=len(rows),
            n_truncated=n_truncated,
            n_prompt_truncated=n_prompt_truncated,
            n_dropped=n_dropped,
            notes=rendered.notes.lines(),
        )

    def tokenize_prompts(
        self, prompts: Sequence[Text], tokenizer: PreTrainedTokenizerBase
    ) -> list[list[int]]:
        """The token ids of each prompt (a string or a message list) exactly as :meth:`tokenize_rows` makes
        a row's prompt, to generate from. Problems name the prompt by its 1-based position ("prompt:2")."""
        rows = [Row("prompt", i, {"prompt": p}) for i, p in enumerate(prompts, start=1)]
        rendered = render_rows(
            rows, tokenizer, parse_prompt, chat_template=self.chat_template, all_turns=True
        )
        enc = _Encoder(tokenizer, self.max_length)
        problems = rendered.problems
        out = []
        for item, ids in zip(rendered.items, enc.prompts(rendered.items), strict=True):
            ids, _ = self._prompt(ids, enc.bos)
            if len(ids) + 1 > self.max_length:
                problems.append(enc.too_long(item, ids))
            else:
                out.append(ids)
        _raise_problems(rows, rendered.file_problems.values(), problems)
        return out

    def _prompt(self, ids: list[int], bos: int | None) -> tuple[list[int], bool]:
        """A prompt's ids with BOS first (when the tokenizer adds one), cut to their last
        ``max_prompt_length``; and whether they were cut."""
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
            return ids[-self.max_prompt_length :], True
        return ids, False


def tokenize_rows(
    rows: Sequence[Row],
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: Kind,
    max_length: int,
    max_prompt_length: int | None = None,
    chat_template: ChatTemplateMode = "auto",
    drop_long_prompts: bool = False,
    assistant_turns: AssistantTurns = "all",
) -> TokenizedData:
    """:meth:`Tokenization.tokenize_rows` with the settings given one by one."""
    _check_kind(kind)
    settings = Tokenization(max_length, max_prompt_length, chat_template, drop_long_prompts, assistant_turns)
    return settings.tokenize_rows(rows, tokenizer, kind=kind)


def _check_kind(kind: str) -> None:
    if kind not in PARSERS:
        raise ConfigError(f"kind must be one of {', '.join(PARSERS)}, got {kind!r}")


def _example(
    row: Row, kind: str, prompt_ids: list[int], responses: list[list[int]], mask: list[bool] | None
) -> Example:
    meta = {
        k: v
        for k, v in row.data.items()
        if k not in TEXT_FIELDS and (v is None or isinstance(v, (str, int, float, bool)))
    }
    return Example(
        prompt_ids=list(prompt_ids),
        chosen_ids=list(responses[0]),
        rejected_ids=list(responses[1]) if kind == "pairs" else None,
        file=row.file,
        line=row.line,
        meta=meta,
        label=row.data["label"] if kind == "unpaired" else None,
        chosen_mask=None if mask is None or all(mask) else tuple(mask),
    )


def _empty_responses(item: Rendered, response_ids: list[list[int]]) -> list[Problem]:
    return [
        Problem(item.row.file, item.row.line, name, "response is empty after tokenization")
        for name, ids in zip(item.response_fields, response_ids, strict=True)
        if not ids
    ]


def _raise_problems(rows: Sequence[Row], file_problems: Iterable[Problem], problems: list[Problem]) -> None:
    """One :class:`DataError`: the file-wide problems first, then the row problems in file order (stable:
    a row's fields keep their order)."""
    file_problems = list(file_problems)
    if file_problems or problems:
        file_order = {row.file: i for i, row in reversed(list(enumerate(rows)))}
        problems.sort(key=lambda p: (file_order.get(p.file, len(file_order)), p.line or 0))
        raise DataError(file_problems + problems)


class _Encoder:
    """Token ids of rendered texts, each cut first to what ``max_length`` tokens can cover (see "Bounded
    work" in the module docstring)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cap = 2 * max_length * _max_token_chars(tokenizer)
        self.bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None

    def prompts(self, items: list[Rendered]) -> list[list[int]]:
        texts = [r.prompt_text for r in items]
        return _encode_bounded(self.tokenizer, texts, self.cap, self.max_length + 1, keep_end=True)

    def responses(self, items: list[Rendered]) -> list[tuple[list[list[int]], list[bool] | None]]:
        """Per item, the ids of each response, and for a response of several pieces the pieces' ids joined
        into one response with its mask (which tokens are trained)."""
        texts = [t for r in items for t in r.texts()]
        flat = _encode_bounded(self.tokenizer, texts, self.cap, self.max_length + 1, keep_end=False)
        out: list[tuple[list[list[int]], list[bool] | None]] = []
        pos = 0
        for item in items:
            ids = flat[pos : pos + len(item.texts())]
            pos += len(ids)
            if item.pieces is None:
                out.append((ids, None))
                continue
            mask = [
                t
                for (_, trained), piece in zip(item.pieces, ids, strict=True)
                for t in [trained] * len(piece)
            ]
            out.append(([[t for piece in ids for t in piece]], mask))
        return out

    def too_long(self, item: Rendered, prompt_ids: list[int]) -> Problem:
        at_least = "at least " * (len(item.prompt_text) > self.cap)
        return Problem(
            item.row.file,
            item.row.line,
            item.prompt_field,
            f"prompt is {at_least}{len(prompt_ids)} tokens, longer than max_length={self.max_length} allows "
            "(at least one response token must fit); raise max_length, set max_prompt_length, "
            "or set drop_long_prompts",
        )


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS first when asked for its default special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    return bool(with_special) and with_special[0] == bos and (not without or without[0] != bos)


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
