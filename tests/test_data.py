"""Tests for tether.data: reading, validating, rendering, tokenizing, truncating and splitting data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tether.data import (
    Example,
    Row,
    check_rows,
    detect_kind,
    read_rows,
    split_train_eval,
    tokenize_rows,
)
from tether.errors import DataError

WORDS = "hi hello there how are you fine thanks what is two plus answer four the a be brief".split()
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tokenizer(*, chat: bool = False, adds_bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one token per whitespace-separated word, so lengths are predictable."""
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )
    if chat:
        tok.chat_template = TEMPLATE
    return tok


def ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def write_jsonl(path: Path, records: list[object]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def rows_of(*records: dict, file: str = "d.jsonl") -> list[Row]:
    return [Row(file, i, r) for i, r in enumerate(records, start=1)]


def problems_of(err: pytest.ExceptionInfo[DataError]) -> list[str]:
    return [str(p) for p in err.value.problems]


# ------------------------------------------------------------------------------------------------
# read_rows
# ------------------------------------------------------------------------------------------------


def test_read_jsonl_skips_blank_lines_and_numbers_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n   \n{"prompt": "c", "completion": "d"}\n')
    rows = read_rows(str(path))
    assert [(r.line, r.data["prompt"]) for r in rows] == [(1, "a"), (4, "c")]
    assert all(r.file == str(path) for r in rows)


def test_read_json_array_and_json_lines_content(tmp_path: Path) -> None:
    arr = tmp_path / "arr.json"
    arr.write_text(
        json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}], indent=2)
    )
    rows = read_rows(str(arr))
    assert [(r.line, r.data["prompt"]) for r in rows] == [(1, "a"), (2, "c")]

    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    assert [r.line for r in read_rows(str(lines))] == [1, 3]


def test_read_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["a", "c"], "completion": ["b", "d"], "source": ["x", "y"]}), path)
    rows = read_rows(str(path))
    assert [r.line for r in rows] == [1, 2]
    assert rows[1].data == {"prompt": "c", "completion": "d", "source": "y"}


def test_read_hf_save_to_disk_dir_and_local_json(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records = [
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"prompt": "d", "chosen": "e", "rejected": "f"},
    ]
    ds_dir = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(ds_dir))
    rows = read_rows(f"hf:{ds_dir}")
    assert [(r.file, r.line, r.data) for r in rows] == [
        (f"hf:{ds_dir}", 1, records[0]),
        (f"hf:{ds_dir}", 2, records[1]),
    ]

    dd_dir = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(records), "test": datasets.Dataset.from_list(records[:1])}
    ).save_to_disk(str(dd_dir))
    assert len(read_rows(f"hf:{dd_dir}", split="test")) == 1
    with pytest.raises(DataError, match=r"split 'validation' not found \(available: test, train\)"):
        read_rows(f"hf:{dd_dir}", split="validation")

    js = write_jsonl(tmp_path / "local.jsonl", records)
    assert [r.data for r in read_rows(f"hf:{js}")] == records


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        read_rows(str(tmp_path / "missing.jsonl"))
    csv = tmp_path / "data.csv"
    csv.write_text("prompt,completion\n")
    with pytest.raises(DataError, match=r"unknown data file extension '\.csv'"):
        read_rows(str(csv))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError) as err:
        read_rows(str(empty))
    assert problems_of(err) == [f"{empty}: no rows"]
    with pytest.raises(DataError, match="is a directory; to load it with the datasets library use 'hf:"):
        read_rows(str(tmp_path))


def test_read_collects_every_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "a", "completion": "b"}\n'
        '{"prompt": "a" "completion": "b"}\n'
        "[1, 2]\n"
        "\n"
        '{"prompt": "a", "completion": }\n'
    )
    with pytest.raises(DataError) as err:
        read_rows(str(path))
    assert problems_of(err) == [
        f"{path}:2: malformed JSON (Expecting ',' delimiter at column 16)",
        f"{path}:3: not a JSON object (got list)",
        f"{path}:5: malformed JSON (Expecting value at column 31)",
    ]
    assert str(err.value).endswith("(and 2 more problems)")


