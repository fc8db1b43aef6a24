"""Which prompt blocks one endpoint probably still holds: an LRU sized to its cache.

The gateway cannot see a model server's prefix cache; it records what it sent
there (every block of each prompt routed to the endpoint) and forgets the
least recently sent first once ``capacity`` blocks are recorded, as the
server's own LRU would. A prompt's blocks are recorded tail first, so its
head is the most recent: the server needs the head to use any of the rest.

It is an estimate per gateway replica: traffic from other gateways and the
server's real evictions are not seen. Pure, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class BlockIndex:
    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: Sequence[int]) -> int:
        """How many leading blocks of the prompt are recorded here."""
        held = self._blocks
        for i, block in enumerate(blocks):
            if block not in held:
                return i
        return len(blocks)

    def record(self, blocks: Sequence[int]) -> None:
        held = self._blocks
        for block in reversed(blocks):
            if block in held:
                held.move_to_end(block)
            else:
                held[block] = None
        while len(held) > self.capacity:
            held.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()
