"""The prompt's block hashes and the per-endpoint block index."""

from gateway.balance.prefix import BLOCK_BYTES, MAX_BLOCKS, prompt_prefix
from gateway.balance.prefix_index import BlockIndex

SYSTEM = "You are a terse assistant for a hardware shop. " * 60  # about 2,800 bytes


def conversation(*turns: str) -> list[str]:
    parts = ["system", SYSTEM]
    for i, text in enumerate(turns):
        parts += ["user" if i % 2 == 0 else "assistant", text]
    return parts


def test_turns_of_one_conversation_share_their_leading_blocks_and_anchor() -> None:
    first = prompt_prefix(conversation("where are the drills?"))
    later = prompt_prefix(conversation("where are the drills?", "aisle 4", "and saws? " * 80))
    assert later.blocks[: len(first.blocks)] == first.blocks
    assert len(later.blocks) > len(first.blocks)
    assert later.anchor == first.anchor
    assert later.tokens > first.tokens


def test_a_different_system_prompt_shares_nothing_past_its_first_difference() -> None:
    one = prompt_prefix(["system", "A" + SYSTEM, "user", "hi"])
    other = prompt_prefix(["system", "B" + SYSTEM, "user", "hi"])
    assert not set(one.blocks) & set(other.blocks)
    assert one.anchor != other.anchor


def test_only_a_bounded_prefix_is_hashed_but_the_whole_prompt_is_counted() -> None:
    huge = prompt_prefix(["user", "x" * 1_000_000])
    assert len(huge.blocks) == MAX_BLOCKS
    assert 240_000 < huge.tokens < 260_000
    short = prompt_prefix(["user", "hello"])
    assert short.blocks == ()
    assert short.tokens >= 1
    assert len(prompt_prefix(["y" * (BLOCK_BYTES * 2 + 10)]).blocks) == 2


def test_the_index_matches_leading_blocks_only() -> None:
    index = BlockIndex(capacity=100)
    blocks = prompt_prefix(conversation("q " * 400)).blocks
    index.record(blocks[:5])
    assert index.match(blocks) == 5
    assert index.match(blocks[1:]) == 4
    assert index.match(prompt_prefix(["other " * 200]).blocks) == 0


def test_the_index_forgets_the_least_recently_sent_tail_first() -> None:
    index = BlockIndex(capacity=6)
    a = prompt_prefix(["a" * BLOCK_BYTES * 4]).blocks
    b = prompt_prefix(["b" * BLOCK_BYTES * 4]).blocks
    index.record(a)
    index.record(b)  # a's tail goes first: its head is still usable
    assert len(index) == 6
    assert index.match(a) == 2
    assert index.match(b) == 4
    index.clear()
    assert index.match(b) == 0
