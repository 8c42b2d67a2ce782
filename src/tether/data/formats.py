"""The public dataset formats tether reads, rewritten into its own row fields when a file is read.

tether's rows (see :mod:`tether.data.check`) are TRL's: ``prompt``/``completion``, ``messages``,
``prompt``/``chosen``/``rejected`` (+ ``label``). Rows in the other formats people have are recognised by
their keys and rewritten once, in :func:`canonical`, so that everything after reading sees one shape:

* **Anthropic HH-RLHF**: only ``chosen`` and ``rejected``, each a whole dialogue
  ``"\\n\\nHuman: …\\n\\nAssistant: …"``. Each becomes a message list (Human → user, Assistant →
  assistant); the prompt is then the dialogue the two share before their final assistant turns (TRL's
  longest common prefix up to the last assistant turn). Without a chat template the rows are rendered in
  their own dialogue text, exactly TRL's split of the strings (:func:`render_hh`).
* **A string prompt with message-list responses** (``HuggingFaceH4/ultrafeedback_binarized``: the
  responses repeat the user turn): when the responses start with a non-assistant message, the string
  prompt is dropped and the prompt is the messages the responses share (TRL's choice); a row whose string
  prompt is not the last shared user message gets a note. When the responses are assistant messages only,
  the string becomes the user message before them. Likewise ``{"prompt": str, "messages": [...]}`` SFT rows
  (``ultrachat_200k``) keep ``messages``.
* **Alpaca** (``instruction``, optional ``input``, ``output`` — or ``chosen``/``rejected`` for
  LLaMA-Factory's preference form — optional ``system`` and ``history`` of ``[query, answer]`` turns): the
  prompt is ``instruction`` and ``input`` joined by a newline (LLaMA-Factory's join); with a system prompt
  or history the row becomes message lists.
* **ShareGPT** (``conversations`` of ``{"from", "value"}``, optional ``system``; LLaMA-Factory's preference
  form adds ``chosen``/``rejected`` single messages): roles human/user → user, gpt/assistant → assistant,
  system, observation/tool → tool, and ``function_call`` → an assistant tool-call message (its value is
  the JSON ``{"name", "arguments"}``).
* **OpenAI messages**: text content parts ``[{"type": "text", "text": …}]`` are joined into one string;
  assistant tool-call turns (``content: null`` with ``tool_calls``) are kept for templates that render
  tool calls (:func:`tokenize_rows` names the row otherwise).

Field names in problems are given back in the file's own names (``output``, ``conversations[2].value``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

HH = "HH-RLHF"
ALPACA = "Alpaca"
SHAREGPT = "ShareGPT"

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "assistant",
}


_DESCRIPTIONS = {
    HH: "Human/Assistant dialogues as messages; the prompt is the dialogue chosen and rejected share",
    ALPACA: "the prompt is instruction and input joined by a newline (system and history as messages)",
    SHAREGPT: "conversations as messages (human → user, gpt → assistant)",
}


def describe_format(name: str) -> str:
    """How rows of a public format are read, in one phrase (for ``tether validate``)."""
    return _DESCRIPTIONS[name]


@dataclass
class Origin:
    """How a row was read. ``format``: the public format (None: it was in tether's fields already);
    ``names``: tether field → the file's own name, for problems; ``note``: something the user should know
    about this row (e.g. a string prompt that disagrees with the messages)."""

    format: str | None = None
    names: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    #: whether a message's index in the tether field is its index in the file's field
    same_positions: bool = False


def canonical(data: dict[str, Any]) -> tuple[dict[str, Any], Origin]:
    """``data`` in tether's fields (a copy) and how it was read. Rows that match no public format, or are
    malformed in it, come back as they are, for the row checks to name what is wrong."""
    if "conversations" in data:
        out, origin = _sharegpt(data)
    elif "instruction" in data and ("output" in data or "chosen" in data or "rejected" in data):
        out, origin = _alpaca(data)
    elif _is_hh(data):
        out, origin = _hh(data)
    else:
        out, origin = dict(data), Origin()
    out = {k: _flatten_parts(v) if k in _MESSAGE_FIELDS else v for k, v in out.items()}
    if origin.format is None:
        origin.note = _string_prompt_with_messages(out)
    return out, origin


_MESSAGE_FIELDS = ("prompt", "completion", "messages", "chosen", "rejected")


def _flatten_parts(value: Any) -> Any:
    """Message lists with OpenAI text content parts get one string per message; other values as they are."""
    if not isinstance(value, list):
        return value
    out = []
    for msg in value:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list) and content and all(_is_text_part(p) for p in content):
            msg = {**msg, "content": "".join(p["text"] for p in content)}
        out.append(msg)
    return out


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


# --------------------------------------------------------------------------------------------------
# HH-RLHF
# --------------------------------------------------------------------------------------------------


def _is_hh(data: dict[str, Any]) -> bool:
    c, r = data.get("chosen"), data.get("rejected")
    return (
        "prompt" not in data
        and isinstance(c, str)
        and isinstance(r, str)
        and all(s.lstrip(" ").startswith("\n\nHuman:") or s.startswith("Human:") for s in (c, r))
        and all("\n\nAssistant:" in s for s in (c, r))
    )


def hh_messages(text: str) -> list[dict[str, str]]:
    """An HH-RLHF dialogue string as messages (Human → user, Assistant → assistant)."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip(" ")
    parts = _HH_TURN.split(text)
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        msgs.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return msgs


def _hh(data: dict[str, Any]) -> tuple[dict[str, Any], Origin]:
    out = {k: v for k, v in data.items() if k not in ("chosen", "rejected")}
    out["chosen"] = hh_messages(data["chosen"])
    out["rejected"] = hh_messages(data["rejected"])
    return out, Origin(HH)


def render_hh(prompt: list[dict[str, Any]], response: list[dict[str, Any]]) -> tuple[str, str]:
    """The prompt and response text of an HH-RLHF row without a chat template, in the data's own dialogue
    format: ``"\\n\\nHuman: q\\n\\nAssistant:"`` and ``" answer"`` (TRL's split of the strings)."""
    prompt_text = _turns(prompt)
    if response and response[0]["role"] == "assistant":
        return prompt_text + "\n\nAssistant:", " " + response[0]["content"] + _turns(response[1:])
    return prompt_text, _turns(response)


def _turns(msgs: list[dict[str, Any]]) -> str:
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in msgs)


