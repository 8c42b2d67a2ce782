"""The public data formats (tether.data.formats): which tokens get loss, token by token, and what
``validate`` says about how rows were read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_data import SPECIALS, TEMPLATE, WORDS, ids, make_tokenizer, problems_of
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tether.config import load_config
from tether.data import read_rows, tokenize_rows
from tether.engine.logprobs import LogProbModel, collate
from tether.errors import ConfigError, DataError

from tiny import tiny_model, tiny_model_dir


def rows_from(tmp_path: Path, *records: dict) -> list:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return read_rows(str(path))


def tokenize(tmp_path: Path, kind: str, *records: dict, tok=None, **kw):
    return tokenize_rows(
        rows_from(tmp_path, *records), tok or make_tokenizer(chat=True), kind=kind, max_length=64, **kw
    )


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


PROMPT_HI = "<|user|> hi <|end|> <|assistant|>"


# ------------------------------------------------------------------------------------------------
# Anthropic HH-RLHF
# ------------------------------------------------------------------------------------------------

HH_ROW = {
    "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you\n\nAssistant: fine thanks",
    "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you\n\nAssistant: what",
}


def test_hh_rlhf_prompt_is_the_shared_dialogue_and_only_the_answer_gets_loss(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    data = tokenize(tmp_path, "pairs", HH_ROW, tok=tok)
    (ex,) = data.examples
    assert ex.prompt_ids == ids(
        tok, "<|user|> hi <|end|> <|assistant|> hello <|end|> <|user|> how are you <|end|> <|assistant|>"
    )
    assert ex.chosen_ids == ids(tok, "fine thanks <|end|>")
    assert ex.rejected_ids == ids(tok, "what <|end|>")
    assert any("read as HH-RLHF" in n and "line 1" in n for n in data.notes)


def test_hh_rlhf_without_a_chat_template_is_trls_split_of_the_strings(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=False)
    data = tokenize(tmp_path, "pairs", HH_ROW, tok=tok)
    (ex,) = data.examples
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you\n\nAssistant:"
    assert HH_ROW["chosen"].startswith(prompt) and HH_ROW["rejected"].startswith(prompt)
    assert ex.prompt_ids == ids(tok, prompt)
    assert ex.chosen_ids == [*ids(tok, HH_ROW["chosen"][len(prompt) :]), tok.eos_token_id]
    assert ex.rejected_ids == [*ids(tok, " what"), tok.eos_token_id]
    assert any("Human:/Assistant: dialogue text" in n for n in data.notes)


def test_hh_rlhf_rows_with_no_shared_dialogue_are_named(tmp_path: Path) -> None:
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: what\n\nAssistant: hello"}
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, "pairs", row)
    assert problems_of(err) == [
        f"{tmp_path / 'd.jsonl'}:1: field 'prompt': missing, and chosen and rejected share no leading "
        "messages to use as the prompt"
    ]


# ------------------------------------------------------------------------------------------------
# UltraFeedback (string prompt, message-list responses that repeat the user turn)
# ------------------------------------------------------------------------------------------------


def test_ultrafeedback_binarized_rows(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    row = {
        "prompt": "hi",
        "prompt_id": "abc",
        "chosen": [user("hi"), assistant("hello there")],
        "rejected": [user("hi"), assistant("what")],
        "messages": [user("hi"), assistant("hello there")],
        "score_chosen": 8.0,
        "score_rejected": 2.5,
    }
    disagree = {**row, "prompt": "hello"}
    data = tokenize(tmp_path, "pairs", row, disagree, tok=tok)
    a, b = data.examples
    assert a.prompt_ids == b.prompt_ids == ids(tok, PROMPT_HI)
    assert a.chosen_ids == ids(tok, "hello there <|end|>")
    assert a.rejected_ids == ids(tok, "what <|end|>")
    assert a.meta == {"prompt_id": "abc", "score_chosen": 8.0, "score_rejected": 2.5}
    (note,) = [n for n in data.notes if "'prompt'" in n]
    assert "not the last user message chosen and rejected share" in note and "first at line 2" in note
    assert "(1 row," in note


def test_string_prompt_with_assistant_only_message_responses(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    row = {"prompt": "hi", "chosen": [assistant("hello")], "rejected": [assistant("what")]}
    (ex,) = tokenize(tmp_path, "pairs", row, tok=tok).examples
    assert ex.prompt_ids == ids(tok, PROMPT_HI)
    assert ex.chosen_ids == ids(tok, "hello <|end|>")


def test_ultrachat_sft_rows_keep_messages(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    row = {"prompt": "hi", "prompt_id": "x", "messages": [user("hi"), assistant("hello")]}
    (ex,) = tokenize(tmp_path, "sft", row, tok=tok).examples
    assert ex.prompt_ids == ids(tok, PROMPT_HI)
    assert ex.chosen_ids == ids(tok, "hello <|end|>")


# ------------------------------------------------------------------------------------------------
# Alpaca and ShareGPT
# ------------------------------------------------------------------------------------------------


def test_alpaca_rows(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    rows = [
        {"instruction": "what is", "input": "two plus two", "output": "four"},
        {"instruction": "what is two plus two", "input": "", "output": "four"},
        {"instruction": "hi", "output": "hello", "system": "be brief", "history": [["hi", "what"]]},
    ]
    data = tokenize(tmp_path, "sft", *rows, tok=tok)
    a, b, c = data.examples
    assert a.prompt_ids == b.prompt_ids == ids(tok, "<|user|> what is two plus two <|end|> <|assistant|>")
    assert a.chosen_ids == ids(tok, "four <|end|>")
    # the history's turns are turns of the conversation: every assistant turn is trained by default
    assert c.prompt_ids == ids(tok, "<|system|> be brief <|end|> " + PROMPT_HI)
    assert c.chosen_ids == ids(tok, "what <|end|> <|user|> hi <|end|> <|assistant|> hello <|end|>")
    assert _masked_text(tok, c) == ["what", "<|end|>", "hello", "<|end|>"]
    assert any("read as Alpaca" in n and "3 rows" in n for n in data.notes)
    # the raw text of 'input' follows the instruction after a newline
    rows_ = rows_from(tmp_path, rows[0])
    assert rows_[0].data["prompt"] == "what is\ntwo plus two"

    pairs = {"instruction": "hi", "chosen": "hello", "rejected": "what"}
    (p,) = tokenize(tmp_path, "pairs", pairs, tok=tok).examples
    assert (p.prompt_ids, p.chosen_ids, p.rejected_ids) == (
        ids(tok, PROMPT_HI),
        ids(tok, "hello <|end|>"),
        ids(tok, "what <|end|>"),
    )


def test_alpaca_problems_name_the_files_fields(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, "sft", {"instruction": "hi", "output": " "})
    assert problems_of(err) == [f"{tmp_path / 'd.jsonl'}:1: field 'output': is empty"]


def test_sharegpt_rows(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    rows = [{"conversations": conv}, {"conversations": conv, "system": "be brief"}]
    data = tokenize(tmp_path, "sft", *rows, tok=tok)
    a, b = data.examples
    assert a.prompt_ids == ids(tok, PROMPT_HI)
    assert a.chosen_ids == ids(tok, "hello <|end|>")
    assert b.prompt_ids == ids(tok, "<|system|> be brief <|end|> " + PROMPT_HI)
    assert any("read as ShareGPT" in n for n in data.notes)

    pref = {
        "conversations": conv[:1],
        "chosen": {"from": "gpt", "value": "hello"},
        "rejected": {"from": "gpt", "value": "what"},
    }
    (p,) = tokenize(tmp_path, "pairs", pref, tok=tok).examples
    assert (p.prompt_ids, p.chosen_ids, p.rejected_ids) == (
        ids(tok, PROMPT_HI),
        ids(tok, "hello <|end|>"),
        ids(tok, "what <|end|>"),
    )

    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]}
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, "sft", bad, tok=tok)
    assert problems_of(err) == [
        f"{tmp_path / 'd.jsonl'}:1: field 'conversations[1].value': must be a string, got number"
    ]


# ------------------------------------------------------------------------------------------------
# OpenAI messages: content parts, tool calls, weights, every assistant turn
# ------------------------------------------------------------------------------------------------


def test_text_content_parts_are_joined_and_other_parts_named(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    parts = [{"type": "text", "text": "how are"}, {"type": "text", "text": " you"}]
    (ex,) = tokenize(
        tmp_path, "sft", {"messages": [{"role": "user", "content": parts}, assistant("fine")]}, tok=tok
    ).examples
    assert ex.prompt_ids == ids(tok, "<|user|> how are you <|end|> <|assistant|>")
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(DataError) as err:
        tokenize(
            tmp_path, "sft", {"messages": [{"role": "user", "content": image}, assistant("fine")]}, tok=tok
        )
    (problem,) = problems_of(err)
    assert "messages[0].content" in problem and "content parts other than text (image_url)" in problem


def test_tool_call_turns_need_a_template_that_renders_them(tmp_path: Path) -> None:
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
    row = {
        "messages": [
            user("what is two plus two"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "four"},
            assistant("four"),
        ]
    }
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, "sft", row)
    (problem,) = problems_of(err)
    assert (
        "tool-call turns (content null with tool_calls) need a chat template that renders tool_calls"
        in problem
    )
    tok = make_tokenizer(chat=True)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|> {% if m.tool_calls %}{{ m.tool_calls[0].function.name }}"
        "{% else %}{{ m.content }}{% endif %} <|end|> {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    (ex,) = tokenize(tmp_path, "sft", row, tok=tok).examples
    assert tok.decode(ex.prompt_ids).split()[:3] == ["<|user|>", "what", "is"]


def _masked_text(tok, ex) -> list[str]:
    mask = ex.chosen_mask or [True] * len(ex.chosen_ids)
    return [tok.convert_ids_to_tokens(i) for i, m in zip(ex.chosen_ids, mask, strict=True) if m]


def test_every_assistant_turn_gets_loss_by_default_and_weight_zero_is_honoured(tmp_path: Path) -> None:
    tok = make_tokenizer(chat=True)
    msgs = [user("hi"), assistant("hello"), user("how are you"), assistant("fine thanks")]
    data = tokenize(tmp_path, "sft", {"messages": msgs}, tok=tok)
    (ex,) = data.examples
    assert ex.prompt_ids == ids(tok, PROMPT_HI)
    assert ex.chosen_ids == ids(
        tok, "hello <|end|> <|user|> how are you <|end|> <|assistant|> fine thanks <|end|>"
    )
    assert _masked_text(tok, ex) == ["hello", "<|end|>", "fine", "thanks", "<|end|>"]
    assert ex.chosen_mask == (True, True, False, False, False, False, False, False, True, True, True)

    (last,) = tokenize(tmp_path, "sft", {"messages": msgs}, tok=tok, assistant_turns="last").examples
    assert last.prompt_ids == ids(
        tok, PROMPT_HI + " hello <|end|> <|user|> how are you <|end|> <|assistant|>"
    )
    assert last.chosen_ids == ids(tok, "fine thanks <|end|>") and last.chosen_mask is None

    weighted = [
        user("hi"),
        assistant("hello", weight=0),
        user("how are you"),
        assistant("fine thanks", weight=1),
    ]
    (w,) = tokenize(tmp_path, "sft", {"messages": weighted}, tok=tok).examples
    assert (w.prompt_ids, w.chosen_ids, w.chosen_mask) == (last.prompt_ids, last.chosen_ids, None)

    middle = [*msgs, user("what"), assistant("four", weight=0)]
    (m,) = tokenize(tmp_path, "sft", {"messages": middle}, tok=tok).examples
    assert _masked_text(tok, m) == ["hello", "<|end|>", "fine", "thanks", "<|end|>"]


def test_bad_weights_are_named(tmp_path: Path) -> None:
    rows = [
        {"messages": [user("hi"), assistant("hello", weight=0.5)]},
        {
            "messages": [
                user(
                    "hi",
                ),
                assistant("hello", weight=0),
            ]
        },
        {"messages": [{"role": "user", "content": "hi", "weight": 1}, assistant("hello")]},
    ]
    with pytest.raises(DataError) as err:
        tokenize(tmp_path, "sft", *rows)
    f = tmp_path / "d.jsonl"
    assert problems_of(err) == [
        f"{f}:1: field 'messages[1].weight': must be 0 or 1, got 0.5",
        f"{f}:2: field 'messages': every assistant message has weight 0: nothing to train on",
        f"{f}:3: field 'messages[0].weight': only assistant messages have a weight",
    ]


@pytest.mark.parametrize("packing", [False, True])
def test_engine_scores_only_the_trained_turns(tmp_path: Path, packing: bool) -> None:
    """Summed log-probs of a multi-turn row equal the full model's log-probs summed over the assistant turns'
    tokens, in the padded and the packed layout."""
    tok = make_tokenizer(chat=True)
    msgs = [user("hi"), assistant("hello"), user("how are you"), assistant("fine thanks")]
    plain = {"messages": [user("what is two"), assistant("four")]}
    examples = tokenize(tmp_path, "sft", {"messages": msgs}, plain, tok=tok).examples
    model = tiny_model(vocab=len(tok))
    lp = LogProbModel(model)
    batch = collate(examples, [0, 1], pad_id=tok.pad_token_id, packing=packing)
    assert not packing or lp.supports_segments()
    got = lp(batch)
    for i, ex in enumerate(examples):
        seq = torch.tensor([ex.prompt_ids + ex.chosen_ids])
        with torch.no_grad():
            logp = model(seq).logits.log_softmax(-1)[0, :-1].gather(-1, seq[0, 1:, None])[:, 0]
        mask = [False] * len(ex.prompt_ids) + list(ex.chosen_mask or [True] * len(ex.chosen_ids))
        want = logp[torch.tensor(mask[1:])]
        assert got.n_tokens[i] == len(want)
        torch.testing.assert_close(got.sum[i].detach(), want.sum(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Strings that are already chat-formatted
# ------------------------------------------------------------------------------------------------


def special_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
    )
    tok.chat_template = TEMPLATE
    return tok


def test_already_formatted_strings_are_not_templated_again(tmp_path: Path) -> None:
    tok = special_tokenizer()
    formatted = {"prompt": PROMPT_HI, "completion": "hello"}
    plain = {"prompt": "hi", "completion": "hello"}
    data = tokenize(tmp_path, "sft", formatted, plain, tok=tok)
    a, b = data.examples
    assert a.prompt_ids == b.prompt_ids == ids(tok, PROMPT_HI)
    assert a.chosen_ids == [*ids(tok, "hello"), tok.eos_token_id]
    assert b.chosen_ids == ids(tok, "hello <|end|>")
    (note,) = [n for n in data.notes if "already hold" in n]
    assert "<|assistant|>, <|end|>, <|user|>" in note and "(1 row, first at line 1)" in note


# ------------------------------------------------------------------------------------------------
# Hub splits
# ------------------------------------------------------------------------------------------------


def test_eval_from_the_training_source_needs_its_own_split(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {train: 'hf:HuggingFaceH4/ultrafeedback_binarized', eval: 'hf:HuggingFaceH4/ultrafeedback_binarized', split: train_prefs}\n"
    )
    with pytest.raises(ConfigError, match=r"data\.eval_split: data\.eval is the training source"):
        load_config(cfg)
    ok = load_config(cfg, ["data.eval_split=test_prefs"])
    assert (ok.data.split, ok.data.eval_split) == ("train_prefs", "test_prefs")


def test_hub_splits_are_read_separately(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    from tether.training.run import prepare

    pair = {"prompt": "hi", "chosen": "hello", "rejected": "what"}
    DatasetDict(
        {
            "train_prefs": Dataset.from_list([pair] * 3),
            "test_prefs": Dataset.from_list([{**pair, "prompt": "fine"}] * 2),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    model_dir = tmp_path / "m"
    tiny_model(vocab=len(make_tokenizer(chat=True))).save_pretrained(model_dir)
    make_tokenizer(chat=True).save_pretrained(model_dir)
    spec = f"hf:{tmp_path / 'ds'}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{name: '{model_dir}'}}\n"
        f"data: {{train: '{spec}', eval: '{spec}', split: train_prefs, eval_split: test_prefs}}\n"
        f"train: {{output_dir: '{tmp_path / 'out'}'}}\n"
    )
    p = prepare(load_config(cfg), convert=False)
    assert (len(p.train), len(p.eval)) == (3, 2)


def test_eval_reads_the_turns_the_run_trained_on(tmp_path: Path, monkeypatch) -> None:
    """A run trained with data.assistant_turns: last is evaluated on its last turns (its deviation m_θ
    counts the tokens it was trained on), not on every assistant turn."""
    from tether.config import from_dict
    from tether.data import Tokenization
    from tether.evaluation.evaluate import evaluate
    from tether.training.job import train

    tok = make_tokenizer(chat=True)
    model_dir = tiny_model_dir(tmp_path / "model", tok=tok)
    msgs = [user("hi"), assistant("hello"), user("how are you"), assistant("fine thanks")]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": msgs}) + "\n" for _ in range(4)))
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(data), "max_length": 64, "assistant_turns": "last"},
        "method": {"name": "sft"},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2, "progress": False},
    }
    train(from_dict(cfg))
    seen = []
    real = Tokenization.tokenize_rows

    def spy(self, *a, **kw):
        seen.append(self.assistant_turns)
        return real(self, *a, **kw)

    monkeypatch.setattr(Tokenization, "tokenize_rows", spy)
    res = evaluate(str(tmp_path / "run"), str(data), metrics="deviation", progress=False, cache=False)
    assert seen and set(seen) == {"last"}
    assert "deviation" in res["metrics"]
