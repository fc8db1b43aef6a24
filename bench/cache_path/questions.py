"""The questions: primed originals, their paraphrases by rewrite, never-seen misses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Questions. Each list gets its own subjects so that no two primed questions are
# paraphrases of each other; the rewrite direction alternates within a list.
SKILLS = [
    "Python", "Rust", "chess", "the guitar", "French", "calculus", "SQL", "Japanese",
    "swimming", "photography", "statistics", "drawing", "Kubernetes", "public speaking",
    "woodworking",
]  # fmt: skip
CONCEPTS = [
    "a semantic cache", "a hash table", "gradient descent", "a mutex", "a load balancer",
    "a vector database", "an API gateway", "a circuit breaker", "a bloom filter", "a compiler",
    "garbage collection", "a neural network", "a reverse proxy", "a message queue",
    "a container image",
]  # fmt: skip
HABITS = [
    "handwriting", "posture", "sleep", "memory", "typing speed", "running endurance",
    "concentration", "vocabulary", "knife skills", "credit score", "resume", "pronunciation",
    "garden soil", "sourdough bread", "time management",
]  # fmt: skip
REWORDED = [
    ("Why is the sky blue?", "Why does the sky look blue?"),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What causes rain?", "What makes it rain?"),
    ("How do I boil an egg?", "How should I boil an egg?"),
    ("What is the speed of light?", "How fast is light?"),
    ("How do I center a div in CSS?", "How can I center a div with CSS?"),
    ("What are the benefits of drinking water?", "What are the benefits of drinking water"),
    ("How do I make coffee without a machine?", "How can I make coffee without a machine?"),
]
MISS_TOPICS = [*SKILLS, *HABITS]


@dataclass(frozen=True, slots=True)
class Pair:
    rewrite: str
    original: str
    paraphrase: str


def question_pairs() -> list[Pair]:
    def both_ways(rewrite: str, items: Iterable[tuple[str, str]]) -> list[Pair]:
        return [
            Pair(rewrite, *((a, b) if i % 2 == 0 else (b, a))) for i, (a, b) in enumerate(items)
        ]

    out = both_ways(
        "How do I <-> How can I",
        ((f"How do I learn {s} quickly?", f"How can I learn {s} quickly?") for s in SKILLS),
    )
    out += both_ways("What is <-> What's", ((f"What is {c}?", f"What's {c}?") for c in CONCEPTS))
    out += both_ways(
        "trailing ? removed/added",
        ((f"How do I improve my {h}?", f"How do I improve my {h}") for h in HABITS),
    )
    out += [Pair("reworded by hand", a, b) for a, b in REWORDED]
    return out


def spaced(text: str, k: int) -> str:
    """Variant ``k`` of ``text``: the same words with their spaces varied (bit i of ``k``
    doubles the i-th space, the rest of ``k`` adds trailing spaces); 0 is ``text``.

    The tokens, hence the vector and the verifier's verdict, are those of ``text``; the
    exact key is not. A timed paraphrase that misses (over budget) is stored under its
    own exact key only, so it cannot turn later paraphrase requests into exact hits."""
    words = text.split(" ")
    gaps = len(words) - 1
    pattern, trailing = k % (1 << gaps), k >> gaps
    out = words[0]
    for i, word in enumerate(words[1:]):
        out += ("  " if pattern >> i & 1 else " ") + word
    return out + " " * trailing


def miss_question(n: int) -> str:
    """A question never asked before: a number no other question has (the verifier's wall)."""
    topic = MISS_TOPICS[n % len(MISS_TOPICS)]
    return f"What are {n + 3} good reasons to practise {topic} this year?"