# --------------------------------------------------------------------------------------------------
# String prompt + message-list responses (UltraFeedback, UltraChat)
# --------------------------------------------------------------------------------------------------


def _string_prompt_with_messages(data: dict[str, Any]) -> str | None:
    """Rewrite a string prompt given with message-list responses (in place); a note when it is dropped and
    disagrees with the messages."""
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        return None
    if isinstance(data.get("messages"), list) and not {"completion", "chosen", "rejected"} & data.keys():
        users = [
            m.get("content") for m in data["messages"] if isinstance(m, dict) and m.get("role") == "user"
        ]
        del data["prompt"]
        if users and users[0] != prompt:
            return "'prompt' differs from the first user message; the messages are used"
        return None
    responses = [data[k] for k in ("chosen", "rejected", "completion") if k in data]
    if not responses or not all(isinstance(r, list) and r and isinstance(r[0], dict) for r in responses):
        return None
    if all(r[0].get("role") == "assistant" for r in responses):
        data["prompt"] = [{"role": "user", "content": prompt}]
        return None
    if "completion" in data:
        return None  # an SFT row: the row checks name the mix of a string and messages
    del data["prompt"]  # implicit prompt: the messages chosen and rejected share
    users = [
        m.get("content") for m in _shared(data.get("chosen"), data.get("rejected")) if m.get("role") == "user"
    ]
    if not users or users[-1] != prompt:
        return "'prompt' is not the last user message chosen and rejected share; the messages are used"
    return None


