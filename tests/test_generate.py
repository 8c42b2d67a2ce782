"""``tether generate``: the chat template applied as training renders a prompt, greedy output equal to the
generation engine's, prompts from a file, bad input one line."""

from __future__ import annotations

import json

import tether.engine.models as models
from tether.cli import main as cli_main
from tether.evaluation.generation import decode, eos_ids, generate
from tether.evaluation.sample import generate_texts

from tiny import tiny_model_dir, tiny_tokenizer


def test_generate_applies_the_chat_template(tmp_path, capsys):
    model = tiny_model_dir(tmp_path / "model")
    res = generate_texts(str(model), ["what is 2+2?"], max_new_tokens=5, progress=False)
    out = res["outputs"][0]
    # the template's generation prompt (the char tokenizer decodes with spaces between characters)
    assert out["rendered"].startswith("<|user|>") and out["rendered"].endswith("<|assistant|>")
    tok = tiny_tokenizer()
    ids = tok("<|user|>what is 2+2?<|assistant|>", add_special_tokens=False)["input_ids"]
    lm = models.load_model(model).eval()
    want = decode(tok, generate(lm, tok, [ids], max_new_tokens=5, progress=False)[0][0].ids, eos_ids(lm, tok))
    assert out["generations"] == [want]
    (tmp_path / "p.txt").write_text("what is 2+2?\n\nhi\n")
    capsys.readouterr()
    code = cli_main(
        [
            "generate",
            str(model),
            "--file",
            str(tmp_path / "p.txt"),
            "--max-new-tokens",
            "5",
            "--temperature",
            "1",
            "--num-samples",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert code == 0 and "### prompt 2: hi" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(len(x["generations"]) == 2 for x in lines)
    assert cli_main(["generate", str(model), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: no prompt given (--prompt TEXT or --file FILE)"
    ]