def test_read_can_collect_malformed_lines_and_keep_good_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "b"}\n{"prompt": "a" "chosen": "b"}\n[1]\n'
        '{"prompt": "c", "chosen": "d", "rejected": "e"}\n'
    )
    found: list = []
    rows = read_rows(str(path), problems=found)
    assert [r.line for r in rows] == [1, 4]
    assert [str(q) for q in found] == [
        f"{path}:2: malformed JSON (Expecting ',' delimiter at column 16)",
        f"{path}:3: not a JSON object (got list)",
    ]
    assert [str(q) for q in check_rows(rows, "pairs")] == [
        f"{path}:1: field 'rejected': chosen and rejected are identical"
    ]
    path.write_text("{oops\n")  # nothing readable: raised even when collecting
    with pytest.raises(DataError):
        read_rows(str(path), problems=[])


def test_read_json_array_errors(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]')
    with pytest.raises(DataError) as err:
        read_rows(str(path))
    assert problems_of(err) == [
        f"{path}:3: malformed JSON (Expecting property name enclosed in double quotes at column 18)"
    ]
    path.write_text('[{"prompt": "a"}, "oops", 3]')
    with pytest.raises(DataError) as err:
        read_rows(str(path))
    assert problems_of(err) == [
        f"{path}:2: record is not a JSON object (got string)",
        f"{path}:3: record is not a JSON object (got number)",
    ]


# ------------------------------------------------------------------------------------------------
# detect_kind
# ------------------------------------------------------------------------------------------------


def test_detect_kind() -> None:
    assert detect_kind(rows_of({"prompt": "a", "chosen": "b", "rejected": "c"})) == "pairs"
    assert detect_kind(rows_of({"prompt": "a", "completion": "b"})) == "sft"
    assert detect_kind(rows_of({"messages": [{"role": "user", "content": "a"}]})) == "sft"
    mixed = rows_of(
        {"prompt": "a", "chosen": "b", "rejected": "c"}, *[{"prompt": "a", "completion": "b"}] * 2
    )
    assert detect_kind(mixed) == "sft"
    with pytest.raises(DataError, match=r"cannot tell the data format.*found fields: text"):
        detect_kind(rows_of({"text": "a"}))


# ------------------------------------------------------------------------------------------------
# tokenize_rows: rendering
# ------------------------------------------------------------------------------------------------


def test_sft_raw_text_appends_eos_and_keeps_meta() -> None:
    tok = make_tokenizer()
    rows = rows_of(
        {"prompt": "what is two plus two", "completion": "four", "source": "math", "tags": ["x"], "n": 3}
    )
    data = tokenize_rows(rows, tok, kind="sft", max_length=64)
    (ex,) = data.examples
    assert ex.prompt_ids == ids(tok, "what is two plus two")
    assert ex.chosen_ids == [*ids(tok, "four"), tok.eos_token_id]
    assert ex.rejected_ids is None
    assert (ex.file, ex.line) == ("d.jsonl", 1)
    assert ex.meta == {"source": "math", "n": 3}  # non-scalar 'tags' is not meta
    assert (data.n_rows, data.n_truncated, data.n_prompt_truncated, data.n_dropped) == (1, 0, 0, 0)


def test_sft_messages_rendered_with_chat_template() -> None:
    tok = make_tokenizer(chat=True)
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine thanks"},
    ]
    (ex,) = tokenize_rows(rows_of({"messages": msgs}), tok, kind="sft", max_length=64).examples
    prompt_text = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert full.startswith(prompt_text)
    assert prompt_text == "<|system|> be brief <|end|> <|user|> how are you <|end|> <|assistant|> "
    assert ex.prompt_ids == ids(tok, prompt_text)
    assert ex.chosen_ids == ids(tok, full[len(prompt_text) :]) == ids(tok, "fine thanks <|end|>")
    assert ex.prompt_ids + ex.chosen_ids == ids(tok, full)