def _shared(a: Any, b: Any) -> list[dict[str, Any]]:
    if not isinstance(a, list) or not isinstance(b, list):
        return []
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n] and isinstance(a[n], dict):
        n += 1
    return a[:n]


# --------------------------------------------------------------------------------------------------
# Alpaca
# --------------------------------------------------------------------------------------------------


def _alpaca(data: dict[str, Any]) -> tuple[dict[str, Any], Origin]:
    instruction, query_input = data.get("instruction"), data.get("input", "")
    system, history = data.get("system"), data.get("history")
    if not isinstance(instruction, str) or not isinstance(query_input, str | None):
        return dict(data), Origin()
    query = "\n".join(q for q in (instruction, query_input or "") if q)
    responses = {k: data[k] for k in ("output", "chosen", "rejected") if k in data}
    rest = {
        k: v
        for k, v in data.items()
        if k not in ("instruction", "input", "system", "history", "output", "chosen", "rejected")
    }
    names = {"prompt": "instruction", "completion": "output", "messages": "output"}
    conversational = bool(system) or bool(history)
    if not conversational:
        out = {**rest, "prompt": query}
        for key, value in responses.items():
            out["completion" if key == "output" else key] = value
        return out, Origin(ALPACA, names)
    prompt: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if history:
        if not isinstance(history, list) or not all(
            isinstance(t, list | tuple) and len(t) == 2 and all(isinstance(s, str) for s in t)
            for t in history
        ):
            return dict(data), Origin()  # the row checks report the unknown format
        for q, a in history:
            prompt += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    prompt.append({"role": "user", "content": query})
    out = dict(rest)
    for key, value in responses.items():
        msg = [{"role": "assistant", "content": value}]
        if key == "output":
            out["messages"] = prompt + msg
            names = {"messages": "output"}
        else:
            out[key] = msg
    if "output" not in responses:
        out["prompt"] = prompt
    return out, Origin(ALPACA, names)


# --------------------------------------------------------------------------------------------------
# ShareGPT
# --------------------------------------------------------------------------------------------------


def _sharegpt_message(msg: Any) -> Any:
    if not isinstance(msg, dict) or "from" not in msg or "role" in msg:
        return msg
    role = _SHAREGPT_ROLES.get(msg["from"], msg["from"])
    value = msg.get("value")
    if msg["from"] == "function_call" and isinstance(value, str):
        try:
            call = json.loads(value)
        except ValueError:
            call = None
        if isinstance(call, dict) and "name" in call:
            args = call.get("arguments", {})
            fn = {"name": call["name"], "arguments": args}
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": fn}],
            }
    return {"role": role, "content": value}


def _sharegpt(data: dict[str, Any]) -> tuple[dict[str, Any], Origin]:
    conv = data["conversations"]
    if not isinstance(conv, list):
        return dict(data), Origin()
    msgs = [_sharegpt_message(m) for m in conv]
    system = data.get("system")
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    rest = {
        k: v for k, v in data.items() if k not in ("conversations", "system", "tools", "chosen", "rejected")
    }
    if "chosen" in data or "rejected" in data:
        out = {**rest, "prompt": head + msgs}
        for key in ("chosen", "rejected"):
            if key in data:
                value = data[key]
                out[key] = [_sharegpt_message(value)] if isinstance(value, dict) else value
        return out, Origin(SHAREGPT, {"prompt": "conversations"}, same_positions=not head)
    return {**rest, "messages": head + msgs}, Origin(
        SHAREGPT, {"messages": "conversations"}, same_positions=not head
    )


def original_name(name: str | None, row: Origin) -> str | None:
    """A tether field name (``messages[2].content``) in the file's own names (``conversations[2].value``)."""
    if name is None or not row.names:
        return name
    top = re.match(r"[^.\[]*", name).group(0)  # type: ignore[union-attr]
    if top not in row.names:
        return name
    rest = name[len(top) :]
    if not row.same_positions:
        rest = ""  # the message list was built from other fields: name the field itself
    elif row.format == SHAREGPT:
        rest = rest.replace(".content", ".value").replace(".role", ".from")
    return row.names[top] + rest
