"""``method: reward``, a Bradley–Terry reward model: the loss against hand-derived values and against TRL
1.16's ``RewardTrainer.compute_loss`` on the same model and rows (values and gradients), the score taken
at each row's last non-padding token; a tiny run trains, logs accuracy and margin, resumes, saves a
``final/`` that plain transformers loads as a sequence-classification model (LoRA too), is evaluated by
``tether eval RUN --data PAIRS`` and judges another model's generations as ``--judge RUN``."""

from __future__ import annotations

import collections
import json
import math
import types
import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

import tether.engine.models as models
from tether.cli import main as cli_main
from tether.config import from_dict
from tether.contract import LossInputs, Scores
from tether.data import read_rows, tokenize_rows
from tether.engine.logprobs import collate
from tether.engine.scores import ScoreModel, init_score_head, row_values, score_inputs, score_table
from tether.methods import losses
from tether.methods.registry import METHODS
from tether.training.job import train

from tiny import pair_rows, tiny_config, write_jsonl

F64 = torch.float64
METHOD = METHODS["reward"]


def _inputs(chosen, rejected, margin=None, grad=True) -> LossInputs:
    c = torch.tensor(chosen, dtype=F64, requires_grad=grad)
    r = torch.tensor(rejected, dtype=F64, requires_grad=grad)
    values = None if margin is None else {"margin": torch.tensor(margin, dtype=F64)}
    return LossInputs(scores=Scores(c, r), row_values=values)


# ==================================================================================================
# The loss: hand-derived values
# ==================================================================================================


def test_reward_loss_hand_derived_values_and_gradients():
    """ℓ = −log σ(Δ − m) + c·(r_c + r_r)² = log(1 + e^{−(Δ−m)}) + c·s², Δ = r_c − r_r, s = r_c + r_r.

    Pairs (r_c, r_r, m): (1, 0, none) → Δ−m = 1: log(1 + e^{−1}) = 0.313261687518;
    (0, 0, 0.5) → −0.5: log(1 + e^{0.5}) = 0.974076984180; (−0.5, 0.5, none) → −1: log(1 + e) =
    1.313261687518. With c = 0.1 add 0.1·(1, 0, 0). Gradients: ∂ℓ/∂r_c = −σ(−(Δ−m)) + 2c·s,
    ∂ℓ/∂r_r = σ(−(Δ−m)) + 2c·s; σ(−1) = 0.268941421370, σ(0.5) = 0.622459331202, σ(1) = 0.731058578630.
    A row without a margin (NaN) has margin 0."""
    nan = math.nan
    for c, extra, ds in [(0.0, [0, 0, 0], [0, 0, 0]), (0.1, [0.1, 0, 0], [0.2, 0, 0])]:
        inp = _inputs([1.0, 0.0, -0.5], [0.0, 0.0, 0.5], [nan, 0.5, nan])
        out = losses.reward(inp, center_rewards_coefficient=c)
        want = [0.313261687518 + extra[0], 0.974076984180, 1.313261687518]
        torch.testing.assert_close(out.losses, torch.tensor(want, dtype=F64), atol=1e-10, rtol=0)
        gc, gr = torch.autograd.grad(out.losses.sum(), [inp.scores.chosen, inp.scores.rejected])
        sig = torch.tensor([0.268941421370, 0.622459331202, 0.731058578630], dtype=F64)
        torch.testing.assert_close(gc, -sig + torch.tensor(ds, dtype=F64), atol=1e-10, rtol=0)
        torch.testing.assert_close(gr, sig + torch.tensor(ds, dtype=F64), atol=1e-10, rtol=0)
        assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]  # a tie is not a win
        assert out.metrics["rewards/margins"].tolist() == [1.0, 0.0, -1.0]


