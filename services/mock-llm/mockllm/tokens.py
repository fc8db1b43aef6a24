"""Deterministic output: the same model and prompt always give the same tokens.

Tokens are readable words drawn from a fixed 256-word vocabulary, one byte of a
BLAKE2b digest of (model, prompt, block number) per token. Every token after the
first starts with a space, as BPE tokens do, so joined tokens read as text.
"""

from __future__ import annotations

import hashlib

_WORDS = """
    the of and to in is that for it as with was on be by at this from or have an
    they which one you were all we her she there would their will when who him been
    has more if no out do so can what up said about other into than its time only
    could new them man some these then two first may any like now my such make over
    our even most me state after also made many did must before back see through way
    where get much go well your know should down work year because come people just
    say each those take day good how long very own while home house world life hand
    part place case week company system program question government number night point
    water room mother area money story fact month lot right study book eye job word
    business issue side kind head service friend father power hour game line end member
    law car city community name president team minute idea kid body information school
    face others level office door health person art war history party result change
    morning reason research girl guy moment air teacher force education river lantern
    garden mountain window bridge forest signal engine harbor pencil candle silver
    orange quiet bright gentle rapid narrow distant simple careful steady clever humble
    eager brave calm fresh green blue yellow north south east west summer winter spring
    autumn music paper stone cloud rain snow wind fire light shadow evening valley meadow
    island planet rocket violin copper marble velvet pepper
    """

VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(_WORDS.split()))[:256]

if len(VOCABULARY) != 256:  # pragma: no cover - one byte of digest picks one word
    raise RuntimeError(f"vocabulary needs 256 distinct words, has {len(VOCABULARY)}")

_BLOCK = 64  # tokens per digest


def generate_tokens(model: str, prompt_key: str, count: int) -> tuple[str, ...]:
    """``count`` tokens for this model and prompt, always the same ones."""
    seed = model.encode() + b"\x00" + prompt_key.encode()
    words: list[str] = []
    block = 0
    while len(words) < count:
        digest = hashlib.blake2b(seed + block.to_bytes(4, "big"), digest_size=_BLOCK).digest()
        words.extend(VOCABULARY[byte] for byte in digest[: count - len(words)])
        block += 1
    return tuple(word if i == 0 else " " + word for i, word in enumerate(words))


def estimate_tokens(text: str) -> int:
    """A stable prompt-size estimate: about four bytes of UTF-8 per token, at least one."""
    return max(1, (len(text.encode()) + 3) // 4)