def test_prompt_completion_message_lists_and_auto_template_for_strings() -> None:
    tok = make_tokenizer(chat=True)
    conv = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "hello"}],
    }
    plain = {"prompt": "hi", "completion": "hello"}
    a, b = tokenize_rows(rows_of(conv, plain), tok, kind="sft", max_length=64).examples
    assert a.prompt_ids == b.prompt_ids == ids(tok, "<|user|> hi <|end|> <|assistant|>")
    assert a.chosen_ids == b.chosen_ids == ids(tok, "hello <|end|>")
    # 'never' keeps string rows raw even when the tokenizer has a chat template
    (c,) = tokenize_rows(rows_of(plain), tok, kind="sft", max_length=64, chat_template="never").examples
    assert c.prompt_ids == ids(tok, "hi")
    assert c.chosen_ids == [*ids(tok, "hello"), tok.eos_token_id]


def test_pairs_strings_and_messages() -> None:
    tok = make_tokenizer(chat=True)
    rows = rows_of(
        {"prompt": "what is two plus two", "chosen": "four", "rejected": "two", "source": "s1"},
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello there"}],
            "rejected": [{"role": "assistant", "content": "what"}],
        },
    )
    a, b = tokenize_rows(rows, tok, kind="pairs", max_length=64, chat_template="always").examples
    assert a.prompt_ids == ids(tok, "<|user|> what is two plus two <|end|> <|assistant|>")
    assert a.chosen_ids == ids(tok, "four <|end|>")
    assert a.rejected_ids == ids(tok, "two <|end|>")
    assert a.meta == {"source": "s1"}
    assert b.chosen_ids == ids(tok, "hello there <|end|>")
    assert b.rejected_ids == ids(tok, "what <|end|>")


