"""Hard positives for the pair verifier's TRAINING pairs (label 1: the same question):
a synonym swapped in, "the X of my Y" -> "my Y's X", a leading clause moved to the
end, case and punctuation changed, typed as people type. See
``bench.train_verifier_pairs``."""

from __future__ import annotations

import random
import re

from bench.rewrite import match_case

# Meaning-preserving substitutions (phrase -> phrase), applied one at a time.
SYNONYMS = [
    ("how do i", "how can i"),
    ("how can i", "how do i"),
    ("what is the best way to", "how do i best"),
    ("what are some ways to", "how can i"),
    ("what's", "what is"),
    ("what is", "what's"),
    ("i'm", "i am"),
    ("don't", "do not"),
    ("can't", "cannot"),
    ("quickly", "fast"),
    ("fast", "quickly"),
    ("start", "begin"),
    ("begin", "start"),
    ("buy", "purchase"),
    ("purchase", "buy"),
    ("big", "large"),
    ("large", "big"),
    ("help", "assist"),
    ("choose", "pick"),
    ("pick", "choose"),
    ("job", "position"),
    ("car", "automobile"),
    ("movie", "film"),
    ("film", "movie"),
    ("learn", "study"),
    ("study", "learn"),
    ("get rid of", "remove"),
    ("a lot of", "many"),
    ("many", "a lot of"),
    ("should i", "do i need to"),
    ("is it possible to", "can i"),
    ("can i", "is it possible to"),
    ("improve", "get better at"),
    ("mistakes", "errors"),
    ("smartphone", "phone"),
    ("money", "cash"),
    ("people", "persons"),
    ("children", "kids"),
    ("kids", "children"),
    ("difficult", "hard"),
    ("easiest", "simplest"),
    ("simplest", "easiest"),
    ("make money", "earn money"),
    ("earn money", "make money"),
    ("use", "utilize"),
]

_OF_MY = re.compile(r"\bthe (\w+) of (my|your|his|her|our|their) (\w+)\b", re.I)
_LEAD = re.compile(r"^(In|For|During|After|Before|On|At) ([^,?]{3,30}), (.+?)\??$")


def synonym(text: str, rng: random.Random) -> str | None:
    lower = text.lower()
    options = [(a, b) for a, b in SYNONYMS if re.search(rf"\b{re.escape(a)}\b", lower)]
    if not options:
        return None
    a, b = rng.choice(options)
    m = re.search(rf"\b{re.escape(a)}\b", lower)
    assert m is not None
    return text[: m.start()] + match_case(b, text[m.start() : m.end()]) + text[m.end() :]


def possessive(text: str, rng: random.Random) -> str | None:
    m = _OF_MY.search(text)
    if m is None:
        return None
    return text[: m.start()] + f"{m.group(2)} {m.group(3)}'s {m.group(1)}" + text[m.end() :]


def reordered(text: str, rng: random.Random) -> str | None:
    m = _LEAD.match(text.strip())
    if m is None:
        return None
    rest = m.group(3)
    return f"{rest[0].upper()}{rest[1:]} {m.group(1).lower()} {m.group(2)}?"


def surface(text: str, rng: random.Random) -> str | None:
    """Case and punctuation only."""
    choice = rng.randrange(3)
    if choice == 0:
        return text.lower()
    if choice == 1:
        return text.rstrip("?").rstrip() if text.endswith("?") else text + "?"
    return re.sub(r"\s+", " ", text.replace(",", "")).strip()


_FILLERS = ("pls ", "please, ", "quick question: ", "hey, ", "I'm new to this. ")


def noisy(text: str, rng: random.Random) -> str | None:
    """How people type: lower case, no question mark, a typo, a filler in front."""
    words = text.split()
    if len(words) < 4:
        return None
    out = text.lower().rstrip("?").rstrip() if rng.random() < 0.7 else text
    long_words = [i for i, w in enumerate(out.split()) if len(w) > 5 and w.isalpha()]
    if long_words and rng.random() < 0.6:  # two neighbouring letters swapped
        parts = out.split()
        i = rng.choice(long_words)
        w, j = parts[i], rng.randrange(1, len(parts[i]) - 2)
        parts[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        out = " ".join(parts)
    if rng.random() < 0.4:
        out = rng.choice(_FILLERS) + out
    return out if out != text else None
