"""Deterministic synthetic preference pairs for benchmarks.

Natural-ish English built from templates and word lists, with varied lengths: prompts of roughly 20-150
tokens and responses of roughly 10-200 tokens (SmolLM2 tokenizer; about 1.2 tokens per word here). The
chosen response is a helpful, on-topic answer; the rejected one is a vaguer or off-topic answer of an
independent length, so the two always differ. Same seed → byte-identical file.

    python benchmarks/make_pairs.py --n 256 --seed 0 --out /tmp/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = [
    "sourdough bread",
    "a small vegetable garden",
    "the French Revolution",
    "black holes",
    "compound interest",
    "learning the guitar",
    "remote team meetings",
    "a used bicycle",
    "photosynthesis",
    "the Roman aqueducts",
    "a job interview",
    "marathon training",
    "composting at home",
    "solar panels",
    "the water cycle",
    "a birthday party for a child",
    "Python list comprehensions",
    "a road trip across Spain",
    "saving for retirement",
    "houseplants in winter",
    "the history of jazz",
    "writing a cover letter",
    "basic first aid",
    "coffee brewing",
    "the immune system",
    "renting a first apartment",
    "chess openings",
    "bird watching",
    "electric cars",
    "public speaking",
    "the Great Barrier Reef",
    "time management",
    "a podcast launch",
    "volcanoes",
    "knitting",
]
ASKS = [
    "Can you explain {t} to me?",
    "What should I know about {t}?",
    "Give me some practical advice on {t}.",
    "How would you describe {t} to a beginner?",
    "I am trying to understand {t}. Where do I start?",
    "Write a short guide about {t}.",
    "What are the most common mistakes people make with {t}?",
    "Summarize the key ideas behind {t}.",
]
CONTEXT = [
    "I have been reading about {t} for a few weeks, but most articles assume too much background.",
    "My friend recommended that I look into {t}, and I would like a clear overview before I commit any time.",
    "I only have a couple of hours each weekend, so I need an approach to {t} that is realistic.",
    "Last year I tried something similar and it did not go well, mostly because I skipped the basics.",
    "I prefer concrete steps and examples over abstract theory, if that is possible.",
    "Please keep in mind that I am on a tight budget and do not own any special equipment.",
    "I am writing this on my phone, so a structured answer with short paragraphs would help a lot.",
    "Some people told me that {t} is easy, while others said it takes years to get right.",
    "I would also appreciate a few pointers to what I should avoid in the first month.",
    "For context, I work full time and have two kids, so my schedule is unpredictable.",
]
GOOD = [
    "A good way to begin with {t} is to focus on one small goal and repeat it until it feels natural.",
    "Most beginners underestimate how much consistency matters; a little practice every day beats long sessions.",
    "Start by writing down what you already know, then fill the gaps with one reliable source at a time.",
    "When it comes to {t}, the basics are simple: prepare carefully, measure your progress, and adjust slowly.",
    "A common mistake is to change too many things at once, which makes it hard to tell what actually helped.",
    "If you are on a budget, you can usually borrow or improvise the tools you need for the first few weeks.",
    "It helps to keep short notes after each attempt, because patterns become obvious after a month or so.",
    "Ask someone with more experience to review your first results; a single conversation can save you weeks.",
    "Do not worry if early results look disappointing, since nearly everyone goes through the same phase.",
    "Finally, set a date to review what worked and what did not, and plan the next step from there.",
    "For example, you could spend the first week only on preparation and the second week on a small project.",
    "The key idea behind {t} is that small, well understood steps add up to a solid foundation over time.",
]
BAD = [
    "I am not sure, it depends on many things.",
    "You can find a lot about {t} online.",
    "That is a complicated question and people disagree about it.",
    "Just try it and see what happens.",
    "Honestly, {t} is not that interesting, maybe pick something else.",
    "There are many opinions, and all of them have some truth in them.",
    "I once heard a story about this, but I do not remember the details.",
    "It is usually fine, unless it is not, in which case you should be careful.",
    "Most experts would probably say something, but it varies from case to case.",
    "The weather was nice yesterday, which reminded me of something unrelated.",
]
FILLER = [
    "In other words, patience pays off.",
    "This is true for most people.",
    "Keep it simple at first.",
    "That makes a real difference.",
    "It is worth repeating.",
    "Small steps matter.",
]

TOKENS_PER_WORD = 1.2


def _words(text: str) -> int:
    return len(text.split())


def _fill(rng: random.Random, topic: str, pool: list[str], n_tokens: int, start: str = "") -> str:
    """Sentences from ``pool`` (topic substituted) until about ``n_tokens`` tokens, trimmed to a word budget."""
    budget = max(3, round(n_tokens / TOKENS_PER_WORD))
    parts = [start] if start else []
    while sum(_words(p) for p in parts) < budget:
        s = rng.choice(pool if rng.random() < 0.85 else FILLER)
        parts.append(s.format(t=topic))
    words = " ".join(parts).split()[:budget]
    text = " ".join(words)
    return text if text.endswith((".", "?", "!")) else text + "."


#: Word budgets (prompt, each response) per data shape: ``synthetic`` (the original set), ``ultrafeedback``
#: (long prompts, ~1.5x the answers, like UltraFeedback) and ``hh`` (short prompts, long answers, like
#: Anthropic-HH).
SHAPES = {
    "synthetic": ((20, 150), (10, 200)),
    "ultrafeedback": ((120, 300), (60, 220)),
    "hh": ((8, 30), (80, 300)),
}


def make_pairs(n: int = 256, seed: int = 0, shape: str = "synthetic") -> list[dict[str, str]]:
    """``n`` rows ``{"prompt", "chosen", "rejected"}`` (strings; the prompt ends with ``Assistant:``, responses start with a space)."""
    rng = random.Random(seed)
    (p_lo, p_hi), (r_lo, r_hi) = SHAPES[shape]
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        ask = rng.choice(ASKS).format(t=topic)
        p_len = rng.randint(p_lo, p_hi)
        prompt = _fill(rng, topic, CONTEXT, p_len - 4, start=ask) if p_len > 20 else ask
        prompt = f"User: {prompt}\nAssistant:"
        chosen = _fill(rng, topic, GOOD, rng.randint(r_lo, r_hi))
        rejected = _fill(rng, topic, BAD, rng.randint(r_lo, r_hi))
        if rejected == chosen:  # cannot happen with disjoint pools; keep the invariant explicit
            rejected += " Anyway."
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def write_pairs(path: str | Path, n: int = 256, seed: int = 0, shape: str = "synthetic") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in make_pairs(n, seed, shape):
            f.write(json.dumps(row) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="synthetic")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(write_pairs(args.out, args.n, args.seed, args.shape))


if __name__ == "__main__":
    main()