def test_pairs_implicit_prompt() -> None:
    tok = make_tokenizer(chat=True)
    user = {"role": "user", "content": "hi"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "hello"}],
        "rejected": [user, {"role": "assistant", "content": "what"}],
    }
    (ex,) = tokenize_rows(rows_of(row), tok, kind="pairs", max_length=64).examples
    assert ex.prompt_ids == ids(tok, "<|user|> hi <|end|> <|assistant|>")
    assert ex.chosen_ids == ids(tok, "hello <|end|>")
    assert ex.rejected_ids == ids(tok, "what <|end|>")

    no_shared = {
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    with pytest.raises(DataError) as err:
        tokenize_rows(rows_of(no_shared, {"chosen": "a", "rejected": "b"}), tok, kind="pairs", max_length=64)
    assert problems_of(err) == [
        "d.jsonl:1: field 'prompt': missing, and chosen and rejected share no leading messages to use as the prompt",
        "d.jsonl:2: field 'prompt': missing (a row without 'prompt' must give chosen and rejected as full "
        "conversations, i.e. message lists that start with the same prompt messages)",
    ]


def test_bos_prepended_when_tokenizer_adds_it() -> None:
    tok = make_tokenizer(adds_bos=True)
    assert tok.encode("hi")[0] == tok.bos_token_id
    (ex,) = tokenize_rows(
        rows_of({"prompt": "hi", "completion": "hello"}), tok, kind="sft", max_length=64
    ).examples
    assert ex.prompt_ids == [tok.bos_token_id, *ids(tok, "hi")]
    assert ex.chosen_ids == ids(tok, "hello </s>")
    # not doubled when the text already starts with it
    (ex,) = tokenize_rows(
        rows_of({"prompt": "<s> hi", "completion": "hello"}), tok, kind="sft", max_length=64
    ).examples
    assert ex.prompt_ids == [tok.bos_token_id, *ids(tok, "hi")]
    # and never added by a tokenizer that does not add it
    (ex,) = tokenize_rows(
        rows_of({"prompt": "hi", "completion": "hello"}), make_tokenizer(), kind="sft", max_length=64
    ).examples
    assert ex.prompt_ids == ids(tok, "hi")


# ------------------------------------------------------------------------------------------------
# tokenize_rows: problems
# ------------------------------------------------------------------------------------------------


def test_bad_sft_rows_all_reported_with_file_line_field() -> None:
    tok = make_tokenizer(chat=True)
    rows = rows_of(
        {"prompt": "hi", "completion": "hello"},  # fine
        {"prompt": "hi"},
        {"prompt": "   ", "completion": "hello"},
        {"prompt": 3, "completion": None},
        {"prompt": [1, 2], "completion": "hello"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hello"}]},
        {
            "messages": [
                {"role": "bot", "content": "hi"},
                {"role": "assistant", "content": 5},
                {"content": "x"},
            ]
        },
        {"prompt": "hi", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": "hello"},
        {"messages": [{"role": "assistant", "content": "hello"}]},
        {"messages": "hi"},
        file="train.jsonl",
    )
    with pytest.raises(DataError) as err:
        tokenize_rows(rows, tok, kind="sft", max_length=64)
    assert problems_of(err) == [
        "train.jsonl:2: field 'completion': missing (SFT rows need prompt/completion or messages; this row has only prompt)",
        "train.jsonl:3: field 'prompt': is empty",
        "train.jsonl:4: field 'prompt': must be a non-empty string or a list of {role, content} messages, got number",
        "train.jsonl:4: field 'completion': must be a non-empty string or a list of {role, content} messages, got null",
        "train.jsonl:5: field 'prompt': must be a non-empty string or a list of {role, content} messages, "
        "got a list of number",
        "train.jsonl:6: field 'messages[1].role': the last message must be from the assistant (got 'user')",
        "train.jsonl:7: field 'messages[0].role': 'bot' is not one of system, user, assistant, tool",
        "train.jsonl:7: field 'messages[1].content': must be a string, got number",
        "train.jsonl:7: field 'messages[2].role': missing",
        "train.jsonl:8: field 'completion': method needs prompt/completion (or messages) rows but this row has "
        "prompt/chosen/rejected",
        "train.jsonl:9: field 'completion': is a string but 'prompt' is a message list; use strings or message "
        "lists for both",
        "train.jsonl:10: field 'messages': needs at least one message before the final assistant message",
        "train.jsonl:11: field 'messages': must be a list of {role, content} messages, got string",
    ]
    assert str(err.value).startswith("train.jsonl:2: field 'completion': missing")
    assert str(err.value).endswith("(and 12 more problems)")


def test_bad_pair_rows_all_reported() -> None:
    tok = make_tokenizer()
    rows = rows_of(
        {"prompt": "hi", "chosen": "hello", "rejected": "hello"},
        {"prompt": "hi", "completion": "hello"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"prompt": "hi", "chosen": "hello"},
        {"prompt": "hi", "chosen": "", "rejected": ["a"]},
        {"prompt": "hi", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]},
        {"prompt": "hi", "chosen": "hello", "rejected": "there"},  # fine
        {"prompt": "a a a a a a a a", "chosen": "hello", "rejected": "there"},  # too long
        {"prompt": "hi", "chosen": "hello", "rejected": "hello"},
    )
    with pytest.raises(DataError) as err:
        tokenize_rows(rows, tok, kind="pairs", max_length=8)
    assert problems_of(err)[-2:] == [
        "d.jsonl:8: field 'prompt': prompt is 8 tokens, longer than max_length=8 allows (at least one response "
        "token must fit); raise max_length, set max_prompt_length, or set drop_long_prompts",
        "d.jsonl:9: field 'rejected': chosen and rejected are identical",
    ]
    assert problems_of(err)[:-2] == [
        "d.jsonl:1: field 'rejected': chosen and rejected are identical",
        "d.jsonl:2: field 'chosen': method needs preference pairs (prompt/chosen/rejected) but this row has "
        "prompt/completion",
        "d.jsonl:3: field 'chosen': method needs preference pairs (prompt/chosen/rejected) but this row has messages",
        "d.jsonl:4: field 'rejected': missing (preference rows need prompt/chosen/rejected)",
        "d.jsonl:5: field 'chosen': is empty",
        "d.jsonl:5: field 'rejected': must be a non-empty string or a list of {role, content} messages, "
        "got a list of string",
        "d.jsonl:6: field 'rejected': is a message list but 'prompt' is a string; use strings or message lists for both",
    ]


def test_conversational_rows_need_a_chat_template() -> None:
    tok = make_tokenizer()  # no chat template
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    with pytest.raises(DataError) as err:
        tokenize_rows(
            rows_of({"prompt": "hi", "completion": "a"}, conv, conv, {"prompt": 1}),
            tok,
            kind="sft",
            max_length=64,
        )
    assert problems_of(err) == [
        "d.jsonl: tokenizer has no chat template; conversational rows need one (first at line 2)",
        "d.jsonl:4: field 'completion': missing (SFT rows need prompt/completion or messages; this row has only prompt)",
    ]
    with pytest.raises(DataError, match="chat_template='always' but the tokenizer has no chat template"):
        tokenize_rows(
            rows_of({"prompt": "hi", "completion": "a"}),
            tok,
            kind="sft",
            max_length=64,
            chat_template="always",
        )


def test_template_that_does_not_extend_prompt() -> None:
    tok = make_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> <|end|> {% endif %}"
    )
    with pytest.raises(DataError) as err:
        tokenize_rows(
            rows_of({"prompt": "hi", "chosen": "a", "rejected": "b"}), tok, kind="pairs", max_length=64
        )
    assert [(p.line, p.field) for p in err.value.problems] == [(1, "chosen"), (1, "rejected")]
    assert "chat template does not extend the prompt" in str(err.value)


def test_template_exception_is_a_row_problem() -> None:
    tok = make_tokenizer()
    tok.chat_template = (
        "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}x"
    )
    rows = rows_of({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]})
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: field 'messages': chat template failed: no system role"
    ):
        tokenize_rows(rows, tok, kind="sft", max_length=64)


