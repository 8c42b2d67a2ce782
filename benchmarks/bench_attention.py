"""Which packed-attention path is faster on this machine: forward+backward of one micro-batch of pairs.

Layouts of the same 4 pairs (``benchmarks/make_pairs.py``, SmolLM2 tokenizer, max_length 512):

* ``padded``: tether's plain path, 2B rows padded to the longest (SDPA with a padding mask).
* ``packed-dense``: all rows in one sequence under one dense block-diagonal ``[L, L]`` mask (SDPA):
  attention spans the whole packed length.
* ``packed``: all rows in one sequence, attention per segment (``tether.engine.segments``).
* ``shared-dense`` / ``shared``: the same with each pair's prompt once (``prompt | chosen | rejected``).
* ``flex`` (attention only): ``torch.nn.attention.flex_attention`` with a block mask, eager (uncompiled).

Part 1 times the attention call alone at SmolLM2's shapes (9 query heads, 3 key/value heads, head dim
64); part 2 times the whole model's forward+backward (log-probs of the response tokens, summed).
Minimum of ``--reps`` after one warm-up (the least disturbed by other processes).

    HF_HUB_OFFLINE=1 python benchmarks/bench_attention.py --reps 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def _time(fn, reps: int) -> float:
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)  # the least disturbed by other processes on a shared machine


def _examples(n: int, max_length: int, seed: int):
    from make_pairs import write_pairs

    from tether.data import read_rows, tokenize_rows
    from tether.engine.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir("smollm2"))
    path = write_pairs(Path(tempfile.mkdtemp()) / "pairs.jsonl", n, seed)
    rows = read_rows(str(path))
    return tokenize_rows(rows, tok, kind="pairs", max_length=max_length, chat_template="never").examples


def dense_mask(batch):
    """[1, 1, L, L] boolean mask equivalent to the batch's segment layout (what packing under one mask does)."""
    import torch

    n = batch.input_ids.shape[1]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for _, s, a, r, p in batch.layout.segments:
        mask[s : s + a, s : s + a] = torch.ones(a, a, dtype=torch.bool).tril()
        if r:
            mask[s + a : s + a + r, s : s + p] = True
            mask[s + a : s + a + r, s + a : s + a + r] = torch.ones(r, r, dtype=torch.bool).tril()
    return mask[None, None]


def attention_only(batches: dict, reps: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from tether.engine.segments import segment_attention

    h, kv, d = 9, 3, 64
    out = {}
    for name, batch in batches.items():
        rows, n = batch.input_ids.shape
        q = torch.randn(rows, h, n, d, requires_grad=True)
        k = torch.randn(rows, kv, n, d, requires_grad=True)
        v = torch.randn(rows, kv, n, d, requires_grad=True)
        if batch.layout is None:
            m = batch.attention_mask.bool()
            mask = (torch.ones(n, n, dtype=torch.bool).tril()[None] & m[:, None, :])[:, None]
            mask = mask | torch.eye(n, dtype=torch.bool)  # padded queries see themselves: no NaN

            def f(q=q, k=k, v=v, mask=mask):
                F.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True).sum().backward()

            out[name] = _time(f, reps)
            continue

        def seg(q=q, k=k, v=v, layout=batch.layout):
            segment_attention(q, k, v, layout).sum().backward()

        mask = dense_mask(batch)

        def dense(q=q, k=k, v=v, mask=mask):
            F.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True).sum().backward()

        out[name] = _time(seg, reps)
        out[f"{name}-dense"] = _time(dense, reps)
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def allowed(b, hh, qi, ki, dm=mask[0, 0]):
                return dm[qi, ki]

            block = create_block_mask(allowed, None, None, n, n, device="cpu")

            def flex(q=q, k=k, v=v, block=block):
                flex_attention(q, k, v, block_mask=block, enable_gqa=True).sum().backward()

            out[f"{name}-flex"] = _time(flex, reps)
        except Exception as e:  # not available / not supported eagerly on this CPU
            print(f"flex attention ({name}): {type(e).__name__}: {str(e)[:120]}")
    return out


def whole_model(batches: dict, reps: int) -> dict[str, float]:
    import torch

    from tether.engine.logprobs import LogProbModel, decoder_and_head
    from tether.engine.models import load_model, resolve_model_dir

    model = load_model(resolve_model_dir("smollm2"), dtype="float32")
    lp = LogProbModel(model)
    assert lp.supports_segments()
    decoder, _, _ = decoder_and_head(model)
    inner = "sdpa"
    out = {}
    for name, batch in batches.items():

        def step(batch=batch):
            model.zero_grad(set_to_none=True)
            lp(batch).sum.sum().backward()

        out[name] = _time(step, reps)
        if batch.layout is not None:  # the same packed sequence under one dense mask
            mask = dense_mask(batch)

            def dense(batch=batch, mask=mask):
                model.zero_grad(set_to_none=True)
                saved = model.config._attn_implementation
                model.config._attn_implementation = inner
                try:
                    hidden = decoder(
                        input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids
                    ).last_hidden_state
                finally:
                    model.config._attn_implementation = saved
                lp.from_hidden(hidden, batch).sum.sum().backward()

            with torch.no_grad():  # same numbers as the segment path
                a = lp(batch).sum
                model.config._attn_implementation, saved = inner, model.config._attn_implementation
                h = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids)
                model.config._attn_implementation = saved
                b = lp.from_hidden(h.last_hidden_state, batch).sum
                assert torch.allclose(a, b, atol=1e-3), (a, b)
            out[f"{name}-dense"] = _time(dense, reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-model", action="store_true", help="attention only")
    args = ap.parse_args()
    import torch

    from tether.engine.logprobs import collate

    ex = _examples(64, args.max_length, args.seed)[: args.pairs]
    batches = {
        "padded": collate(ex, range(len(ex)), 0),
        "packed": collate(ex, range(len(ex)), 0, packing=True),
        "shared": collate(ex, range(len(ex)), 0, share_prompt=True, packing=True),
    }
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    for name, b in batches.items():
        print(f"{name}: {tuple(b.input_ids.shape)} positions, {b.n_tokens} tokens as TRL counts them")
    print("\nattention alone, forward+backward (s):")
    for k, v in attention_only(batches, args.reps).items():
        print(f"  {k:16s} {v:.4f}")
    if not args.skip_model:
        print("\nSmolLM2-135M forward+backward of the micro-batch (s):")
        res = whole_model(batches, args.reps)
        for k, v in res.items():
            print(f"  {k:16s} {v:.3f}   {res['padded'] / v:.2f}x vs padded")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
