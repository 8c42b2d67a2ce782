"""Generation throughput: tether's engine (``tether.engine.sampling``, the path of ``tether eval``,
``tether generate`` and ``tether pairs``) against transformers' own batched ``generate``.

Both run the embedded model (``smollm2``) on the same prompts (the bundled held-out task prompts, rendered
with the chat template as training renders them), in the same batches (``--batch-size`` prompts, sorted by
length, left padding), with the same settings: greedy, and K = ``--samples`` samples per prompt at
temperature 0.8 (no top-k, top-p 1). transformers samples K per prompt with ``num_return_sequences``;
tether encodes each prompt once and expands its KV cache, and drops finished rows from the batch.
Tokens are the generated tokens up to and including each row's first EOS (what either engine returns).
The engines alternate within each round (the order flipped every round), ``--rounds`` rounds; the table
gives the median tokens/s with its range and the median of the per-round ratios with its range. Greedy
outputs are compared token for token.

    HF_HUB_OFFLINE=1 python benchmarks/bench_generate.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def _prompts(tokenizer, path: Path, n: int) -> list[list[int]]:
    from tether.config import DataConfig
    from tether.data import read_rows

    rows = read_rows(str(path))[:n]
    return DataConfig().tokenization().tokenize_prompts([r.data["prompt"] for r in rows], tokenizer)


def _hf(model, tokenizer, prompts, batch_size, max_new_tokens, samples, temperature):
    """transformers' batched ``generate`` (left padding) on the engine's batches; new ids cut at EOS."""
    import torch
    from transformers import GenerationConfig

    from tether.evaluation.generation import eos_ids, pad_id

    eos, pad = eos_ids(model, tokenizer), pad_id(model, tokenizer)
    sample = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {}
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        num_return_sequences=samples,
        **(sample or {"do_sample": False}),
    )
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[list[int]]] = [[] for _ in prompts]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(idx):
            ids[j, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[j, width - len(prompts[i]) :] = 1
        with torch.no_grad():
            new = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[
                :, width:
            ].tolist()
        for j, i in enumerate(idx):
            for k in range(samples):
                row = new[j * samples + k]
                out[i].append(row[: next((t + 1 for t, x in enumerate(row) if x in eos), len(row))])
    return out


def _tether(model, tokenizer, prompts, batch_size, max_new_tokens, samples, temperature):
    from tether.evaluation.generation import generate

    draws = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        num_samples=samples,
        temperature=temperature,
        progress=False,
    )
    return [[d.ids for d in ds] for ds in draws]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", default=str(REPO / "data" / "tasks" / "sft.heldout.jsonl"))
    p.add_argument("--n", type=int, default=80, help="prompts (default: the 80 held-out tasks)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--samples", type=int, default=4, help="K of the sampled setting")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    import torch

    import tether.engine.models as models

    torch.manual_seed(0)
    path = models.resolve_model_dir(args.model)
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path).eval()
    prompts = _prompts(tokenizer, Path(args.prompts), args.n)
    settings = {
        "greedy": (1, 0.0),
        f"K={args.samples} at T={args.temperature}": (args.samples, args.temperature),
    }
    engines = {"transformers generate": _hf, "tether": _tether}
    rates: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {}
    same_greedy = None
    for r in range(args.rounds):
        for name, (k, t) in settings.items():
            got = {}
            for engine in list(engines)[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                ids = engines[engine](model, tokenizer, prompts, args.batch_size, args.max_new_tokens, k, t)
                seconds = time.perf_counter() - start
                tokens = sum(len(x) for xs in ids for x in xs)
                rates.setdefault((name, engine), []).append(tokens / seconds)
                got[engine] = ids
                print(f"round {r + 1} {name:>16} {engine:>22}: {tokens} tokens {seconds:7.2f} s", flush=True)
            ratios.setdefault(name, []).append(
                rates[(name, "tether")][-1] / rates[(name, "transformers generate")][-1]
            )
            if t == 0:
                same = got["tether"] == got["transformers generate"]
                same_greedy = same if same_greedy is None else same_greedy and same

    def span(xs: list[float], f: str) -> str:
        return f"{statistics.median(xs):{f}} ({min(xs):{f}}–{max(xs):{f}})"

    print(
        f"\n{args.n} prompts, batch {args.batch_size}, ≤ {args.max_new_tokens} new tokens, "
        f"{args.rounds} rounds, {torch.get_num_threads()} threads; greedy outputs identical: {same_greedy}\n"
    )
    print("| setting | transformers `generate` tok/s | tether tok/s | tether / generate |")
    print("|---|---:|---:|---:|")
    for name in settings:
        hf, te = rates[(name, "transformers generate")], rates[(name, "tether")]
        print(f"| {name} | {span(hf, '.1f')} | {span(te, '.1f')} | {span(ratios[name], '.2f')}x |")


if __name__ == "__main__":
    main()