def test_no_margin_field_is_margin_zero_and_registry_declares_the_head():
    a = losses.reward(_inputs([0.3], [-0.2]), center_rewards_coefficient=0.0).losses
    b = losses.reward(_inputs([0.3], [-0.2], [0.0]), center_rewards_coefficient=0.0).losses
    assert torch.equal(a, b)
    assert METHOD.head == "score" and METHOD.row_values == ("margin",) and not METHOD.uses_reference
    assert METHOD.defaults == {"center_rewards_coefficient": 0.0}
    assert all(m.head == "lm" for name, m in METHODS.items() if name != "reward")
    with pytest.raises(ValueError, match="scores"):  # log-probs are not a score head's input
        losses.reward(LossInputs(), center_rewards_coefficient=0.0)


# ==================================================================================================
# TRL 1.16 as oracle: RewardTrainer.compute_loss on the same model and rows
# ==================================================================================================


def _seqcls(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    cfg = tiny_config(num_labels=1)
    return LlamaForSequenceClassification(cfg).double().train()


def _examples():
    """Pairs of different lengths (padding in both halves); the last chosen row ends in the EOS."""
    ex = [
        ([5, 6, 7], [8, 9], [10]),
        ([11, 12], [13, 14, 15, 16], [17, 18]),
        ([19], [20], [21, 22, 23, 24, 25]),
        ([26, 27, 28, 29], [30, 2], [31, 32, 33]),
    ]
    return [types.SimpleNamespace(prompt_ids=p, chosen_ids=c, rejected_ids=r, meta={}) for p, c, r in ex]


def _trl_loss(model, examples, coefficient, margin):
    """TRL 1.16's ``RewardTrainer.compute_loss``, the real method bound to a namespace with the attributes it
    reads, on its own ``DataCollatorForPreference`` batch of the same rows (prompt + answer, as TRL's
    dataset preparation concatenates them). Returns (mean loss, TRL's logged metrics)."""
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"oracle written against TRL 1.16, found {trl.__version__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.trainer.reward_trainer import DataCollatorForPreference, RewardTrainer
    rows = [
        {"chosen_ids": e.prompt_ids + e.chosen_ids, "rejected_ids": e.prompt_ids + e.rejected_ids}
        for e in examples
    ]
    if margin is not None:
        for r, m in zip(rows, margin, strict=True):
            r["margin"] = m
    inputs = DataCollatorForPreference(pad_token_id=0)(rows)
    if "margin" in inputs:
        inputs["margin"] = inputs["margin"].double()
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(center_rewards_coefficient=coefficient),
        accelerator=types.SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    loss = RewardTrainer.compute_loss(trainer, model, inputs)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("coefficient, margin", [(None, None), (0.01, None), (0.5, [0.5, -1.0, 0.0, 2.0])])
def test_reward_loss_and_gradients_equal_trl(coefficient, margin):
    """Same model, same rows: TRL's batch loss equals the mean of tether's per-pair losses, and so do the
    gradients of every model parameter (the score head included); TRL's accuracy and margin too. TRL's
    None coefficient (no centering) is tether's 0."""
    model, examples = _seqcls(), _examples()
    if margin is not None:
        for e, m in zip(examples, margin, strict=True):
            e.meta["margin"] = m
    trl_loss, trl_metrics = _trl_loss(model, examples, coefficient, margin)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    idx = list(range(len(examples)))
    batch = collate(examples, idx, 0)  # the trainer's padded layout: chosen rows, then rejected rows
    rows = ScoreModel(model, 0)(batch)
    values = row_values(examples, idx, METHOD.row_values)
    values = {k: v.double() for k, v in values.items()}
    hp = METHOD.hparams({"center_rewards_coefficient": coefficient or 0.0})
    out = METHOD(score_inputs(rows, batch, values), hp)
    out.losses.mean().backward()
    torch.testing.assert_close(out.losses.mean(), trl_loss, atol=1e-12, rtol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, trl_grads[n], atol=1e-12, rtol=1e-10, msg=n)
    assert model.score.weight.grad.abs().sum() > 0
    assert out.mean("rewards/accuracies").item() == pytest.approx(trl_metrics["accuracy"], abs=1e-12)
    assert out.mean("rewards/margins").item() == pytest.approx(
        trl_metrics["margin"], abs=1e-6
    )  # metrics are fp32


def test_score_is_the_models_own_output_at_the_last_non_padding_token():
    """Each row's score is what plain transformers gives for the row alone (no padding)."""
    model, examples = _seqcls().eval(), _examples()
    batch = collate(examples, range(4), 0)
    with torch.no_grad():
        got = ScoreModel(model, 0)(batch).score
        for i, e in enumerate(examples):
            for j, ans in enumerate((e.chosen_ids, e.rejected_ids)):
                alone = model(input_ids=torch.tensor([e.prompt_ids + ans])).logits[0, 0]
                torch.testing.assert_close(got[i + 4 * j], alone, atol=1e-10, rtol=1e-10)
        half = ScoreModel(_seqcls().to(torch.bfloat16), 0)(batch).score
    assert got.dtype == F64 and half.dtype == torch.float32  # the loss in at least fp32


def test_score_when_the_pad_token_is_the_eos_and_rows_end_in_it():
    """SmolLM2's case (pad = EOS): a row ending in EOS is pooled where transformers pools it in any batch,
    at its last token that is not the pad token, i.e. the row alone with its trailing EOS tokens dropped
    (not at the last position of the attention mask)."""
    eos = 2
    model = _seqcls().eval()
    ends = [[eos], [eos, eos], [], [eos]]
    examples = [
        types.SimpleNamespace(
            prompt_ids=e.prompt_ids,
            chosen_ids=e.chosen_ids + tail,
            rejected_ids=e.rejected_ids + tail,
            meta={},
        )
        for e, tail in zip(_examples(), ends, strict=True)
    ]
    batch = collate(examples, range(4), eos)
    with torch.no_grad():
        got = ScoreModel(model, eos)(batch).score
        for i, e in enumerate(examples):
            for j, ans in enumerate((e.chosen_ids, e.rejected_ids)):
                ids = e.prompt_ids + ans
                while ids[-1] == eos:
                    ids = ids[:-1]
                alone = model(input_ids=torch.tensor([ids])).logits[0, 0]
                torch.testing.assert_close(got[i + 4 * j], alone, atol=1e-10, rtol=1e-10)
                if ans[-1] == eos:  # pooling at the last attended position (the EOS) would differ
                    model.config.pad_token_id = 0  # a token no row holds: the row's last token is pooled
                    at_mask_end = model(input_ids=torch.tensor([e.prompt_ids + ans])).logits[0, 0]
                    model.config.pad_token_id = eos
                    assert not torch.allclose(got[i + 4 * j], at_mask_end)


def test_score_head_is_drawn_from_the_seed_alone():
    a, b, c = _seqcls(0), _seqcls(1), _seqcls(2)
    init_score_head(a, 7)
    torch.manual_seed(123)  # the global RNG plays no part
    init_score_head(b, 7)
    init_score_head(c, 8)
    assert torch.equal(a.score.weight, b.score.weight)
    assert not torch.equal(a.score.weight, c.score.weight)
    assert a.score.weight.std().item() == pytest.approx(0.02, rel=0.2)


# ==================================================================================================
# Runs: training, resume, final/ in plain transformers, LoRA, tether eval, --judge
# ==================================================================================================

PAIRS = 16


def _config(root, model, pairs, name, lora=None, **extra):
    model_cfg = {"name": str(model), **({"lora": lora} if lora else {})}
    return from_dict(
        {
            "model": model_cfg,
            "data": {"train": str(pairs), "max_length": 64},
            "method": {"name": "reward", **extra.pop("method", {})},
            "train": {
                "output_dir": str(root / "runs" / name),
                "batch_size": 2,
                "max_steps": 4,
                "lr": 1e-2,
                "scheduler": "constant",
                "progress": False,
                **extra,
            },
        }
    )


@pytest.fixture(scope="module")
def rm_run(setup):
    """A tiny trained reward run (with margins on some rows) and its directory."""
    root, model, _ = setup
    rows = pair_rows(PAIRS)
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["margin"] = 0.5
    pairs = write_jsonl(root / "margin_pairs.jsonl", rows)
    result = train(_config(root, model, pairs, "rm", save_every=2, eval_every=2, **{"seed": 3}))
    return result, pairs


def test_a_reward_run_trains_logs_accuracy_and_margin(setup, rm_run):
    result, _ = rm_run
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4]
    for r in train_lines:
        assert 0.0 <= r["rewards/accuracies"] <= 1.0 and math.isfinite(r["rewards/margins"])
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["reference_mode"] == "none"


