"""Run the engine's async code from synchronous callers.

The routing loop is written once, as async code.  Synchronous entry points drive it on one
event loop that lives in a daemon thread, so they also work when the caller is itself inside a
running event loop (a notebook, an async framework calling a sync API).
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Awaitable, Iterator, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="glimp-event-loop", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(awaitable: Awaitable[T]) -> T:
    """Wait for `awaitable` on the background loop; a KeyboardInterrupt cancels it."""
    future = asyncio.run_coroutine_threadsafe(_wrap(awaitable), background_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable


def iterate_sync(stream: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator from sync code; closing the iterator early closes the stream."""
    try:
        while True:
            try:
                item = run_sync(stream.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            run_sync(aclose())