# ------------------------------------------------------------------------------------------------
# tokenize_rows: truncation
# ------------------------------------------------------------------------------------------------


def test_truncation_counts() -> None:
    tok = make_tokenizer()
    rows = rows_of(
        {"prompt": "a a a a a a", "completion": "hi"},  # prompt cut to 4, response fits
        {"prompt": "hi", "completion": "the the the the the the the the"},  # response cut
        {"prompt": "hi", "completion": "hello"},  # untouched
    )
    data = tokenize_rows(rows, tok, kind="sft", max_length=6, max_prompt_length=4)
    a, b, c = data.examples
    assert a.prompt_ids == ids(tok, "a a a a") and a.chosen_ids == ids(tok, "hi </s>")
    assert b.prompt_ids == ids(tok, "hi") and b.chosen_ids == ids(tok, "the the the the the")
    assert c.chosen_ids == ids(tok, "hello </s>")
    assert (data.n_rows, data.n_truncated, data.n_prompt_truncated, data.n_dropped) == (3, 1, 1, 0)
    assert all(len(e.prompt_ids) + len(e.chosen_ids) <= 6 for e in data.examples)


def test_prompt_truncation_keeps_last_tokens() -> None:
    tok = make_tokenizer()
    (ex,) = tokenize_rows(
        rows_of({"prompt": "what is two plus two", "completion": "four"}),
        tok,
        kind="sft",
        max_length=10,
        max_prompt_length=2,
    ).examples
    assert ex.prompt_ids == ids(tok, "plus two")


