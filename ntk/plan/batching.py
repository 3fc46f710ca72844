"""Grouping work items into batches by a token budget (batch size x padded length)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def by_token_budget(items: Iterable[T], n_tokens: Callable[[T], int], budget: int,
                    max_items: int | None = None) -> Iterator[list[T]]:
    """Consecutive items while ``len(batch) * max(tokens)`` stays within ``budget`` (at least one item per batch)."""
    batch: list[T] = []
    longest = 0
    for it in items:
        t = n_tokens(it)
        new_longest = max(longest, t)
        if batch and ((len(batch) + 1) * new_longest > budget or (max_items and len(batch) >= max_items)):
            yield batch
            batch, new_longest = [], t
        batch.append(it)
        longest = new_longest
    if batch:
        yield batch


def auto_token_budget(device_type: str, hidden_size: int, num_layers: int) -> int:
    """A token budget per forward pass that keeps activation memory modest on each device kind."""
    # capped so that per-token buffers that do not scale with hidden size (LM logits: 4107 floats per token)
    # stay bounded for tiny models
    if device_type == "cuda":
        return max(8192, min(131072, int(2**26 // max(hidden_size, 1))))
    return max(2048, min(16384, int(2**22 // max(hidden_size, 1))))
