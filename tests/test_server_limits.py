"""`glimp serve` holds its ground: admission (a 429 at once past the line), the operator's
ceilings, bounded requests, bodies that are not JSON, too large or too slow, and keys from a file.
On the scripted pair, whose runs can be held open at will."""

import asyncio
import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter
from glimp_integrations.serve import running_server, scrape
from glimp_integrations.serve.keys import KeyRing
from glimp_integrations.serve.limits import ServerLimits
from tests.scripted_pairs import PLAIN_ANSWER, scripted_pair

QUESTION = [{"role": "user", "content": "What is 3 x 3?"}]


class HeldPair(type(scripted_pair())):
    """The scripted pair, whose runs wait at their start until `release` is set."""

    def __init__(self) -> None:
        pair = scripted_pair()
        super().__init__(pair.models["small"], pair.models["large"])
        self.release = threading.Event()

    async def open_session(self, role, spec):
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().open_session(role, spec)


def test_past_the_line_a_request_gets_a_429_at_once_and_the_admitted_ones_finish():
    backend = HeldPair()
    limits = ServerLimits(max_concurrent_runs=1, max_queued_runs=1)
    with running_server(GlimpRouter(backend=backend), limits=limits) as url:

        def ask() -> tuple[float, httpx.Response]:
            started = time.monotonic()
            response = httpx.post(url + "/chat/completions", json={"messages": QUESTION}, timeout=60)
            return time.monotonic() - started, response

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = [pool.submit(ask) for _ in range(2)]
            while scrape(url, "glimp_runs_queued") < 1:  # one runs (held), one waits in line
                time.sleep(0.02)
            refused = [pool.submit(ask).result() for _ in range(2)]
            assert scrape(url, "glimp_runs_queued") == 1
            backend.release.set()
            admitted = [future.result() for future in first]
        for seconds, response in refused:
            error = response.json()["error"]
            assert response.status_code == 429 and seconds < 2  # at once: the held runs take until released
            assert error["type"] == "rate_limit_error" and int(response.headers["retry-after"]) >= 1
        assert all(
            r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == PLAIN_ANSWER for _, r in admitted
        )
        assert scrape(url, "glimp_rejected_requests_total", reason="capacity") == 2
        assert scrape(url, "glimp_runs_queued") == 0 and scrape(url, "glimp_runs_running") == 0


@pytest.fixture(scope="module")
def url():
    router = GlimpRouter(backend=scripted_pair(), reasoning_budget=100, timeout=30)
    with running_server(router, limits=ServerLimits(body_timeout=1.0, max_body_bytes=64 * 1024)) as url:
        yield url


def post(url: str, path: str = "/chat/completions", **fields) -> httpx.Response:
    return httpx.post(url + path, json={"messages": QUESTION, **fields}, timeout=30)


@pytest.mark.parametrize(
    "fields, fragment, reason",
    [
        ({"reasoning_budget": 10**12}, "must be at most 100, this server's ceiling", "over_ceiling"),
        ({"timeout": 1e300}, "must be at most 30", "over_ceiling"),
        ({"policy": "always_large"}, "operator's to set", "not_allowed"),
        ({"probe_ladder": [1] * 5000}, "operator's to set", "not_allowed"),
        ({"threshold": 50}, "must be from 0.0 to 20.0", "bad_request"),
    ],
)
def test_the_operators_settings_are_ceilings(url, fields, fragment, reason):
    (name,) = fields
    before = scrape(url, "glimp_rejected_requests_total", reason=reason)
    response = post(url, **fields)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == name and fragment in error["message"]
    assert scrape(url, "glimp_rejected_requests_total", reason=reason) == before + 1


def test_a_request_may_ask_for_less_and_name_the_operators_own_values(url):
    response = post(url, reasoning_budget=50, timeout=10, threshold=2.0, policy="glimpse")
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == PLAIN_ANSWER


def test_an_operator_may_let_clients_choose_more():
    limits = ServerLimits(client_settings=("threshold", "policy"))
    with running_server(GlimpRouter(backend=scripted_pair()), limits=limits) as url:
        assert post(url, policy="always_large").status_code == 200
        assert post(url, reasoning_budget=10).json()["error"]["param"] == "reasoning_budget"


DEEP = {"type": "object", "properties": {}}
for _ in range(200):  # 400 levels of JSON: it broke the constraint deepcopy (a 500) before
    DEEP = {"type": "object", "properties": {"x": DEEP}}


