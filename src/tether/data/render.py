"""Rendering checked rows to text: through the chat template, as raw text, or as HH-RLHF dialogue.

* Message-list rows always go through ``tokenizer.apply_chat_template``::

      prompt_text   = render(prompt_msgs, add_generation_prompt=True)
      full_text     = render(prompt_msgs + response_msgs)
      response_text = full_text[len(prompt_text):]   # full_text must start with prompt_text

* String rows: with ``chat_template="always"`` the prompt becomes one user message and the response one
  assistant message, rendered as above. With ``"never"`` the raw text is used verbatim:
  ``prompt_text = prompt`` and ``response_text = response + tokenizer.eos_token`` (nothing is inserted
  between them, so put any separating space/newline in the data). ``"auto"`` means ``"always"`` when the
  tokenizer has a chat template, else ``"never"``.
* A string prompt that already holds the chat template's special tokens is used as written (with a
  note), not templated again; HH-RLHF rows without a usable template keep their own Human:/Assistant: text.
* An SFT conversation trained on several assistant turns renders its one response as (text, trained)
  pieces, so that tokens are scored only inside the trained turns.

Problems that concern a whole file (no chat template, no EOS token, ...) are reported once per file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tether.data.check import Messages, Parsed, RowChecker
from tether.data.formats import HH, describe_format, render_hh
from tether.data.read import Row
from tether.errors import Problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["ChatTemplateMode", "Rendered", "RenderedRows", "render_rows"]

ChatTemplateMode = Literal["auto", "always", "never"]


@dataclass
class Rendered:
    """A checked row as text: its prompt and the text of each response."""

    row: Row
    prompt_text: str
    response_texts: list[str]
    prompt_field: str
    response_fields: list[str]
    #: a conversation trained on several assistant turns: its one response as (text, trained) pieces,
    #: tokenized separately so that no token straddles a boundary
    pieces: list[tuple[str, bool]] | None = None

    def texts(self) -> list[str]:
        """The texts tokenized for the responses: the pieces, or one text per response."""
        return [t for t, _ in self.pieces] if self.pieces is not None else self.response_texts


class Notes:
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


@dataclass
class RenderedRows:
    """The rows that rendered, the problems of those that did not, and notes for the user."""

    items: list[Rendered] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Problems of single rows, in row order."""
    file_problems: dict[tuple[str, str], Problem] = field(default_factory=dict)
    """One problem per (file, reason), not one per row."""
    notes: Notes = field(default_factory=Notes)

    def file_problem(self, row: Row, reason: str, message: str) -> None:
        if (row.file, reason) not in self.file_problems:
            self.file_problems[(row.file, reason)] = Problem(
                row.file, None, None, f"{message} (first at line {row.line})"
            )


def render_rows(
    rows: Sequence[Row],
    tokenizer: PreTrainedTokenizerBase,
    parse: Callable[[RowChecker], Parsed | None],
    *,
    chat_template: ChatTemplateMode,
    all_turns: bool,
) -> RenderedRows:
    """Check each row with ``parse`` (a :data:`tether.data.check.PARSERS` entry, or ``parse_prompt``) and
    render it as ``chat_template`` says; ``all_turns``: train every assistant turn of a conversation."""
    style = _Style(tokenizer, chat_template)
    out = RenderedRows()
    for row in rows:
        checker = RowChecker(row, all_turns=all_turns)
        parsed = parse(checker)
        if parsed is not None:
            out.notes.read(row)
            how = style.how(row, parsed, out)
            item = _render_row(checker, parsed, tokenizer, how) if how else None
            if item is not None:
                out.items.append(item)
        out.problems.extend(checker.problems)
    return out


class _Style:
    """How a tokenizer renders rows under a ``chat_template`` setting."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: ChatTemplateMode) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.wrap_strings = chat_template == "always" or (chat_template == "auto" and self.has_template)
        self.markers = _template_markers(tokenizer) if self.wrap_strings and self.has_template else []
        self.renders_tools = self.has_template and "tool_calls" in str(tokenizer.chat_template)

    def how(self, row: Row, parsed: Parsed, out: RenderedRows) -> str | None:
        """``template``, ``raw``, ``verbatim`` or ``hh`` (see :func:`_render_row`); None, with a file
        problem in ``out``, when the row cannot be rendered."""
        if parsed.conversational:
            if row.origin.format == HH and (not self.has_template or self.chat_template == "never"):
                out.notes.add(row, "HH-RLHF rows rendered in their own Human:/Assistant: dialogue text")
                return "hh"
            if not self.has_template:
                out.file_problem(
                    row, "template", "tokenizer has no chat template; conversational rows need one"
                )
                return None
            if not self.renders_tools and _has_tool_calls(parsed):
                out.file_problem(
                    row,
                    "tools",
                    "assistant tool-call turns (content null with tool_calls) need a chat template that "
                    "renders tool_calls and this tokenizer's does not; drop those turns, write the call as "
                    "the assistant's text, or use a model whose template supports tools",
                )
                return None
            return "template"
        if self.wrap_strings and not self.has_template:
            out.file_problem(row, "always", "chat_template='always' but the tokenizer has no chat template")
            return None
        if self.wrap_strings:
            found = [m for m in self.markers if m in parsed.prompt]
            if found:
                out.notes.add(
                    row,
                    f"string prompts already hold the chat template's markers ({', '.join(found)}): "
                    "used as written, not templated again",
                )
            return "verbatim" if found else "template"
        if not self.tokenizer.eos_token:
            out.file_problem(
                row, "eos", "tokenizer has no eos_token; raw-text (chat_template='never') rows need one"
            )
            return None
        return "raw"


def _render_row(
    checker: RowChecker, parsed: Parsed, tokenizer: PreTrainedTokenizerBase, how: str
) -> Rendered | None:
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
        return Rendered(
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
    out = Rendered(checker.row, prompt_text, response_texts, parsed.prompt_field, parsed.response_fields)
    if parsed.trained is not None and not all(parsed.trained):
        out.pieces = _pieces(checker, tokenizer, prompt_msgs, response_msgs[0], parsed.trained, prompt_text)
        if out.pieces is None:
            return None
    return out


def _pieces(
    checker: RowChecker,
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


def _has_tool_calls(parsed: Parsed) -> bool:
    texts = [parsed.prompt, *parsed.responses]
    return any(isinstance(m, dict) and m.get("tool_calls") for t in texts if isinstance(t, list) for m in t)


def _render_chat(tokenizer: PreTrainedTokenizerBase, msgs: Messages, *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=generation_prompt, tokenize=False)
    if not isinstance(text, str):  # pragma: no cover - defensive: some processors return lists
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, not str")
    return text


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