def test_pairs_truncated_independently() -> None:
    tok = make_tokenizer()
    rows = rows_of({"prompt": "hi", "chosen": "a a a a a b", "rejected": "a a a a a c"})
    data = tokenize_rows(rows, tok, kind="pairs", max_length=4)
    (ex,) = data.examples
    assert ex.chosen_ids == ex.rejected_ids == ids(tok, "a a a")
    assert data.n_truncated == 1


def test_long_prompt_is_a_problem_or_dropped() -> None:
    tok = make_tokenizer()
    rows = rows_of(
        {"prompt": "a a a a", "completion": "hi"},  # 4 + 1 > 4: no room
        {"prompt": "a a a", "completion": "hi hi"},  # exactly one response token fits
        {"prompt": "a a a a a", "completion": "hi", "source": "x"},
    )
    with pytest.raises(DataError) as err:
        tokenize_rows(rows, tok, kind="sft", max_length=4)
    assert [str(p).split(" allows")[0] for p in err.value.problems] == [
        "d.jsonl:1: field 'prompt': prompt is 4 tokens, longer than max_length=4",
        "d.jsonl:3: field 'prompt': prompt is 5 tokens, longer than max_length=4",
    ]
    data = tokenize_rows(rows, tok, kind="sft", max_length=4, drop_long_prompts=True)
    assert [e.line for e in data.examples] == [2]
    assert data.examples[0].chosen_ids == ids(tok, "hi")
    assert (data.n_rows, data.n_truncated, data.n_prompt_truncated, data.n_dropped) == (3, 1, 0, 2)


def test_bad_arguments() -> None:
    from tether.errors import ConfigError

    tok = make_tokenizer()
    rows = rows_of({"prompt": "hi", "completion": "a"})
    with pytest.raises(ConfigError):
        tokenize_rows(rows, tok, kind="sft", max_length=1)
    with pytest.raises(ConfigError):
        tokenize_rows(rows, tok, kind="dpo", max_length=8)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        tokenize_rows(rows, tok, kind="sft", max_length=8, chat_template="yes")  # type: ignore[arg-type]


def test_prompts_alone_are_tokenized_as_a_rows_prompt() -> None:
    """``tokenize_prompts`` (what ``tether generate`` feeds the model) gives the prompt ids that
    ``tokenize_rows`` gives the same prompt in a row, with the template, BOS and prompt cut applied."""
    from tether.data import Tokenization

    tok = make_tokenizer(chat=True, adds_bos=True)
    prompts = [
        "what is two plus two",
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ]
    rows = rows_of(
        {"prompt": prompts[0], "completion": "four"},
        {"prompt": prompts[1], "completion": [{"role": "assistant", "content": "hello"}]},
    )
    for template in ("auto", "never"):
        for cut in (None, 3):
            settings = Tokenization(16, cut, template, False, "all")
            if template == "never":  # raw text takes string prompts only
                want = [
                    tokenize_rows(
                        rows[:1],
                        tok,
                        kind="sft",
                        max_length=16,
                        max_prompt_length=cut,
                        chat_template=template,
                    )
                    .examples[0]
                    .prompt_ids
                ]
                assert settings.tokenize_prompts(prompts[:1], tok) == want
                continue
            want = [e.prompt_ids for e in settings.tokenize_rows(rows, tok, kind="sft").examples]
            assert settings.tokenize_prompts(prompts, tok) == want
    with pytest.raises(DataError) as err:
        Tokenization(4, None, "never", True, "all").tokenize_prompts(["hi", "a a a a", ""], tok)
    assert [str(p).split(" allows")[0] for p in err.value.problems] == [
        "prompt:2: field 'prompt': prompt is 5 tokens, longer than max_length=4",
        "prompt:3: field 'prompt': is empty",
    ]


def test_one_tokenization_default() -> None:
    """Training, evaluation and generation take their settings from ``DataConfig.tokenization()``: a plain
    model (no run config) gets the config's defaults."""
    from tether.config import DataConfig
    from tether.data import Tokenization
    from tether.errors import ConfigError

    assert DataConfig().tokenization() == Tokenization(512, None, "auto", False, "all")
    d = DataConfig(max_length=64, max_prompt_length=8, chat_template="never", drop_long_prompts=True)
    assert d.tokenization() == Tokenization(64, 8, "never", True, "all")
    with pytest.raises(ConfigError, match="max_prompt_length must be a positive integer"):
        Tokenization(64, 0, "auto", False, "all")


