"""A proxy in front of a real model server that cuts a streamed completion mid-way, as a replica
killed mid-step does."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CuttingProxy(BaseHTTPRequestHandler):
    """Forwards to the real server; cuts the first streamed completion after `CUT_AFTER` events
    (a replica killed mid-step), and records each streamed request and the events it passed on."""

    CUT_AFTER = 4
    upstream = ""
    streamed: list[dict] = []

    def do_GET(self):
        with urllib.request.urlopen(self.upstream + self.path) as response:
            self._reply(response.status, response.read())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        upstream = urllib.request.Request(
            self.upstream + self.path, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(upstream) as response:
            if not request.get("stream"):
                return self._reply(response.status, response.read())
            record = {"request": request, "events": []}
            type(self).streamed.append(record)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in response:
                if line.startswith(b"data: {"):
                    if len(self.streamed) == 1 and len(record["events"]) == self.CUT_AFTER:
                        self.close_connection = True  # no final chunk: the client reads an incomplete body
                        return
                    record["events"].append(json.loads(line[6:]))
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    def _reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def cutting_proxy(
    server_url: str, cut_after: int = CuttingProxy.CUT_AFTER
) -> tuple[type[CuttingProxy], ThreadingHTTPServer]:
    """A running proxy to `server_url` (shut it down when done) and its handler class, which records
    the streamed requests."""
    handler = type(
        "Proxy", (CuttingProxy,), {"upstream": server_url.removesuffix("/v1"), "streamed": [], "CUT_AFTER": cut_after}
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return handler, proxy


class SwitchableProxy(CuttingProxy):
    """Forwards to the real server, uncut, until `down` is set: then every request gets a 500 (a
    model's whole fleet gone); unset, it forwards again."""

    CUT_AFTER = 10**9
    down = False

    def do_GET(self):
        if self.down:
            return self._reply(500, b'{"error": {"message": "no replica", "type": "InternalServerError"}}')
        super().do_GET()

    def do_POST(self):
        if self.down:
            self.rfile.read(int(self.headers["Content-Length"]))
            return self._reply(500, b'{"error": {"message": "no replica", "type": "InternalServerError"}}')
        super().do_POST()


def switchable_proxy(server_url: str) -> tuple[type[SwitchableProxy], ThreadingHTTPServer]:
    """A running `SwitchableProxy` to `server_url` (shut it down when done) and its handler class."""
    handler = type("Switch", (SwitchableProxy,), {"upstream": server_url.removesuffix("/v1"), "streamed": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return handler, proxy