@pytest.mark.parametrize(
    "path, fields, param, fragment",
    [
        ("/chat/completions", {"stop": ["x"] * 17}, "stop", "at most 16 strings"),
        ("/chat/completions", {"stop": ["x" * 300]}, "stop", "at most 256 are taken"),
        (
            "/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": DEEP}}},
            "response_format",
            "nests deeper than 64 levels",
        ),
        ("/chat/completions", {"structured_outputs": {"json": DEEP}}, "structured_outputs", "nests deeper"),
        (
            "/chat/completions",
            {"tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(129)]},
            "tools",
            "at most 128 function tools",
        ),
        (
            "/responses",
            {"text": {"format": {"type": "json_schema", "name": "d", "schema": DEEP}}},
            "text",
            "nests deeper",
        ),
    ],
)
def test_counts_lengths_and_schema_depths_are_bounded(path, fields, param, fragment):
    limits = ServerLimits()  # the default body limit: a deep schema is small
    with running_server(GlimpRouter(backend=scripted_pair()), limits=limits) as url:
        body = {"input": "What is 3 x 3?", **fields} if path == "/responses" else {"messages": QUESTION, **fields}
        response = httpx.post(url + path, json=body, timeout=30)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param and fragment in error["message"], error


def test_a_body_must_say_it_is_json(url):
    response = httpx.post(url + "/chat/completions", content=json.dumps({"messages": QUESTION}), timeout=30)
    assert response.status_code == 415 and "application/json" in response.json()["error"]["message"]
    text = httpx.post(url + "/chat/completions", content="hi", headers={"Content-Type": "text/plain"}, timeout=30)
    assert text.status_code == 415


