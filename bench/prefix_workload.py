"""The prompts of ``bench.prefix_routing``: each user's next request for a workload
(multi-turn conversations on shared system prompts, unique documents, one hot
system prompt), and the hit rate an ideal prefix cache would get on them."""

from __future__ import annotations

import random

from mockllm.prefix_cache import BLOCK_TOKENS, block_hashes
from mockllm.tokens import VOCABULARY

WORDS = VOCABULARY


class Text:
    """Random words, cheaply: slices of one long seeded text."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self._pool = " ".join(rng.choice(WORDS) for _ in range(400_000))

    def tokens(self, n: int) -> str:
        start = self.rng.randrange(len(self._pool) - 4 * n - 1)
        return self._pool[start : start + 4 * n]


Messages = list[dict[str, str]]


class Workload:
    """Each user's next request; ``kind`` is multi-turn, unique or hot."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.seed = seed
        self.text = Text(seed)
        rng = self.text.rng
        self.systems = [
            f"System prompt {seed}-{i}. " + self.text.tokens(rng.randint(1500, 2500))
            for i in range(8)
        ]
        self.conversations: dict[int, tuple[Messages, int]] = {}
        self.serial = 0

    def next(self, user: int) -> Messages:
        rng, text = self.text.rng, self.text
        self.serial += 1
        if self.kind == "unique":
            return [
                {
                    "role": "user",
                    "content": f"Document {self.serial} of run {self.seed}. "
                    + text.tokens(rng.randint(1000, 3000)),
                }
            ]
        if self.kind == "hot":
            system = self.systems[0] if rng.random() < 0.8 else rng.choice(self.systems[1:])
            question = f"Question {self.serial}: " + text.tokens(rng.randint(50, 200))
            return [{"role": "system", "content": system}, {"role": "user", "content": question}]
        messages, left = self.conversations.get(user, ([], 0))
        if left <= 0:
            system = self.systems[rng.randrange(len(self.systems))]
            messages, left = [{"role": "system", "content": system}], rng.randint(3, 12)
        elif len(messages) > 1:
            messages = [
                *messages,
                {"role": "assistant", "content": text.tokens(rng.randint(50, 300))},
            ]
        messages = [*messages, {"role": "user", "content": text.tokens(rng.randint(20, 400))}]
        self.conversations[user] = (messages, left - 1)
        return messages


class Ideal:
    """The hit rate of one infinite prefix cache seeing every request, in tokens."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.queries = 0
        self.hits = 0

    def add(self, messages: Messages) -> None:
        rendered = "\n".join(f"{m['role']}\x1f{m['content']}" for m in messages)
        tokens = max(1, (len(rendered.encode()) + 3) // 4)
        hashes = block_hashes(rendered)
        found = 0
        for h in hashes:
            if h not in self.seen:
                break
            found += 1
        self.seen.update(hashes)
        self.queries += tokens
        self.hits += max(0, min(found * BLOCK_TOKENS, tokens - 1))