def test_final_loads_in_plain_transformers_with_the_runs_scores(setup, rm_run):
    """``final/`` is a one-output ``AutoModelForSequenceClassification`` whose pad token is the one rows
    are padded with; its scores are those of the trained run (the score head trained too)."""
    _root, model, _ = setup
    result, pairs = rm_run
    final = result.final_model_dir
    rm = AutoModelForSequenceClassification.from_pretrained(str(final)).eval()
    assert rm.config.num_labels == 1 and rm.config.architectures == ["LlamaForSequenceClassification"]
    tok = models.load_tokenizer(final)
    assert rm.config.pad_token_id == tok.pad_token_id
    start = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=1)
    init_score_head(start, 3)
    assert not torch.equal(start.score.weight, rm.score.weight)  # trained from the seeded head
    ex = tokenize_rows(read_rows(str(pairs)), tok, kind="pairs", max_length=64).examples
    table = score_table(
        rm, ex[:4], batch_size=3, pad_id=tok.pad_token_id, device=torch.device("cpu"), progress=False
    )
    with torch.no_grad():
        alone = rm(input_ids=torch.tensor([ex[1].prompt_ids + ex[1].rejected_ids])).logits[0, 0]
    assert table[1, 1].item() == pytest.approx(alone.item(), abs=1e-5)


