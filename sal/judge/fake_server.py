"""A small OpenAI-compatible chat-completions server on 127.0.0.1 that misbehaves on purpose.

For tests and benchmarks of the openai judge without network or GPU: it answers
POST /v1/chat/completions after an optional latency, and a fault schedule can make any
attempt answer 429 with Retry-After, 500, stall past the client's timeout, drop the
connection without a response, or send a malformed body. It counts requests, successful
answers per prompt and the maximum number of requests in flight (a request stops counting
when its answer is about to be written, or when the client hangs up on a stalled one).
It stops by itself after `lifetime_s`.

    python -m sal.judge.fake_server --latency 0.1      # prints its base URL, serves
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

FAULTS = ("429", "500", "stall", "drop", "malformed", "no_choices")

# fault schedule: (prompt, attempt number for this prompt starting at 0) -> fault or None
FaultFn = Callable[[str, int], Optional[str]]
AnswerFn = Callable[[str], str]


def default_answer(prompt: str) -> str:
    """A plausible R1-style answer to any of the paper's prompts."""
    if "Final Decision" in prompt:
        return "<think>Most spans show it. Maybe? No, clearly more.</think>\nFinal Decision: [[Probably]]"
    if "<summary>" in prompt:
        return '<think>All spans end with "=".</think>\n<summary> Exact pattern: "=" at the end </summary>'
    return (
        "<think>Could be Strict, or No... it is a heuristic.</think>\n"
        '<judgement> {"Category": "Plausible", "Relation/Intuition": "checking the result"} </judgement>'
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default listen backlog (5) refuses bursts of new connections

    def handle_error(self, request, client_address) -> None:  # dropped sockets are expected
        pass


class FakeChatServer:
    def __init__(
        self,
        latency_s: float = 0.0,
        faults: Optional[FaultFn] = None,
        answer: AnswerFn = default_answer,
        stall_s: float = 1.0,
        retry_after: str = "0.05",
        lifetime_s: float = 120.0,
    ):
        self.latency_s = latency_s
        self.faults = faults or (lambda prompt, attempt: None)
        self.answer = answer
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.lifetime_s = lifetime_s
        self.lock = threading.RLock()
        self._stalled: dict = {}  # socket -> leave() of a stalled request on it
        self.reset()
        self._server: Optional[_Server] = None
        self._threads: list[threading.Thread] = []

    def reset(self) -> None:
        with self.lock:
            self.n_requests = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.attempts: Counter = Counter()  # prompt -> requests received
            self.ok_answers: Counter = Counter()  # prompt -> successful answers sent
            self.events: dict = defaultdict(list)  # prompt -> [(time, outcome)]
            self.authorizations: set = set()
            self.bodies: list = []

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> str:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # No Nagle: a small answer must not wait for the client's delayed ACK (~40 ms).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                owner._handle(self)

        self._server = _Server(("127.0.0.1", 0), Handler)
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serve.start()
        stopper = threading.Timer(self.lifetime_s, self.stop)
        stopper.daemon = True
        stopper.start()
        self._threads = [serve]
        self._stopper = stopper
        return self.base_url

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        stopper = getattr(self, "_stopper", None)
        if stopper is not None:
            stopper.cancel()

    def __enter__(self) -> "FakeChatServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling ----------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if h.path.rstrip("/") != "/v1/chat/completions":
            return self._send(h, 404, b'{"error": "not found"}')
        try:
            body = json.loads(raw)
            prompt = body["messages"][-1]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return self._send(h, 400, b'{"error": "bad request"}')
        with self.lock:
            self._reap_stalled()
            self.n_requests += 1
            attempt = self.attempts[prompt]
            self.attempts[prompt] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.authorizations.add(h.headers.get("Authorization"))
            self.bodies.append({k: v for k, v in body.items() if k != "messages"})
        fault = self.faults(prompt, attempt)
        counted = True

        def leave(outcome: str) -> None:
            nonlocal counted
            with self.lock:
                if counted:  # once per request, whoever notices first
                    self.in_flight -= 1
                    counted = False
                    self.events[prompt].append((time.monotonic(), outcome))

        try:
            if fault == "stall":
                with self.lock:
                    self._stalled[h.connection] = lambda: leave("stall")
                try:
                    self._stall(h)
                finally:
                    with self.lock:
                        self._stalled.pop(h.connection, None)
                leave("stall")
                h.close_connection = True
                return
            if self.latency_s:
                time.sleep(self.latency_s)
            if fault == "drop":
                leave("drop")
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault == "429":
                leave("429")
                return self._send(h, 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": self.retry_after})
            if fault == "500":
                leave("500")
                return self._send(h, 500, b'{"error": {"message": "internal error"}}')
            if fault == "malformed":
                leave("malformed")
                return self._send(h, 200, b'{"choices": [{"message": {"content": "<judgem')
            if fault == "no_choices":
                leave("no_choices")
                return self._send(h, 200, b'{"object": "error", "message": "overloaded"}')
            content = self.answer(prompt)
            payload = {
                "id": f"chatcmpl-{attempt}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": len(prompt) // 4,
                    "completion_tokens": len(content) // 4,
                    "total_tokens": len(prompt) // 4 + len(content) // 4,
                },
            }
            with self.lock:
                self.ok_answers[prompt] += 1
            leave("ok")
            return self._send(h, 200, json.dumps(payload).encode())
        finally:
            if counted:  # an exception escaped before the outcome was recorded
                leave("error")

    def _reap_stalled(self) -> None:
        """Stop counting stalled requests whose client already hung up. Called (under the
        lock) when a request arrives: a client closes the timed-out connection before it
        reuses the slot, so its FIN is already queued on the stalled socket by then, even
        if the stalled thread has not been scheduled to notice it yet."""
        for sock, leave in list(self._stalled.items()):
            try:
                gone = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                leave()
                del self._stalled[sock]

    def _stall(self, h: BaseHTTPRequestHandler) -> None:
        """Hold the request for stall_s, or until the client hangs up (EOF on the socket)."""
        deadline = time.monotonic() + self.stall_s
        sock = h.connection
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([sock], [], [], remaining)
            if readable:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return
                except OSError:
                    return
                time.sleep(0.005)  # data from a pipelined request: keep stalling

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: Optional[dict] = None) -> None:
        try:
            h.send_response_only(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h._headers_buffer.append(b"\r\n")  # end of headers, sent with the body in one write
            h.wfile.write(b"".join(h._headers_buffer) + data)
            h._headers_buffer = []
            h.wfile.flush()
        except OSError:
            h.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args()
    server = FakeChatServer(latency_s=args.latency, lifetime_s=args.lifetime)
    print(server.start(), flush=True)
    try:
        while server._server is not None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
