"""Concurrent runs on the transformers backend share forward passes (`backends/batching.py`), on the
real embedded model: each run's text, decisions and seeded sampling are its own; a cancelled run
leaves the others going; the batch size is capped."""

import asyncio
import threading

import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter, StepStarted

pytestmark = pytest.mark.embedded

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "List three facts about the moon, one paragraph each.",
    "Explain how to make tea, step by step.",
    "What are the four seasons? Describe each in a paragraph.",
]
RUN = {"reasoning_budget": 40, "answer_budget": 24}


def worker(router: GlimpRouter):
    """The model worker of the embedded pair (both roles are the same model, so one worker)."""
    return router.backend.models["small"].worker  # type: ignore[attr-defined]


def outcome(trace):
    return trace.reasoning, trace.answer, [(s.model, s.text, s.tokens) for s in trace.steps]


async def alone_then_together(router: GlimpRouter, runs: list[tuple[str, dict]]):
    alone = [await router.arun(question, **overrides) for question, overrides in runs]
    return alone, await together_again(router, runs)


async def together_again(router: GlimpRouter, runs: list[tuple[str, dict]]):
    return await asyncio.gather(*(router.arun(question, **overrides) for question, overrides in runs))


@pytest.fixture(scope="module")
def router() -> GlimpRouter:
    """The embedded pair in `think` mode, reasoning routed at a threshold that sends steps both ways."""
    return GlimpRouter(seed=0, threshold=2.5, **RUN)


def test_greedy_runs_batched_equal_their_runs_alone_token_for_token(router):
    """Different settings in one batch: greedy, a stop sequence, a constrained answer (its grammar
    mask applies to its row only)."""
    runs = [
        (QUESTIONS[0], {"temperature": 0}),
        (QUESTIONS[1], {"temperature": 0, "stop": ["moon"]}),
        (QUESTIONS[2], {"temperature": 0, "response_format": {"type": "json_object"}}),
        (QUESTIONS[3], {"temperature": 0, "threshold": 0.5}),
    ]
    worker(router).largest_batch = 0
    alone, together = asyncio.run(alone_then_together(router, runs))
    assert worker(router).largest_batch >= 2  # the runs did share forward passes
    for one, batched in zip(alone, together):
        assert outcome(batched) == outcome(one)
    assert {s.model for t in together for s in t.steps} == {"small", "large"}
    assert "moon" not in together[1].answer


def test_seeded_sampling_is_each_runs_own_in_a_batch(router):
    """Each session samples with its own generator: a seeded run gives the same text in a batch with
    others, and two batches of the same runs agree."""
    runs = [(q, {"seed": i, "temperature": 0.6 + 0.1 * i}) for i, q in enumerate(QUESTIONS)]
    alone, together = asyncio.run(alone_then_together(router, runs))
    again = asyncio.run(together_again(router, runs))
    assert [outcome(t) for t in together] == [outcome(t) for t in alone] == [outcome(t) for t in again]


def test_a_cancelled_run_leaves_the_batch_and_the_others_finish(router):
    async def scenario():
        writing = asyncio.Event()

        async def consume():
            async for event in router.astream(QUESTIONS[3], temperature=0, reasoning_budget=200):
                if isinstance(event, StepStarted) and event.index == 1:
                    writing.set()

        others = [asyncio.create_task(router.arun(q, temperature=0, reasoning_budget=120)) for q in QUESTIONS[:2]]
        doomed = asyncio.create_task(consume())
        await writing.wait()
        await asyncio.sleep(0.2)  # tokens of its step are being decoded with the others'
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        # the cancelled run has left the worker by the time its task ends: only the others' rows remain
        rows_left = len(worker(router)._rows) + len(worker(router)._waiting)
        finished = await asyncio.gather(*others)
        alone = [await router.arun(q, temperature=0, reasoning_budget=120) for q in QUESTIONS[:2]]
        return rows_left, finished, alone

    rows_left, finished, alone = asyncio.run(scenario())
    assert rows_left <= 2
    assert [outcome(t) for t in finished] == [outcome(t) for t in alone]


def test_max_batch_size_caps_the_rows_fed_together():
    capped = GlimpRouter(seed=0, backend_options={"max_batch_size": 2}, **RUN)
    worker(capped).largest_batch = 0
    asyncio.run(alone_then_together(capped, [(q, {"temperature": 0}) for q in QUESTIONS]))
    assert worker(capped).largest_batch == 2


@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True])
def test_a_bad_max_batch_size_is_an_error_that_names_it(value):
    with pytest.raises(GlimpConfigError, match=r"backend_options\.max_batch_size") as raised:
        GlimpRouter(backend_options={"max_batch_size": value})
    assert "1 or more" in str(raised.value) and repr(value) in str(raised.value)


