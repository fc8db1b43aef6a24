"""Hard negatives for the pair verifier's TRAINING pairs (label 0: another question):
an opposed or sibling word swapped in, the two arguments around a directional word
swapped, a number changed, a negation added, a scope added, a name replaced. The
word lists are the training ones; ``bench.train_verifier_eval`` has its own. See
``bench.train_verifier_pairs``."""

from __future__ import annotations

import random
import re

from bench.rewrite import match_case

# Opposed pairs, one direction each way (training list; the evaluation list differs).
_OPPOSED = """safe/unsafe safe/dangerous increase/decrease increasing/decreasing
    adults/children adult/child on/off ascending/descending bigger/smaller
    larger/smaller soft/hard hot/cold best/worst good/bad better/worse buy/sell
    before/after first/last top/bottom enable/disable
    open/close start/stop add/remove minimum/maximum min/max legal/illegal
    possible/impossible true/false positive/negative men/women male/female
    boys/girls husband/wife rich/poor cheap/expensive high/low higher/lower
    easy/hard fast/slow faster/slower strong/weak import/export upload/download
    love/hate like/dislike win/lose winning/losing gain/lose more/less most/least
    long/short longer/shorter heavy/light heavier/lighter early/late old/new
    older/younger young/old private/public internal/external input/output
    encrypt/decrypt encode/decode compress/decompress lock/unlock connect/disconnect
    install/uninstall subscribe/unsubscribe north/south east/west left/right
    inside/outside above/below raise/lower accept/reject pass/fail
    advantages/disadvantages pros/cons benefits/risks success/failure happy/sad
    wet/dry thick/thin wide/narrow deep/shallow loud/quiet dark/light
    push/pull send/receive borrow/lend import/export mother/father son/daughter
    brother/sister boyfriend/girlfriend king/queen day/night summer/winter
    morning/evening hire/fire join/leave allow/block include/exclude
    overestimate/underestimate overweight/underweight beginner/expert
    cause/cure rise/fall asleep/awake healthy/unhealthy legal/illegal
    vegetarian/vegan raw/cooked frozen/fresh sweet/sour"""
OPPOSED: dict[str, list[str]] = {}
for _pair in _OPPOSED.split():
    _x, _y = _pair.split("/")
    OPPOSED.setdefault(_x, []).append(_y)
    OPPOSED.setdefault(_y, []).append(_x)

DIRECTIONAL = ("to", "into", "from", "than", "vs", "vs.", "versus", "before", "after", "over")
_AUX = re.compile(
    r"\b(can|is|are|do|does|did|should|will|would|could|was|were|has|have)\s+(\w+)", re.I
)
_DIGITS = re.compile(r"\b\d+(?:\.\d+)?\b")
_CAPITAL = re.compile(r"(?<=[a-z,] )[A-Z][a-z]{2,}\b")
_WORDS = re.compile(r"[A-Za-z]+")

# Names for entity swaps (training list).
NAMES = [
    "India",
    "China",
    "Japan",
    "Germany",
    "France",
    "Italy",
    "Spain",
    "Brazil",
    "Canada",
    "Mexico",
    "Russia",
    "Australia",
    "Egypt",
    "Kenya",
    "Nigeria",
    "Turkey",
    "Iran",
    "Pakistan",
    "Bangladesh",
    "Vietnam",
    "Thailand",
    "London",
    "Paris",
    "Berlin",
    "Tokyo",
    "Delhi",
    "Mumbai",
    "Chennai",
    "Boston",
    "Chicago",
    "Seattle",
    "Toronto",
    "Python",
    "Java",
    "Ruby",
    "Perl",
    "Swift",
    "Kotlin",
    "Rust",
    "Scala",
    "Haskell",
    "Android",
    "Windows",
    "Linux",
    "Google",
    "Amazon",
    "Facebook",
    "Apple",
    "Microsoft",
    "Netflix",
    "Uber",
    "Tesla",
    "Samsung",
    "Intel",
    "Trump",
    "Obama",
    "Clinton",
    "Modi",
    "Lincoln",
    "Einstein",
    "Newton",
    "Darwin",
    "Shakespeare",
    "Gandhi",
]

STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "be",
        "my",
        "your",
        "i",
        "you",
        "it",
        "this",
        "that",
        "what",
        "which",
        "who",
        "how",
        "why",
        "when",
        "where",
        "do",
        "does",
        "can",
        "should",
    ]
)


def opposed(text: str, rng: random.Random) -> str | None:
    words = [m for m in _WORDS.finditer(text) if m.group().lower() in OPPOSED]
    if not words:
        return None
    m = rng.choice(words)
    new = match_case(rng.choice(OPPOSED[m.group().lower()]), m.group())
    return text[: m.start()] + new + text[m.end() :]


_MOVE = frozenset(
    [
        "convert",
        "converting",
        "translate",
        "translating",
        "switch",
        "switching",
        "move",
        "moving",
        "migrate",
        "migrating",
        "transfer",
        "transferring",
        "change",
        "changing",
        "travel",
        "fly",
        "drive",
        "go",
        "going",
        "send",
        "sending",
        "port",
    ]
)
_FROM_TO = re.compile(r"\b(from) (\w+) (to|into) (\w+)", re.I)


def swapped(text: str, rng: random.Random) -> str | None:
    """'A to B' -> 'B to A' for one content word on each side of a directional word."""
    m = _FROM_TO.search(text)
    if m is not None and m.group(2).lower() != m.group(4).lower():
        a, b = m.group(2), m.group(4)
        return text[: m.start()] + f"{m.group(1)} {b} {m.group(3)} {a}" + text[m.end() :]
    tokens = text.rstrip("?").split()
    spots = []
    for i in range(1, len(tokens) - 1):
        word = tokens[i].lower()
        left = i - 2 if word == "than" else i - 1
        if left < 0 or word not in DIRECTIONAL:
            continue
        if word in ("to", "into", "from") and not _MOVE & {
            t.lower() for t in tokens[max(0, i - 4) : i]
        }:
            continue
        right = i + 2 if tokens[i + 1].lower() in ("a", "an", "the") else i + 1
        if right >= len(tokens):
            continue
        x, y = tokens[left].lower(), tokens[right].lower()
        if x not in STOP and y not in STOP and x != y:
            spots.append((left, right))
    if not spots:
        return None
    i, j = rng.choice(spots)
    tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens) + ("?" if text.endswith("?") else "")


def number(text: str, rng: random.Random) -> str | None:
    m = _DIGITS.search(text)
    if m is None:
        return None
    value = float(m.group())
    step = rng.choice((1, 2, 3, 5, 10, 100))
    new = value + step if rng.random() < 0.5 or value <= step else value - step
    new_text = f"{new:g}" if "." in m.group() else str(int(new))
    return text[: m.start()] + new_text + text[m.end() :]


_SUBJECT_AUX = re.compile(
    r"\b(i|you|we|they|he|she|it|people|one) (can|should|do|does|did|will|would|could|must)"
    r" (\w+)",
    re.I,
)
_WHY_AUX = re.compile(r"^(why|how come|when) (is|are|do|does|did|can|should|was|were) ", re.I)
_AUX_SUBJECT = re.compile(r"\b(should|can|do|does|could|would|will) (i|you|we|they|it) ", re.I)
_NT = {"can": "can't", "will": "won't"}


def negated(text: str, rng: random.Random) -> str | None:
    if re.search(r"\b(not|no|never|without)\b|n't", text, re.I):
        return None
    m = _AUX_SUBJECT.search(text) or _SUBJECT_AUX.search(text)
    if m is not None:
        return text[: m.end(2)] + " not" + text[m.end(2) :]
    m = _WHY_AUX.match(text)
    if m is not None:
        aux = m.group(2).lower()
        return f"{m.group(1)} {_NT.get(aux, aux + 'n' + chr(39) + 't')} " + text[m.end() :]
    return None