def _card_model(final):
    """The model that the ``How to load`` snippet of ``final/README.md`` loads (the snippet run as written)."""
    code = (final / "README.md").read_text().split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(code, scope)
    return scope["model"].eval()


def test_the_model_card_loads_it_as_a_sequence_classifier(rm_run):
    result, _ = rm_run
    card = (result.final_model_dir / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    model = _card_model(result.final_model_dir)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1


def test_resume_equals_an_uninterrupted_run(setup, rm_run):
    """A run stopped after its step-2 checkpoint and resumed ends with the uninterrupted run's weights."""
    root, model, _ = setup
    result, pairs = rm_run
    run_dir = root / "runs" / "rm_resumed"
    cfg = _config(root, model, pairs, "rm_resumed", save_every=2, eval_every=2, max_steps=2, seed=3)
    train(cfg)
    resumed = train(
        _config(root, model, pairs, "rm_resumed", save_every=2, eval_every=2, resume=True, seed=3)
    )
    assert resumed.resumed_from_step == 2 and resumed.run_dir == run_dir
    a = load_file(str(result.final_model_dir / "model.safetensors"))
    b = load_file(str(resumed.final_model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and "score.weight" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_lora_reward_run_trains_the_score_head_in_full_and_loads(setup):
    """LoRA: peft's SEQ_CLS task, the score head trained in full (``modules_to_save``); ``final/`` is the
    adapter (loadable on the base as a sequence-classification model) and ``final/merged`` a plain model
    with the same scores; ``tether eval`` and ``--judge`` read the adapter run too."""
    from peft import PeftModel

    root, model, pairs = setup
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cfg = _config(root, model, pairs, "rm_lora", lora=lora, save_merged=True)
    result = train(cfg)
    final = result.final_model_dir
    adapter_cfg = json.loads((final / "adapter_config.json").read_text())
    assert adapter_cfg["task_type"] == "SEQ_CLS" and "score" in adapter_cfg["modules_to_save"]
    base = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=1)
    init_score_head(base, cfg.train.seed)  # the head the run started from
    start_head = base.score.weight.detach().clone()
    base.config.pad_token_id = 0
    peft_model = PeftModel.from_pretrained(base, str(final)).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(str(final / "merged")).eval()
    assert not torch.equal(merged.score.weight, start_head)  # trained in full, not through LoRA
    assert not torch.equal(
        peft_model.base_model.model.model.layers[0].self_attn.q_proj.weight,
        merged.model.layers[0].self_attn.q_proj.weight,
    )
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a, b = peft_model(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the card's snippet (AutoPeftModelForSequenceClassification) loads it too
        torch.testing.assert_close(_card_model(final)(input_ids=ids).logits, b, atol=1e-5, rtol=1e-5)
    (final / "merged" / "model.safetensors").unlink()  # the adapter alone: the base + adapter merged
    res = cli_main(
        ["eval", str(result.run_dir), "--data", str(pairs), "--no-progress", "--out", str(root / "l.json")]
    )
    assert res == 0
    metrics = json.loads((root / "l.json").read_text())["metrics"]
    assert set(metrics) >= {"reward/accuracy", "reward/margin"}


def test_tether_eval_of_a_reward_run_reports_held_out_pairwise_accuracy(setup, rm_run, capsys, tmp_path):
    """``tether eval RM_RUN --data PAIRS``: the reward group only (no reference, no generation), its accuracy
    and mean margin equal the values computed here from the final model's scores."""
    _root, _model, _ = setup
    result, pairs = rm_run
    out = tmp_path / "eval.json"
    code = cli_main(["eval", str(result.run_dir), "--data", str(pairs), "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert got["metric_groups"] == ["reward"] and got["reference_is_model"]
    rm = AutoModelForSequenceClassification.from_pretrained(str(result.final_model_dir)).eval()
    tok = models.load_tokenizer(result.final_model_dir)
    ex = tokenize_rows(read_rows(str(pairs)), tok, kind="pairs", max_length=64).examples
    with torch.no_grad():
        r = [
            [
                rm(input_ids=torch.tensor([e.prompt_ids + a])).logits[0, 0].item()
                for a in (e.chosen_ids, e.rejected_ids)
            ]
            for e in ex
        ]
    acc = sum(c > w for c, w in r) / len(r)
    margin = sum(c - w for c, w in r) / len(r)
    assert got["metrics"]["reward/accuracy"] == pytest.approx(acc, abs=1e-9)
    assert got["metrics"]["reward/margin"] == pytest.approx(margin, abs=1e-5)
    capsys.readouterr()
    code = cli_main(
        ["eval", str(result.run_dir), "--data", str(pairs), "--metrics", "pairwise", "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "evaluates a causal LM, but the model is a reward model" in err[0]


def test_tether_pairs_takes_a_reward_run_as_judge(setup, rm_run, capsys, tmp_path):
    """``tether pairs MODEL --judge RM_RUN``: the run is the judge (its scores in each row's provenance are
    the run's final model's), and the meta records its weights' fingerprint."""
    _root, model, pairs = setup
    result, _ = rm_run
    out = tmp_path / "onpolicy.jsonl"
    args = ["pairs", str(model), "--prompts", str(pairs), "--judge", str(result.run_dir), "--samples", "3"]
    code = cli_main([*args, "--max-new-tokens", "3", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    from tether.evaluation.judge import judge_fingerprint, load_judge, score

    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["judge_weights"] == judge_fingerprint(str(result.run_dir))
    judge = load_judge(str(result.run_dir), torch.device("cpu"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows, meta["counts"]
    r = rows[0]
    want = score(judge, [r["prompt"]] * 3, r["provenance"]["samples"], desc="x")
    assert r["provenance"]["scores"] == pytest.approx(want, abs=1e-5)


def test_a_reward_run_judges_generations(setup, rm_run, capsys, tmp_path, monkeypatch):
    """``tether eval MODEL --judge RM_RUN``: the run resolves to its final model, whose scores the judge
    gives; a run of another method is one line, exit 2, nothing written."""
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    _root, model, pairs = setup
    result, _ = rm_run
    out = tmp_path / "e.json"
    args = ["eval", str(model), "--data", str(pairs), "--max-new-tokens", "3", "--max-samples", "3"]
    code = cli_main([*args, "--judge", str(result.run_dir), "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert got["judge"] == str(result.run_dir) and got["metrics"]["judge/reward"] is not None
    from tether.evaluation.judge import load_judge, score

    judge = load_judge(str(result.run_dir), torch.device("cpu"))
    s = got["samples"][0]
    want = score(judge, [s["prompt"]], [s["model"]], desc="x")[0]
    assert s["reward"][0] == pytest.approx(want, abs=1e-5)

    sft = train(
        from_dict(
            {
                "model": {"name": str(model)},
                "data": {
                    "train": str(
                        write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}] * 4)
                    )
                },
                "method": {"name": "sft"},
                "train": {
                    "output_dir": str(tmp_path / "sft"),
                    "batch_size": 2,
                    "max_steps": 1,
                    "progress": False,
                },
            }
        )
    )
    bad = tmp_path / "bad.json"
    capsys.readouterr()
    code = cli_main([*args, "--judge", str(sft.run_dir), "--no-progress", "--out", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a run of method 'sft', not a reward model" in err[0], err
    assert not bad.exists()


@pytest.mark.parametrize("margin", ["big", 10**400, True])
def test_bad_margin_is_one_line_exit_2_before_weights_load(setup, tmp_path, capsys, margin):
    _root, model, _ = setup
    rows = pair_rows(4)
    rows[2]["margin"] = margin
    pairs = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{name: {model}}}\ndata: {{train: {pairs}}}\nmethod: {{name: reward}}\n"
        f"train: {{output_dir: {tmp_path / 'out'}, max_steps: 1, progress: false}}\n"
    )
    capsys.readouterr()
    code = cli_main(["train", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{pairs}:3: field 'margin': must be a finite number" in err[0]
    assert not (tmp_path / "out" / "final").exists()


def test_checkpoints_of_a_reward_run_evaluate_and_it_does_not_generate(rm_run, capsys, tmp_path):
    """``tether eval RM_RUN --checkpoints all``: the step-2 checkpoint is loaded as the score model it
    trained (every tensor of it, else one line) and scores differently from the final model; ``tether
    generate RM_RUN`` is one line, exit 2."""
    result, pairs = rm_run
    out = tmp_path / "c.json"
    code = cli_main(
        [
            "eval",
            str(result.run_dir),
            "--data",
            str(pairs),
            "--checkpoints",
            "all",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(set(r["metrics"]) >= {"reward/accuracy", "reward/margin"} for r in rows)
    assert rows[0]["metrics"]["reward/margin"] != rows[1]["metrics"]["reward/margin"]
    capsys.readouterr()
    code = cli_main(["generate", str(result.run_dir), "--prompt", "hi", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a reward model (a score head) scores text" in err[0], err


def test_a_sequence_classification_directory_is_evaluated_as_a_reward_model(setup, capsys, tmp_path):
    """A plain one-output classifier directory (no run) gets the ``reward`` group; SFT rows are one line."""
    from tiny import tiny_tokenizer

    _, _, pairs = setup
    rm_dir = tmp_path / "rm"
    _seqcls().float().save_pretrained(rm_dir)
    tiny_tokenizer().save_pretrained(rm_dir)
    out = tmp_path / "e.json"
    assert cli_main(["eval", str(rm_dir), "--data", str(pairs), "--no-progress", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metric_groups"] == ["reward"]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    capsys.readouterr()
    code = cli_main(["eval", str(rm_dir), "--data", str(sft), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a reward model is evaluated on preference pairs" in err[0], err
