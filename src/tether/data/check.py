"""Checking the fields of training rows: every problem of every row, each naming file, line and field.

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

A checked row becomes a :class:`Parsed` (its prompt and responses); :mod:`tether.data.render` renders it
to text. Nothing stops at the first problem: :func:`check_rows` returns all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.data.formats import original_name
from tether.data.kinds import Kind, describe_fields, looks_pairs, looks_sft
from tether.data.read import Row, json_type
from tether.errors import Problem

__all__ = ["PARSERS", "AssistantTurns", "Parsed", "RowChecker", "check_rows", "parse_prompt"]

AssistantTurns = Literal["all", "last"]
ROLES = ("system", "user", "assistant", "tool")

Messages = list[dict[str, Any]]
Text = str | Messages


@dataclass
class Parsed:
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
class RowChecker:
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
            f"must be a non-empty string or a list of {{role, content}} messages, got {json_type(value)}",
        )
        return None

    def messages(self, name: str, value: list[Any], *, response: bool) -> Messages | None:
        if not value:
            self.add(name, "is an empty list")
            return None
        if not any(isinstance(msg, dict) for msg in value):  # e.g. token ids: one problem, not one per item
            kinds = sorted({json_type(msg) for msg in value})
            self.add(
                name,
                f"must be a non-empty string or a list of {{role, content}} messages, got a list of {'/'.join(kinds)}",
            )
            return None
        before = len(self.problems)
        for i, msg in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(msg, dict):
                self.add(where, f"must be a {{role, content}} message, got {json_type(msg)}")
                continue
            role = msg.get("role")
            if "role" not in msg:
                self.add(f"{where}.role", "missing")
            elif not isinstance(role, str):
                self.add(f"{where}.role", f"must be a string, got {json_type(role)}")
            elif role not in ROLES:
                self.add(f"{where}.role", f"'{role}' is not one of {', '.join(ROLES)}")
            content = msg.get("content")
            if "content" not in msg:
                self.add(f"{where}.content", "missing")
            elif content is None and role == "assistant" and msg.get("tool_calls"):
                if not isinstance(msg["tool_calls"], list):
                    self.add(f"{where}.tool_calls", f"must be a list, got {json_type(msg['tool_calls'])}")
            elif isinstance(content, list):
                kinds = sorted({str(p.get("type")) if isinstance(p, dict) else json_type(p) for p in content})
                self.add(
                    f"{where}.content",
                    f"content parts other than text ({', '.join(kinds)}) are not supported; give text parts "
                    '[{"type": "text", "text": ...}] or a string',
                )
            elif not isinstance(content, str):
                self.add(f"{where}.content", f"must be a string, got {json_type(content)}")
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


def parse_sft(checker: RowChecker) -> Parsed | None:
    data = checker.row.data
    if looks_pairs(data) and not looks_sft(data):
        checker.add(
            "completion",
            f"method needs prompt/completion (or messages) rows but this row has {describe_fields(data)}",
        )
        return None
    if "messages" in data:
        if "prompt" in data or "completion" in data:
            checker.add("messages", "row has both 'messages' and prompt/completion; use one format")
            return None
        value = data["messages"]
        if not isinstance(value, list):
            checker.add("messages", f"must be a list of {{role, content}} messages, got {json_type(value)}")
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
            name,
            f"missing (SFT rows need prompt/completion or messages; this row has {describe_fields(data)})",
        )
    if missing:
        return None
    prompt = checker.text("prompt", response=False)
    completion = checker.text("completion", response=True)
    if prompt is None or completion is None:
        return None
    if not checker.same_type(("prompt", prompt), [("completion", completion)]):
        return None
    return Parsed(prompt, [completion], ["completion"], "prompt", isinstance(prompt, list))


def _conversation(checker: RowChecker, msgs: Messages) -> Parsed | None:
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
        return Parsed(msgs[:-1], [msgs[-1:]], ["messages"], "messages", conversational=True)
    if not any(trained):
        checker.add("messages", "every assistant message has weight 0: nothing to train on")
        return None
    first = trained.index(True)
    if first == 0:
        checker.add("messages", "needs at least one message before the first trained assistant message")
        return None
    return Parsed(msgs[:first], [msgs[first:]], ["messages"], "messages", True, trained[first:])


def parse_unpaired(checker: RowChecker) -> Parsed | None:
    """TRL's unpaired preference rows: an SFT row (prompt/completion or messages) plus a boolean
    ``label`` (True: a desirable completion, False: an undesirable one)."""
    data = checker.row.data
    if "label" not in data:
        checker.add("label", "missing (unpaired rows need prompt, completion and a true/false label)")
        return None
    if not isinstance(data["label"], bool):
        checker.add("label", f"must be true or false, got {json_type(data['label'])}")
        return None
    return parse_sft(checker)


def parse_pairs(checker: RowChecker) -> Parsed | None:
    data = checker.row.data
    if looks_sft(data) and not looks_pairs(data):
        checker.add(
            "chosen",
            f"method needs preference pairs (prompt/chosen/rejected) but this row has {describe_fields(data)}",
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
    return Parsed(prompt, [chosen, rejected], ["chosen", "rejected"], "prompt", isinstance(prompt, list))


def _parse_implicit_prompt(checker: RowChecker) -> Parsed | None:
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
    return Parsed(
        chosen[:shared], [chosen[shared:], rejected[shared:]], ["chosen", "rejected"], "chosen", True
    )


def parse_prompt(checker: RowChecker) -> Parsed | None:
    """A prompt alone (to generate from): the row's ``prompt`` field, a string or a message list."""
    prompt = checker.text("prompt", response=False)
    if prompt is None:
        return None
    return Parsed(prompt, [], [], "prompt", isinstance(prompt, list))


PARSERS: dict[str, Callable[[RowChecker], Parsed | None]] = {
    "sft": parse_sft,
    "pairs": parse_pairs,
    "unpaired": parse_unpaired,
}
"""How a row of each training kind is checked and split into prompt and responses."""


def check_rows(rows: Sequence[Row], kind: Kind, *, assistant_turns: AssistantTurns = "all") -> list[Problem]:
    """The field problems of ``rows`` read as ``kind`` (missing/empty/mistyped fields, identical chosen and
    rejected), without a tokenizer: the checks :func:`tether.data.tokenize.tokenize_rows` makes before it
    renders a row."""
    problems: list[Problem] = []
    for row in rows:
        checker = RowChecker(row, all_turns=assistant_turns == "all")
        PARSERS[kind](checker)
        problems.extend(checker.problems)
    return problems