# ------------------------------------------------------------------------------------------------
# split_train_eval
# ------------------------------------------------------------------------------------------------


def _examples(n: int, n_prompts: int) -> list[Example]:
    return [Example([i % n_prompts], [100 + i], None, "d.jsonl", i + 1, {}) for i in range(n)]


def test_split_deterministic_and_no_shared_prompts() -> None:
    examples = _examples(100, 30)
    train, evals = split_train_eval(examples, 0.2, seed=1)
    assert split_train_eval(examples, 0.2, seed=1) == (train, evals)
    assert len(train) + len(evals) == 100
    assert 15 <= len(evals) <= 25
    assert not {tuple(e.prompt_ids) for e in train} & {tuple(e.prompt_ids) for e in evals}
    assert [e.line for e in train] == sorted(e.line for e in train)  # input order kept
    assert split_train_eval(examples, 0.2, seed=2) != (train, evals)


def test_split_edge_cases() -> None:
    examples = _examples(10, 10)
    assert split_train_eval(examples, 0.0, seed=0) == (examples, [])
    train, evals = split_train_eval(examples, 0.01, seed=0)
    assert (len(train), len(evals)) == (9, 1)
    same_prompt = _examples(5, 1)
    assert split_train_eval(same_prompt, 0.5, seed=0) == (same_prompt, [])
    from tether.errors import ConfigError

    with pytest.raises(ConfigError):
        split_train_eval(examples, 1.0, seed=0)


def test_split_pairs_and_mismatched_completions() -> None:
    """A pair → (chosen, desirable), (rejected, undesirable). Each row's mismatched completion is the next
    row's (cyclically) whose prompt differs, cut to fit max_length after this row's prompt; the same for
    the same order; a seeded shuffle is the same for the same seed."""
    from tether.data import Example, shuffled, split_pairs, with_mismatched_completions

    pairs = [
        Example([1, p], [10 + i] * (i + 1), [20 + i], "f", i + 1, {"k": i})
        for i, p in enumerate([5, 5, 6, 7])
    ]
    rows = split_pairs(pairs)
    assert [(e.chosen_ids, e.label, e.line) for e in rows[:2]] == [([10], True, 1), ([20], False, 1)]
    assert all(e.rejected_ids is None and e.meta == {"k": e.line - 1} for e in rows)
    kl = with_mismatched_completions(rows, max_length=4)
    # rows 0-3 share prompt [1, 5]: the next row with another prompt is row 4 (prompt [1, 6]: [12, 12, 12]);
    # rows 4-5 go to row 6 ([13] * 4), rows 6-7 (prompt [1, 7]) wrap around to row 0; all cut to 4 - 2 tokens
    assert [e.rejected_ids for e in kl] == [[12, 12]] * 4 + [[13, 13], [13, 13], [10], [10]]
    assert [e.chosen_ids for e in kl] == [e.chosen_ids for e in rows] and [e.label for e in kl] == [
        e.label for e in rows
    ]
    assert all(len(e.prompt_ids) + len(e.rejected_ids) <= 4 for e in kl)
    assert with_mismatched_completions(rows, max_length=4) == kl
    one_prompt = [Example([1], [10 + i], None, "f", i, {}, True) for i in range(3)]
    assert [e.rejected_ids for e in with_mismatched_completions(one_prompt, 8)] == [[11], [12], [10]]
    assert shuffled(rows, 3) == shuffled(rows, 3) != rows and sorted(map(repr, shuffled(rows, 3))) == sorted(
        map(repr, rows)
    )
    with pytest.raises(ValueError, match="without a rejected"):
        split_pairs(rows)