def test_ragged_rows_fed_together_get_the_logits_they_get_alone(router):
    """The batch's padding: caches of different lengths, several new tokens each (a prefill) and one
    (decoding), give each row the logits it gets fed alone."""
    import torch

    from glimp_integrations.backends.batching import _Batch

    loaded = router.backend.models["small"]
    tokenizer = loaded.tokenizer
    texts = ["The moon is", "Tea is made by boiling water and then", "Seasons", "One two three four five six"]
    ids = [tokenizer(t)["input_ids"] for t in texts]

    class Row:
        def __init__(self, session, feeding):
            self.session, self.feeding = session, feeding

    def fresh_session(prompt_ids):
        from glimp_integrations.backends.transformers import TransformersSession

        session = object.__new__(TransformersSession)
        session._loaded, session._torch = loaded, torch
        session._cache, session._cached_ids, session._next_logits = None, [], None
        if prompt_ids:
            with torch.inference_mode():
                session._feed(prompt_ids)
        return session

    with torch.inference_mode():
        for split in (0, 1, 2):  # no cache (first prefills), caches and prefills, caches and one token each
            cuts = [0 if split == 0 else len(i) // 2 if split == 1 else len(i) - 1 for i in ids]
            alone = []
            for i, cut in zip(ids, cuts):
                session = fresh_session(i[:cut])
                session._feed(i[cut:])
                alone.append(session._next_logits)
            rows = [Row(fresh_session(i[:cut]), i[cut:]) for i, cut in zip(ids, cuts)]
            batch = _Batch(rows, loaded.model.config, torch)
            batch.feed(loaded.model, torch)
            batch.take_back()
            for row, expected, i in zip(rows, alone, ids):
                assert torch.allclose(row.session._next_logits, expected, atol=1e-3)
                assert int(row.session._next_logits.argmax()) == int(expected.argmax())
                assert row.session._cached_ids == i
                assert row.session._cache.get_seq_length() == len(i)  # its own part, padding left out


def test_langchain_batch_and_abatch_keep_every_input_in_flight():
    """LangChain's default pool has cores + 4 threads; `batch` gives each input its own, so the
    engine batches them all; `abatch` gathers them on one loop."""
    from langchain_glimp import ChatGlimpRouter

    llm = ChatGlimpRouter(seed=0, temperature=0, reasoning_budget=16, max_tokens=8)
    inputs = [f"Say the number {n}." for n in range(10)]
    in_flight, most, lock = 0, 0, threading.Lock()
    original = GlimpRouter.astream

    def counting_astream(self, *args, **kwargs):
        async def counted():
            nonlocal in_flight, most
            with lock:
                in_flight += 1
                most = max(most, in_flight)
            try:
                async for event in original(self, *args, **kwargs):
                    yield event
            finally:
                with lock:
                    in_flight -= 1

        return counted()

    GlimpRouter.astream = counting_astream  # type: ignore[method-assign]
    try:
        batched = llm.batch(inputs)
        assert most == len(inputs)
        most = 0
        abatched = asyncio.run(llm.abatch(inputs))
        assert most == len(inputs)
    finally:
        GlimpRouter.astream = original  # type: ignore[method-assign]

    def written(message):
        return [block.get("reasoning", block.get("text")) for block in message.content_blocks]

    in_turn = [written(llm.invoke(i)) for i in inputs]
    assert [written(m) for m in batched] == in_turn
    assert [written(m) for m in abatched] == in_turn


def test_glimp_serve_on_the_default_backend_batches_concurrent_clients(router):
    """Clients of `glimp serve` in flight together share forward passes, and each gets the answer
    its request gets alone."""
    import httpx

    from glimp_integrations.serve import running_server

    bodies = [
        {"model": "glimp", "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 24}
        for q in QUESTIONS
    ]
    with running_server(router) as url:

        def answer(body: dict) -> str:
            response = httpx.post(url + "/chat/completions", json=body, timeout=300)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"]

        alone = [answer(body) for body in bodies]
        worker(router).largest_batch = 0
        threads, together = [], [""] * len(bodies)
        for index, body in enumerate(bodies):
            threads.append(threading.Thread(target=lambda i=index, b=body: together.__setitem__(i, answer(b))))
            threads[-1].start()
        for thread in threads:
            thread.join()
    assert worker(router).largest_batch >= 2
    assert together == alone


def test_llamaindex_async_calls_batch(router):
    """`GlimpRouterLLM.acomplete` calls gathered on one loop share forward passes (the LLM loads
    the same embedded model, so the same worker)."""
    from llamaindex_glimp import GlimpRouterLLM

    llm = GlimpRouterLLM(seed=0, temperature=0, reasoning_budget=16, max_tokens=8)

    async def alone_then_together():
        alone = [await llm.acomplete(q) for q in QUESTIONS]
        worker(router).largest_batch = 0
        return alone, await asyncio.gather(*(llm.acomplete(q) for q in QUESTIONS))

    alone, together = asyncio.run(alone_then_together())
    assert worker(router).largest_batch >= 2
    assert [r.text for r in together] == [r.text for r in alone]
