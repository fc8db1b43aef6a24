"""Evaluation-only pairs for the pair verifier: never used by `bench.train_verifier`.

The adversarial generators here differ from the training ones
(`bench.train_verifier_pairs`) on purpose: other opposed words, other names,
other templates and other ways of changing a number or adding a negation, so a
false-hit rate measures what the model learned about a kind of change, not the
list it was trained on. Each makes (changed, original) pairs, labelled
"different", from held-out Quora questions and from slot-filled templates.

The hand-written sets (bench/data/verifier/) are loaded here too.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from pathlib import Path

from bench.rewrite import Maker, match_case

DATA = Path(__file__).resolve().parent / "data/verifier"

# Opposed words that do not occur in the training list.
_OPPOSED = """mild/severe acute/chronic full/empty clockwise/anticlockwise horizontal/vertical
    rural/urban indoor/outdoor indoors/outdoors forward/backward forwards/backwards
    domestic/international temporary/permanent manual/automatic optional/mandatory
    visible/hidden online/offline uppercase/lowercase sunrise/sunset maximize/minimize
    expand/shrink tighten/loosen freeze/thaw inhale/exhale wholesale/retail profit/loss
    debit/credit employer/employee landlord/tenant teacher/student seller/buyer
    weekday/weekend upstairs/downstairs underpaid/overpaid import/importing
    arrive/depart arrival/departure renting/owning sender/recipient host/guest
    predator/prey majority/minority spicy/bland modern/ancient cheaper/pricier
    optimist/pessimist introvert/extrovert introverts/extroverts nephew/niece
    uncle/aunt grandfather/grandmother groom/bride waiter/customer
    homework/classwork prefix/suffix numerator/denominator vowel/consonant
    sunny/rainy humid/arid stale/crisp ripe/unripe boiling/freezing"""
OPPOSED: dict[str, str] = {}
for _pair in _OPPOSED.split():
    _x, _y = _pair.split("/")
    if _y != "importing":
        OPPOSED[_x], OPPOSED[_y] = _y, _x

# Names that do not occur in the training list.
NAMES = [
    "Norway",
    "Poland",
    "Chile",
    "Peru",
    "Argentina",
    "Sweden",
    "Greece",
    "Portugal",
    "Ireland",
    "Denmark",
    "Finland",
    "Austria",
    "Hungary",
    "Morocco",
    "Ghana",
    "Ethiopia",
    "Nepal",
    "Malaysia",
    "Singapore",
    "Indonesia",
    "Denver",
    "Dallas",
    "Miami",
    "Madrid",
    "Rome",
    "Vienna",
    "Oslo",
    "Lagos",
    "Nairobi",
    "Lima",
    "Bogota",
    "Dublin",
    "Lisbon",
    "Prague",
    "Warsaw",
    "Kolkata",
    "Pune",
    "Hyderabad",
    "Bangalore",
    "Sydney",
    "Melbourne",
    "Auckland",
    "Elixir",
    "Julia",
    "Dart",
    "Fortran",
    "Oracle",
    "Nvidia",
    "Spotify",
    "Airbnb",
    "Adobe",
    "Cisco",
    "Sony",
    "Nokia",
    "Lenovo",
    "Xiaomi",
]

_SWAP_TEMPLATES = (
    "Is {a} more popular than {b}?",
    "Why is {a} cheaper than {b}?",
    "How do I migrate from {a} to {b}?",
    "Should I learn {a} before {b}?",
    "How do I switch from {a} to {b}?",
    "Is it cheaper to ship from {a} to {b}?",
    "How long is the train from {a} to {b}?",
    "Is {a} safer than {b} for tourists?",
    "Does {a} export more to {b}?",
    "What time is it in {a} when it is noon in {b}?",
)
_SWAP_FILLERS = {
    "lang": [
        "Go",
        "Elixir",
        "Julia",
        "Dart",
        "Fortran",
        "PHP",
        "Lua",
        "Erlang",
        "Clojure",
        "OCaml",
    ],
    "place": [
        "Norway",
        "Poland",
        "Chile",
        "Peru",
        "Sweden",
        "Greece",
        "Portugal",
        "Ireland",
        "Denmark",
        "Austria",
    ],
}
_CONVERT = (
    ("kilograms", "pounds"),
    ("liters", "gallons"),
    ("meters", "feet"),
    ("hectares", "acres"),
    ("grams", "ounces"),
    ("kilometers", "miles"),
    ("joules", "calories"),
    ("pascals", "psi"),
    ("euros", "pounds"),
    ("knots", "kilometers per hour"),
)
_UNIT_SWAPS = {
    "km": "miles",
    "kg": "lbs",
    "cm": "inches",
    "hours": "minutes",
    "days": "weeks",
    "months": "years",
    "years": "months",
    "minutes": "seconds",
    "dollars": "euros",
    "rupees": "dollars",
    "pounds": "kilograms",
    "weeks": "days",
    "GB": "MB",
    "MB": "GB",
}
_NUMBER_WORDS = [
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "twelve",
    "twenty",
    "hundred",
]
_QUALIFIERS = [
    "cheap",
    "portable",
    "used",
    "vegan",
    "electric",
    "wireless",
    "refurbished",
    "budget",
    "gaming",
    "organic",
    "waterproof",
    "second-hand",
    "part-time",
    "remote",
]

Pair = tuple[str, str]


def _opposed(text: str, rng: random.Random) -> str | None:
    found = [m for m in re.finditer(r"[A-Za-z]+", text) if m.group().lower() in OPPOSED]
    if not found:
        return None
    m = rng.choice(found)
    return text[: m.start()] + match_case(OPPOSED[m.group().lower()], m.group()) + text[m.end() :]


def _number(text: str, rng: random.Random) -> str | None:
    """A number multiplied or divided, a unit replaced, or a spelled number changed."""
    m = re.search(r"\b(\d+(?:\.\d+)?) ?(km|kg|cm|hours|days|months|years|minutes|dollars|"
                  r"rupees|pounds|weeks|GB|MB)\b", text)  # fmt: skip
    if m is not None and rng.random() < 0.5:
        return text[: m.start(2)] + _UNIT_SWAPS[m.group(2)] + text[m.end(2) :]
    m = re.search(r"\b\d+\b", text)
    if m is not None:
        value = int(m.group())
        new = value * 10 if value < 200 or rng.random() < 0.5 else max(1, value // 2)
        return text[: m.start()] + str(new) + text[m.end() :]
    words = [w for w in re.finditer(r"[a-z]+", text) if w.group() in _NUMBER_WORDS]
    if words:
        w = rng.choice(words)
        word = rng.choice([n for n in _NUMBER_WORDS if n != w.group()])
        return text[: w.start()] + word + text[w.end() :]
    return None


def _negation(text: str, rng: random.Random) -> str | None:
    """with -> without, always -> never, 'Why do' -> 'Why don't', 'does X' -> 'doesn't X'."""
    if re.search(r"\b(not|no|never|without|cannot)\b|n't", text, re.I):
        return None
    for pattern, repl in (
        (r"\bwith\b", "without"),
        (r"\balways\b", "never"),
        (r"^(Why|How come) do\b", r"\1 don't"),
        (r"^(Why|How come) does\b", r"\1 doesn't"),
        (r"\b(It|it) is\b", r"\1 isn't"),
        (r"^(Which|What) (\w+) (is|are|can|will)\b", r"\1 \2 \3 not"),
        (r"\bcan you\b", "can't you"),
    ):
        changed = re.sub(pattern, repl, text, count=1)
        if changed != text:
            return changed
    return None


def _entity(text: str, rng: random.Random) -> str | None:
    found = list(re.finditer(r"(?<=[a-z,] )[A-Z][a-z]{2,}\b", text))
    if not found:
        return None
    m = rng.choice(found)
    new = rng.choice([n for n in NAMES if n.lower() not in text.lower()])
    return text[: m.start()] + new + text[m.end() :]


def _qualifier(text: str, rng: random.Random) -> str | None:
    """A scope inserted inside the question: 'best laptop' -> 'best refurbished laptop'."""
    m = re.search(r"\b(best|good|cheapest|top) (\w+)", text, re.I)
    if m is None or m.group(2).lower() in ("way", "ways", "to", "of", "and", "in"):
        return None
    return text[: m.end(1)] + " " + rng.choice(_QUALIFIERS) + text[m.end(1) :]


def _swaps(rng: random.Random) -> Iterator[Pair]:
    """Swapped arguments from templates: 'from A to B' / 'from B to A', 'A than B' / 'B than A'."""
    while True:
        template = rng.choice(_SWAP_TEMPLATES)
        kind = "lang" if any(w in template for w in ("learn", "migrate", "switch")) else "place"
        if "popular" in template or "cheaper" in template:
            kind = rng.choice(("lang", "place"))
        a, b = rng.sample(_SWAP_FILLERS[kind], 2)
        yield template.format(a=a, b=b), template.format(a=b, b=a)
        x, y = rng.choice(_CONVERT)
        n = rng.choice((1, 5, 12, 40, 100, 250))
        yield f"How many {y} is {n} {x}?", f"How many {x} is {n} {y}?"


MAKERS: dict[str, Maker] = {
    "opposed": _opposed,
    "number": _number,
    "negation": _negation,
    "entity": _entity,
    "qualifier": _qualifier,
}


def adversarial(held_out: list[str], per_kind: int, seed: int) -> list[tuple[str, str, str]]:
    """(kind, changed, original) from held-out questions, plus template swaps."""
    rng = random.Random(seed)
    pool = sorted(set(held_out))
    rng.shuffle(pool)
    out: list[tuple[str, str, str]] = []
    for kind, make in MAKERS.items():
        made = 0
        for text in pool:
            changed = make(text, rng)
            if changed and changed != text:
                out.append((kind, changed, text))
                made += 1
                if made >= per_kind:
                    break
    seen: set[Pair] = set()
    for a, b in itertools.islice(_swaps(rng), per_kind * 20):
        if (a, b) not in seen and len(seen) < per_kind:
            seen.add((a, b))
            out.append(("swapped", a, b))
    return out


def hand_written(name: str) -> list[tuple[str, str, str]]:
    """(domain, a, b) rows of bench/data/verifier/<name>.txt."""
    rows = []
    for line in (DATA / f"{name}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, a, b = (part.strip() for part in line.split("|"))
            rows.append((domain, a, b))
    return rows