def _raw(url: str, head: bytes, chunks: list[bytes], pause: float) -> bytes:
    """Send a request by hand (headers, then body chunks `pause` seconds apart); its answer's bytes."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head)
        try:
            for chunk in chunks:
                time.sleep(pause)
                connection.sendall(chunk)
        except OSError:  # the server answered and closed before the body was whole
            pass
        answer = b""
        while not answer.endswith(b"}") and (data := connection.recv(65536)):
            answer += data
    return answer


def test_a_slow_body_gets_a_408_and_an_endless_chunked_one_a_413(url):
    body = json.dumps({"messages": QUESTION}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    slow = _raw(url, head, [body[i : i + 4] for i in range(0, len(body), 4)], pause=0.3)
    assert slow.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 10
    chunked_head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    endless = _raw(url, chunked_head, [chunk] * 64, pause=0.0)  # 1 MiB sent, no size declared
    assert endless.startswith(b"HTTP/1.1 413")
    assert scrape(url, "glimp_rejected_requests_total", reason="body_timeout") >= 1
    assert scrape(url, "glimp_rejected_requests_total", reason="body_too_large") >= 1
    assert post(url).status_code == 200  # and the server goes on


def test_keys_from_a_file_each_named_read_again_and_the_docs_behind_them(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-alpha-1 alpha\n# a comment\nsk-beta-2\n")
    ring = KeyRing(api_key_file=keys)
    with running_server(GlimpRouter(backend=scripted_pair()), keys=ring) as url:
        base = url.removesuffix("/v1")

        def status(path: str, key: str | None = None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.get(base + path, headers=headers, timeout=30).status_code

        assert [status("/v1/models", key) for key in ("sk-alpha-1", "sk-beta-2", "sk-gamma", None)] == [
            200,
            200,
            401,
            401,
        ]
        assert status("/openapi.json") == status("/docs") == 401 and status("/openapi.json", "sk-alpha-1") == 200
        assert [status(path) for path in ("/livez", "/readyz", "/health", "/metrics", "/")] == [200] * 5
        assert scrape(url, "glimp_key_requests_total", key="alpha") == 2
        assert scrape(url, "glimp_key_requests_total", key="key-3") == 1  # unnamed: named by its line
        keys.write_text("sk-gamma gamma\n")
        ring.reload()  # what SIGHUP does in `glimp serve --api-key-file`
        assert [status("/v1/models", key) for key in ("sk-alpha-1", "sk-gamma")] == [401, 200]
        keys.write_text("")
        with pytest.raises(GlimpConfigError, match="holds no key"):
            ring.reload()
        assert status("/v1/models", "sk-gamma") == 200  # a bad file keeps the keys in use


@pytest.mark.embedded
def test_livez_answers_at_once_while_the_largest_prompts_are_read_and_tokenized():
    """The body is parsed, and the prompt templated and tokenized, off the event loop: the probes
    answer within 200 ms while the largest body taken (16 MiB, refused before tokenizing: it cannot
    fit) and the longest prompt that is tokenized (about a second of it here) are processed."""
    from transformers import AutoTokenizer

    from glimp_integrations.backends.base import longest_token_chars
    from glimp_integrations.embedded import embedded_model_dir

    sentence = "The quick brown fox jumps over the lazy dog. "
    tokenized_chars = 2 * longest_token_chars(AutoTokenizer.from_pretrained(embedded_model_dir())) * 8192 - 4096
    prompts = [
        sentence * ((ServerLimits().max_body_bytes - 4096) // len(sentence)),
        sentence * (tokenized_chars // len(sentence)),
    ]
    with running_server(GlimpRouter(reasoning_budget=8, answer_budget=8)) as url:
        base = url.removesuffix("/v1")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            asked = pool.submit(
                lambda: [
                    httpx.post(
                        url + "/chat/completions", json={"messages": [{"role": "user", "content": p}]}, timeout=120
                    )
                    for p in prompts
                ]
            )
            latencies = []
            while not asked.done():
                started = time.monotonic()
                assert httpx.get(base + "/livez", timeout=10).status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)
        responses = asked.result()
    for response, fragment in zip(responses, ("at least", "renders to")):  # neither fits the 8192-token window
        error = response.json()["error"]
        assert response.status_code == 400 and fragment in error["message"] and "8192" in error["message"]
    assert len(latencies) > 5 and max(latencies) < 0.2, sorted(latencies)[-5:]


def test_the_playground_offers_only_the_settings_a_request_may_change():
    with running_server(GlimpRouter(backend=scripted_pair())) as url:
        page = httpx.get(url.removesuffix("/v1") + "/").text
    defaults = json.loads(page.split("const DEFAULTS = ", 1)[1].split(";\n", 1)[0])
    assert (
        defaults["client_settings"] == list(ServerLimits().client_settings)
        and "policy" not in defaults["client_settings"]
    )
    assert "$(id).disabled = !ALLOWED.has(field)" in page


def test_a_server_answers_only_to_its_allowed_host_names():
    """A page on evil.example that rebinds its name to 127.0.0.1 reaches the socket, not the API."""
    with running_server(GlimpRouter(backend=scripted_pair()), allowed_hosts=("127.0.0.1", "localhost")) as url:
        assert httpx.get(url + "/models").status_code == 200
        rebound = httpx.get(url + "/models", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400 and "evil.example" in rebound.json()["error"]["message"]
        assert scrape(url, "glimp_rejected_requests_total", reason="bad_host") == 1


def test_each_key_has_its_own_request_and_token_budget(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-a team-a\nsk-b team-b\n")
    limits = ServerLimits(requests_per_minute=2)
    with running_server(GlimpRouter(backend=scripted_pair()), keys=KeyRing(api_key_file=keys), limits=limits) as url:

        def ask(key: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.post(url + "/chat/completions", json={"messages": QUESTION}, headers=headers, timeout=30)

        assert [ask("sk-a").status_code for _ in range(3)] == [200, 200, 429]
        assert ask("sk-b").status_code == 200  # another key, another bucket
        refused = ask("sk-a")
        assert "team-a" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
        assert scrape(url, "glimp_rejected_requests_total", reason="rate_limit") == 2
    with running_server(
        GlimpRouter(backend=scripted_pair()), keys=KeyRing(api_key_file=keys), limits=ServerLimits(tokens_per_minute=10)
    ) as url:
        first = httpx.post(
            url + "/chat/completions", json={"messages": QUESTION}, headers={"Authorization": "Bearer sk-a"}, timeout=30
        )
        used = first.json()["usage"]["total_tokens"]
        assert first.status_code == 200 and used > 10  # the run's tokens are counted when it ends ...
        second = httpx.post(
            url + "/chat/completions", json={"messages": QUESTION}, headers={"Authorization": "Bearer sk-a"}, timeout=30
        )
        assert second.status_code == 429 and int(second.headers["retry-after"]) >= (used - 10) * 6  # ... then repaid


def test_a_client_dribbling_its_headers_is_cut_off():
    """Slowloris: the first request's headers must all arrive within `header_timeout` of the
    connection opening; a client sending a header line every 0.3 s is disconnected."""
    with running_server(GlimpRouter(backend=scripted_pair()), limits=ServerLimits(header_timeout=1.0)) as url:
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            started = time.monotonic()
            connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            cut = None
            for number in range(30):
                time.sleep(0.3)
                try:
                    connection.sendall(b"X-Dribble-%d: 1\r\n" % number)
                except OSError:
                    cut = time.monotonic() - started
                    break
                connection.settimeout(0.01)
                try:
                    if connection.recv(1) == b"":
                        cut = time.monotonic() - started
                        break
                except TimeoutError:
                    pass
            assert cut is not None and cut < 3, cut
        assert post(url).status_code == 200  # a prompt client is served
