"""Small tasks whose answers a program can check: the bundled demo data and the offline stand-in for the
papers' benchmarks.

Four families, each deterministic from a seed:

- ``arithmetic``: "What is 17 + 25?" → ``42``;
- ``format``: "Write the word 'river' in capital letters." → ``RIVER``;
- ``reverse``: "Spell the word 'lamp' backwards." → ``pmal``;
- ``choice``: a multiple-choice question ("Which of these is an animal? A) ... B) ...") → the letter.

Every task has a correct answer and wrong or off-format answers, so it yields SFT rows
(prompt, completion), preference pairs (prompt, chosen, rejected) with a ``source`` column naming the
family (sDPO's natural split), multiple-choice rows, and a held-out split that shares no prompt with the
training split. :func:`check` is the program that judges a generation.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

FAMILIES = ("arithmetic", "format", "reverse", "choice")

WORDS = (
    "apple river stone cloud tiger pencil garden window silver planet candle bridge forest rocket "
    "orange lemon castle dragon island marble meadow pirate rabbit spider sunset thunder violin wizard "
    "anchor basket button carpet cookie desert engine feather guitar helmet jacket kettle ladder magnet "
    "needle ocean parrot puzzle saddle ticket tunnel valley wallet yogurt zipper lamp horse chair bottle"
).split()

CATEGORIES = {
    "an animal": "tiger rabbit parrot spider horse dragon camel zebra otter falcon".split(),
    "a fruit": "apple orange lemon banana cherry mango peach grape melon plum".split(),
    "a color": "red blue green yellow purple orange brown pink violet silver".split(),
    "a musical instrument": "violin guitar piano drum flute trumpet cello harp banjo oboe".split(),
    "a vehicle": "car rocket bicycle truck train boat bus tractor scooter airplane".split(),
}
OTHERS = "chair window pencil carpet kettle ladder bottle wallet helmet basket candle button".split()


def _arithmetic(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    op = rng.choice(["+", "-", "*"]) if max(a, b) < 13 else rng.choice(["+", "-"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = [value + d for d in rng.sample([-10, -2, -1, 1, 2, 10], 2)]
    return {
        "prompt": f"What is {a} {op} {b}? Answer with just the number.",
        "answer": str(value),
        "wrong": [str(wrong[0]), f"The answer is {wrong[1]}."],
    }


def _format(rng: random.Random) -> dict[str, Any]:
    a, b = rng.sample(WORDS, 2)
    style = rng.choice(["upper", "joined"])
    if style == "upper":
        return {
            "prompt": f"Write the words '{a} {b}' in capital letters. Reply with the two words only.",
            "answer": f"{a.upper()} {b.upper()}",
            "wrong": [f"{a} {b}", f"Sure! Here they are: {a.capitalize()} {b.capitalize()}"],
        }
    return {
        "prompt": f"Join the words '{a}' and '{b}' with a hyphen. Reply with the result only.",
        "answer": f"{a}-{b}",
        "wrong": [f"{a} {b}", f"Sure! The result is {a}{b}"],
    }


def _reverse(rng: random.Random) -> dict[str, Any]:
    word = (
        rng.choice(WORDS)
        if rng.random() < 0.3
        else "".join(rng.sample("abcdefghijklmnoprstuw", rng.randint(3, 5)))
    )
    rev = word[::-1]
    shuffled = list(rev)
    i = rng.randrange(len(shuffled) - 1)
    shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    near = "".join(shuffled) if "".join(shuffled) != rev else rev[1:] + rev[0]
    return {
        "prompt": f"Spell the word '{word}' backwards. Reply with the reversed word only.",
        "answer": rev,
        "wrong": [near, word],
    }


def _choice(rng: random.Random) -> dict[str, Any]:
    category = rng.choice(sorted(CATEGORIES))
    right = rng.choice(CATEGORIES[category])
    distractors = rng.sample([w for w in OTHERS if w != right], 3)
    options = [right, *distractors]
    rng.shuffle(options)
    letters = "ABCD"
    k = options.index(right)
    listing = " ".join(f"{letters[i]}) {o}" for i, o in enumerate(options))
    wrong_letter = rng.choice([c for c in letters if c != letters[k]])
    return {
        "prompt": f"Which of these is {category}? {listing}. Answer with the letter only.",
        "answer": letters[k],
        "wrong": [wrong_letter, f"{options[letters.index(wrong_letter)]}"],
        "options": [f"{letters[i]}" for i in range(4)],
        "option_texts": options,
        "label": k,
    }


MAKERS = {"arithmetic": _arithmetic, "format": _format, "reverse": _reverse, "choice": _choice}


def normalise(text: str) -> str:
    """Strip whitespace, surrounding quotes and a final period (what a checker forgives)."""
    t = text.strip().splitlines()[0].strip() if text.strip() else ""
    return t.strip("'\"`*").rstrip(".").strip()


def check(task: dict[str, Any], generation: str) -> bool:
    """Whether ``generation`` solves ``task`` (a row with ``source`` and ``answer``)."""
    family, answer = task["source"], task["answer"]
    text = normalise(generation)
    if family == "arithmetic":
        m = re.search(r"-?\d+", generation)
        return m is not None and m.group(0) == answer
    if family == "choice":
        m = re.match(r"\(?([A-D])\b", text)
        return m is not None and m.group(1) == answer
    return text == answer  # format, reverse: exact, case-sensitive


def generate(seed: int = 0, n_train: int = 400, n_heldout: int = 80) -> dict[str, list[dict[str, Any]]]:
    """Train and held-out tasks, families interleaved, no prompt shared between the splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    tasks: list[dict[str, Any]] = []
    total = n_train + n_heldout
    for _ in range(100 * total):
        if len(tasks) == total:
            break
        family = FAMILIES[len(tasks) % len(FAMILIES)]
        t = MAKERS[family](rng)
        if t["prompt"] in seen:
            continue
        seen.add(t["prompt"])
        tasks.append({"source": family, **t})
    else:
        raise ValueError(f"could not draw {total} distinct tasks")
    return {"train": tasks[:n_train], "heldout": tasks[n_train:]}


def to_rows(tasks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """SFT rows, preference pairs (one per wrong answer) and multiple-choice rows."""
    sft, pairs, mc = [], [], []
    for t in tasks:
        sft.append(
            {"prompt": t["prompt"], "completion": t["answer"], "source": t["source"], "answer": t["answer"]}
        )
        for w in t["wrong"]:
            pairs.append(
                {
                    "prompt": t["prompt"],
                    "chosen": t["answer"],
                    "rejected": w,
                    "source": t["source"],
                    "answer": t["answer"],
                }
            )
        if "options" in t:
            mc.append(
                {
                    "prompt": t["prompt"],
                    "options": t["options"],
                    "label": t["label"],
                    "source": t["source"],
                    "answer": t["answer"],
                }
            )
    return {"sft": sft, "pairs": pairs, "mc": mc}


def write(out_dir: str | Path, seed: int = 0, n_train: int = 400, n_heldout: int = 80) -> list[Path]:
    """Write ``{sft,pairs,mc}.{train,heldout}.jsonl`` to ``out_dir``; byte-for-byte reproducible."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, tasks in generate(seed, n_train, n_heldout).items():
        for kind, rows in to_rows(tasks).items():
            path = out / f"{kind}.{split}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            written.append(path)
    return written
