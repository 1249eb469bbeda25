"""A gate that holds a batch function, for the batching and model server tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class Gate:
    """Wraps a batch function: records every call's items and can hold calls until opened.

    Holding the first batch inside the model is how a test makes later requests queue up
    behind it, deterministically, without sleeping.
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], *, open_: bool = True) -> None:
        self.fn = fn
        self.calls: list[list[Any]] = []
        self._open = threading.Event()
        self.entered = threading.Event()
        if open_:
            self._open.set()

    def close(self) -> None:
        self._open.clear()
        self.entered.clear()

    def open(self) -> None:
        self._open.set()

    def __call__(self, items: list[Any]) -> Sequence[Any]:
        self.calls.append(list(items))
        self.entered.set()
        if not self._open.wait(timeout=30):
            raise TimeoutError("gate was never opened")
        return self.fn(items)

    @property
    def batch_sizes(self) -> list[int]:
        return [len(call) for call in self.calls]
