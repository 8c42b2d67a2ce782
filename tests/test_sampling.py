"""The generation engine (:mod:`tether.engine.sampling`): greedy equal to transformers' batched ``generate``
token for token, the sampled tokens' log-probs equal to the log-prob engine's, the nucleus equal to
transformers' ``TopPLogitsWarper``, draws that follow the distribution and depend only on their own
prompt's generator, the prompt encoded once for K samples, finished rows leaving the batch."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopPLogitsWarper

from tether.engine.logprobs import LogProbModel
from tether.engine.reference import compute_table
from tether.engine.sampling import _draw, generate, nucleus, prompt_seed

from tiny import Ex, tiny_model

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 96) for _ in range(rng.randint(1, 14))] for _ in range(n)]


def _hf_greedy(model, prompts, batch_size, max_new_tokens, eos):
    """transformers' batched greedy ``generate`` on the engine's batches (longest first, left padding)."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=PAD, do_sample=False)
    out: list[list[int]] = [[] for _ in prompts]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), PAD)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(idx):
            ids[j, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[j, width - len(prompts[i]) :] = 1
        new = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, width:].tolist()
        for j, i in enumerate(idx):
            cut = next((t + 1 for t, x in enumerate(new[j]) if x in eos), len(new[j]))
            out[i] = new[j][:cut]
    return out


@pytest.mark.parametrize("batch_size", [1, 4])
def test_greedy_equals_transformers_generate(model, batch_size):
    prompts = _prompts(11)
    first = [
        d[0].ids[0] for d in generate(model, prompts, eos=[EOS], pad=PAD, max_new_tokens=1, progress=False)
    ]
    eos = [EOS, first[0], first[5]]  # some rows stop early (at different steps), others run to the end
    got = generate(model, prompts, eos=eos, pad=PAD, max_new_tokens=24, batch_size=batch_size, progress=False)
    want = _hf_greedy(model, prompts, batch_size, 24, eos)
    assert [d[0].ids for d in got] == want
    lengths = {len(w) for w in want}
    assert 1 in lengths and 24 in lengths  # the test covers both early stops and the length limit


def _scored(model, prompts, draws) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws' summed log-probs from the sampling pass and from the log-prob engine."""
    exs = [Ex(p, d.ids) for p, ds in zip(prompts, draws, strict=True) for d in ds]
    engine = compute_table(LogProbModel(model), exs, batch_size=3, pad_id=PAD, device=torch.device("cpu"))
    own = torch.tensor([sum(d.logps) for ds in draws for d in ds])
    return own, engine[:, 0]


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.8)])
def test_logps_equal_the_logprob_engine(model, temperature, top_p):
    """Each drawn token's log-prob is log π at temperature 1 (raw logits), whatever the sampling settings."""
    prompts = _prompts(7, seed=1)
    k = 1 if temperature == 0 else 3
    draws = generate(
        model, prompts, eos=[EOS], pad=PAD, max_new_tokens=12, batch_size=3, samples=k,
        temperature=temperature, top_p=top_p, progress=False,
    )  # fmt: skip
    own, engine = _scored(model, prompts, draws)
    assert torch.allclose(own, engine, atol=1e-4, rtol=0)
    per_token = [x for ds in draws for d in ds for x in d.logps]
    assert all(x <= 0 for x in per_token) and min(per_token) < -1  # real values, not zeros


def test_nucleus_is_transformers_top_p():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[0, :5] = 4.0  # ties at the nucleus edge
    for p in (0.05, 0.3, 0.9, 0.999, 1.0):
        want = TopPLogitsWarper(p)(None, logits.clone()) if p < 1 else logits
        assert torch.equal(nucleus(logits, p), want), p


def test_draws_follow_the_distribution():
    """20,000 inverse-CDF draws from softmax(nucleus(z / T)): frequencies within 1.5 points of the
    probabilities; tokens outside the nucleus never drawn."""
    torch.manual_seed(0)
    z = torch.randn(1, 12) * 2
    t, p = 0.8, 0.9
    probs = nucleus(z / t, p).softmax(-1)[0]
    u = torch.rand(20000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = _draw(z.expand(20000, -1), u, t, p)
    freq = torch.bincount(got, minlength=12).double() / 20000
    assert (freq - probs.double()).abs().max() < 0.015
    assert freq[probs == 0].sum() == 0 and (probs == 0).any()


def test_a_prompts_draws_depend_only_on_its_own_generator(model):
    prompts = _prompts(9, seed=2)
    kw = {"eos": [EOS], "pad": PAD, "max_new_tokens": 10, "samples": 3, "temperature": 1.0, "progress": False}
    full = generate(model, prompts, batch_size=4, seed=5, **kw)
    seeds = [prompt_seed(5, i, p) for i, p in enumerate(prompts)]
    alone = [
        generate(model, [p], batch_size=1, seeds=[s], **kw)[0] for p, s in zip(prompts, seeds, strict=True)
    ]
    assert [[d.ids for d in ds] for ds in full] == [[d.ids for d in ds] for ds in alone]
    assert len({tuple(d.ids) for ds in full for d in ds}) > 20  # the samples differ from each other
    other = generate(model, prompts, batch_size=4, seed=6, **kw)
    assert [[d.ids for d in ds] for ds in other] != [[d.ids for d in ds] for ds in full]


def test_prompt_encoded_once_and_finished_rows_leave_the_batch(model):
    """The prefill runs on B rows (not B·K); a row that ended at EOS is not in the next forward."""
    prompts = _prompts(3, seed=4)
    seen: list[tuple[int, int]] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        greedy = generate(model, prompts, eos=[EOS], pad=PAD, max_new_tokens=1, batch_size=3, progress=False)
        seen.clear()
        stop = greedy[0][0].ids[0]  # prompt 0's greedy first token: its greedy row stops at once
        draws = generate(
            model, prompts, eos=[stop], pad=PAD, max_new_tokens=6, batch_size=3, samples=2,
            temperature=1.0, top_p=1e-6, progress=False,
        )  # fmt: skip
    finally:
        hook.remove()
    assert seen[0] == (3, max(len(p) for p in prompts))  # the prompts encoded once
    assert all(len(d.ids) == 1 for d in draws[0])  # a one-token nucleus: both of prompt 0's samples stop
    rows = [b for b, t in seen[1:]]
    assert all(t == 1 for _, t in seen[1:]) and rows[0] <= 4 and rows == sorted(rows, reverse=True)


@pytest.mark.slow
def test_generation_benchmark_runs_on_a_tiny_model(tmp_path):
    """benchmarks/bench_generate.py end to end: both engines, the greedy outputs identical, the table."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tiny import tiny_model_dir

    repo = Path(__file__).resolve().parents[1]
    model = tiny_model_dir(tmp_path / "model")
    cmd = [sys.executable, str(repo / "benchmarks" / "bench_generate.py"), "--model", str(model)]
    cmd += ["--n", "6", "--batch-size", "4", "--max-new-tokens", "5", "--rounds", "2"]
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "greedy outputs identical: True" in proc.stdout
    table = [x for x in proc.stdout.splitlines() if x.startswith("| ")]
    assert len(table) == 3 and table[1].startswith("| greedy |") and table[2].startswith("| K=4 at T=0.8 |")