_QUALIFIERS = (
    " for beginners",
    " for kids",
    " at night",
    " for free",
    " online",
    " as a student",
    " in winter",
    " for a small business",
    " on a budget",
    " at home",
    " for women",
    " in the long term",
    " for seniors",
    " during pregnancy",
    " on Windows",
    " on a Mac",
)


def qualified(text: str, rng: random.Random) -> str | None:
    """A scope added on one side: 'best way to learn X' vs '... for beginners'."""
    if not text.endswith("?") or len(text) > 120:
        return None
    return text[:-1].rstrip() + rng.choice(_QUALIFIERS) + "?"


def entity(text: str, rng: random.Random) -> str | None:
    found = [m for m in _CAPITAL.finditer(text)]
    named = [m for m in found if m.group() in NAMES] or found
    if not named:
        return None
    m = rng.choice(named)
    new = rng.choice([n for n in NAMES if n.lower() not in text.lower()])
    return text[: m.start()] + new + text[m.end() :]


# Sibling terms (training list): one of a group for another changes the
# answer though a sentence vector, and a model that has not seen it, reads
# them as near-synonyms. Written for training, apart from the evaluation
# sets; the pairs those sets were seen to let through (bits/bytes,
# buyer/seller, read/write, key/value, front/rear, ...) are left out on
# purpose, so the evaluation still measures what the model learned of the
# kind, not of the words.
_SIBLINGS = """inch/foot/yard centimeter/meter/kilometer ounce/gram cup/tablespoon/teaspoon
    minute/hour/day/week/month/year celsius/kelvin acre/mile watt/volt/amp
    landlord/tenant employer/employee teacher/student doctor/nurse/patient
    uncle/aunt/cousin/nephew/niece grandmother/grandfather
    dog/cat/rabbit/hamster/horse/parrot chicken/beef/pork/fish/tofu/lamb
    rice/pasta/bread/potato/quinoa bake/fry/boil/grill/roast/steam
    sugar/salt/flour/honey coffee/tea/beer/wine/milk
    heart/lung/liver/kidney/brain/stomach headache/fever/cough/rash/nausea
    knee/elbow/shoulder/ankle/wrist/hip vitamin/mineral/protein/fiber
    stock/bond/option/crypto/fund loan/mortgage/lease savings/checking
    credit/debit income/profit/revenue salary/bonus/pension tax/fee/fine
    array/list/tuple/dictionary/set frontend/backend server/client
    merge/rebase/cherry-pick thread/process/coroutine ram/cpu/gpu/ssd
    html/css/json/xml/yaml laptop/desktop/tablet/phone/router keyboard/mouse/monitor
    email/text/call photo/video/song rent/buy/lease/sell cancel/pause/renew
    delete/archive/hide/mute create/edit/copy/move learn/teach/practice
    walk/run/swim/cycle/climb breakfast/lunch/dinner monday/tuesday/friday/sunday
    january/april/july/october morning/afternoon/evening spring/autumn
    train/bus/plane/ferry/taxi passport/visa/license hotel/hostel/apartment
    physics/chemistry/biology/history/geography piano/guitar/violin/drums
    football/basketball/tennis/cricket/baseball novel/poem/essay/article
    daily/weekly/monthly/yearly first/second/third/fourth"""
SIBLINGS: dict[str, list[str]] = {}
for _group in _SIBLINGS.split():
    _members = _group.split("/")
    for _word in _members:
        SIBLINGS.setdefault(_word, []).extend(m for m in _members if m != _word)


def sibling(text: str, rng: random.Random) -> str | None:
    """One word replaced by a sibling term: 'cook chicken' vs 'cook pork'."""
    found = [m for m in _WORDS.finditer(text) if m.group().lower() in SIBLINGS]
    if not found:
        return None
    m = rng.choice(found)
    new = rng.choice(SIBLINGS[m.group().lower()])
    return text[: m.start()] + match_case(new, m.group()) + text[m.end() :]
