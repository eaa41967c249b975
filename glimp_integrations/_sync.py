"""Run the engine's async code from synchronous callers, and one-off work on a thread of its own.

The routing loop is written once, as async code.  Synchronous entry points drive it on one
event loop that lives in a daemon thread, so they also work when the caller is itself inside a
running event loop (a notebook, an async framework calling a sync API).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="glimp-event-loop", daemon=True)
            _thread.start()
            atexit.register(_stop_background_loop)
        return _loop


def _stop_background_loop() -> None:
    """Join the loop's worker threads before interpreter exit: a torch call still running in
    one while the interpreter tears down aborts the process."""
    loop, thread = _loop, _thread
    if loop is None or thread is None or loop.is_closed():
        return
    try:
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=30)
    except (concurrent.futures.TimeoutError, RuntimeError):
        pass  # exiting anyway: a stuck worker must not hang the exit
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


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


def iterate_sync(stream: AsyncIterator[T]) -> Generator[T, None, None]:
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


async def on_background_loop(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` on the background loop from any loop (engines bound to that loop, such
    as vLLM's AsyncLLM, are only ever driven from it).  Cancelling the caller cancels it there."""
    loop = background_loop()
    if asyncio.get_running_loop() is loop:
        return await awaitable
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_wrap(awaitable), loop))


def on_a_passing_thread(function: Callable[[], T]) -> T:
    """`function()`, run on a thread that ends with it (for torch work outside the workers, such as
    loading a model).

    libgomp, torch's OpenMP on Linux, keeps helper threads for each thread that ran a parallel op,
    for as long as that thread lives; once there are more of them than CPUs, every helper sleeps
    between ops instead of waiting for the next one.  A worker's forward passes ran 30% slower (8
    rows of the embedded model on 2 cores) once the main thread had loaded the model itself.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="glimp-torch-setup") as passing:
        return passing.submit(function).result()


_tokenizing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="glimp-tokenize")
"""One thread for chat templates and tokenization: the event loop keeps serving while a long
prompt is encoded (a 4 MB prompt takes ~3 s on a CPU; HF tokenizers release the GIL as they go),
and one thread at a time keeps a tokenizer's state from being shared across threads."""


async def on_the_tokenizer_thread(function: Callable[[], T]) -> T:
    """`function()` (templating, tokenizing) on the tokenizing thread, awaited from the loop."""
    return await asyncio.get_running_loop().run_in_executor(_tokenizing, function)
