"""An OpenAI-compatible chat-completions server on 127.0.0.1 that misbehaves on purpose.

For tests and benchmarks of the openai judge without network or GPU: it answers
POST /v1/chat/completions (plain JSON, or server-sent events when the body asks
``"stream": true``) and GET /v1/models, after an optional latency, and a fault schedule can
make any attempt:

    429        answer 429 with Retry-After (the server's `retry_after`)
    429_long   answer 429 with ``Retry-After: 3600``
    500        answer 500
    stall      hold the request, sending nothing, past the client's timeout
    stall_mid  start the answer (headers and the first events), then hold it
    drop       close the connection without a response
    truncated  close the connection in the middle of the body
    malformed  send a 200 whose body (or one stream event) is not JSON
    no_choices send a 200 JSON body without choices (an error object)
    unfinished end a stream properly but without finish_reason or [DONE]
    401        answer 401 echoing the presented key, as hosted APIs do
    404        answer 404

With `require_key` set, every request presenting another key gets that 401. With `slots`
set, at most that many answers are generated at once and the others wait in a queue,
sending nothing (a one-slot local server behind a client with more concurrency).

It counts requests, successful answers per prompt, the maximum number of requests in
flight (a request stops counting when its answer is about to be written, or when the
client hangs up on a stalled one), how long each stall was held, and answers generated
for clients that had already gone, or that left while queued. It stops by itself after
`lifetime_s`.

    python tests/judge/fault_server.py --latency 0.1      # prints its base URL, serves
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

FAULTS = ("429", "429_long", "500", "stall", "stall_mid", "drop", "truncated", "malformed", "no_choices", "unfinished",
          "401", "404")

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


def echo_401(presented: Optional[str]) -> bytes:
    """What OpenAI-style APIs answer to a wrong key: the key itself, in the message."""
    key = (presented or "").removeprefix("Bearer ").strip()
    return json.dumps({"error": {
        "message": f"Incorrect API key provided: {key}. You can find your API key at https://example.invalid/keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default listen backlog (5) refuses bursts of new connections

    def handle_error(self, request, client_address) -> None:  # dropped sockets are expected
        pass


class FaultServer:
    def __init__(
        self,
        latency_s: float = 0.0,
        faults: Optional[FaultFn] = None,
        answer: AnswerFn = default_answer,
        stall_s: float = 1.0,
        retry_after: str = "0.05",
        lifetime_s: float = 120.0,
        require_key: Optional[str] = None,
        slots: Optional[int] = None,
        split_reasoning: bool = False,
        models_status: int = 200,
    ):
        self.latency_s = latency_s
        self.faults = faults or (lambda prompt, attempt: None)
        self.answer = answer
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.lifetime_s = lifetime_s
        self.require_key = require_key
        self.slots = threading.BoundedSemaphore(slots) if slots else None
        self.split_reasoning = split_reasoning
        self.models_status = models_status
        self.lock = threading.RLock()
        self._stalled: dict = {}  # socket -> leave() of a stalled (or queued) request on it
        self.reset()
        self._server: Optional[_Server] = None
        self._threads: list[threading.Thread] = []

    def reset(self) -> None:
        with self.lock:
            self.n_requests = 0
            self.n_model_requests = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.attempts: Counter = Counter()  # prompt -> requests received
            self.ok_answers: Counter = Counter()  # prompt -> successful answers sent
            self.events: dict = defaultdict(list)  # prompt -> [(time, outcome)]
            self.stall_held: list = []  # seconds each stalled request was held
            self.wasted = 0  # answers generated after the client had hung up
            self.abandoned_in_queue = 0  # requests whose client left while they waited for a slot
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

            def do_GET(self) -> None:
                owner._models(self)

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

    def __enter__(self) -> "FaultServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling ----------------------------------------------------------------
    def _key_refused(self, h: BaseHTTPRequestHandler) -> bool:
        if self.require_key is None or h.headers.get("Authorization") == f"Bearer {self.require_key}":
            return False
        self._send(h, 401, echo_401(h.headers.get("Authorization")))
        return True

    def _models(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.n_model_requests += 1
        if h.path.rstrip("/") != "/v1/models" or self.models_status == 404:
            return self._send(h, 404, b'{"error": "not found"}')
        if self._key_refused(h):
            return
        self._send(h, 200, json.dumps({"object": "list", "data": [{"id": "fake-r1", "object": "model"}]}).encode())

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
            if self.require_key is not None and self._key_refused(h):
                return leave("401")
            if fault == "stall":
                return self._hold(h, leave, "stall")
            if self.slots is not None:  # wait for a generation slot, sending nothing
                if not self._queue(h, leave):
                    return
                try:
                    return self._respond(h, body, prompt, attempt, fault, leave)
                finally:
                    self.slots.release()
            return self._respond(h, body, prompt, attempt, fault, leave)
        finally:
            if counted:  # an exception escaped before the outcome was recorded
                leave("error")

    def _queue(self, h, leave) -> bool:
        """Wait for a generation slot; False (and the request no longer counted in flight)
        when the client hangs up first, as a client that timed out does."""
        with self.lock:  # a new request's arrival stops counting this one once its client left
            self._stalled[h.connection] = lambda: leave("abandoned")
        try:
            while not self.slots.acquire(timeout=0.01):
                if self._client_gone(h.connection):
                    with self.lock:
                        self.abandoned_in_queue += 1
                    leave("abandoned")
                    h.close_connection = True
                    return False
            return True
        finally:
            with self.lock:
                self._stalled.pop(h.connection, None)

    def _respond(self, h, body: dict, prompt: str, attempt: int, fault: Optional[str], leave) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.slots is not None and self._client_gone(h.connection):
            with self.lock:
                self.wasted += 1
        if fault == "drop":
            leave("drop")
            return self._hang_up(h)
        simple = {"429": (429, b'{"error": {"message": "rate limited"}}', {"Retry-After": self.retry_after}),
                  "429_long": (429, b'{"error": {"message": "quota exhausted"}}', {"Retry-After": "3600"}),
                  "500": (500, b'{"error": {"message": "internal error"}}', None),
                  "401": (401, echo_401(h.headers.get("Authorization")), None),
                  "404": (404, b'{"error": {"message": "The model does not exist"}}', None),
                  "no_choices": (200, b'{"object": "error", "message": "overloaded"}', None)}
        if fault in simple:
            leave(fault)
            status, data, headers = simple[fault]
            return self._send(h, status, data, headers)
        content = self.answer(prompt)
        if body.get("stream"):
            return self._stream(h, body, prompt, attempt, content, fault, leave)
        if fault == "malformed":
            leave("malformed")
            return self._send(h, 200, b'{"choices": [{"message": {"content": "<judgem')
        payload = json.dumps(self._completion(body, prompt, attempt, content)).encode()
        if fault == "truncated":
            leave("truncated")
            return self._send(h, 200, payload[: len(payload) // 2], {"Content-Length": str(len(payload))},
                              hang_up=True)
        if fault == "stall_mid":
            self._send(h, 200, payload[:20], {"Content-Length": str(len(payload))})
            return self._hold(h, leave, "stall_mid")
        with self.lock:
            self.ok_answers[prompt] += 1
        leave("ok")
        return self._send(h, 200, payload)

    def _completion(self, body: dict, prompt: str, attempt: int, content: str) -> dict:
        reasoning, content = self._split(content)
        message = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {"id": f"chatcmpl-{attempt}", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": self._usage(prompt, content)}

    @staticmethod
    def _usage(prompt: str, content: str) -> dict:
        return {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                "total_tokens": len(prompt) // 4 + len(content) // 4}

    def _split(self, content: str) -> tuple[str, str]:
        """(reasoning, answer): DeepSeek's API sends R1's thinking apart, in reasoning_content."""
        if self.split_reasoning and content.startswith("<think>") and "</think>" in content:
            thought, _, rest = content[len("<think>"):].partition("</think>")
            return thought, rest.lstrip()
        return "", content

    def _stream(self, h, body: dict, prompt: str, attempt: int, content: str, fault: Optional[str], leave) -> None:
        """Server-sent events as OpenAI sends them: a role delta, content (and reasoning)
        deltas, a finish_reason, the usage when asked for, [DONE]; chunked encoding."""
        reasoning, answer = self._split(content)
        base = {"id": f"chatcmpl-{attempt}", "object": "chat.completion.chunk", "model": body.get("model")}

        def event(delta: dict, finish=None, **extra) -> bytes:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        events = [event({"role": "assistant", "content": ""})]
        events += [event({"reasoning_content": reasoning[i:i + 16]}) for i in range(0, len(reasoning), 16)]
        events += [event({"content": answer[i:i + 16]}) for i in range(0, len(answer), 16)]
        events.append(event({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(f"data: {json.dumps({**base, 'choices': [], 'usage': self._usage(prompt, answer)})}\n\n"
                          .encode())
        events.append(b"data: [DONE]\n\n")
        cut = max(1, len(events) // 2)
        if fault == "malformed":
            events[cut] = b'data: {"choices": [{"delta": {"content": "<judgem\n\n'
        if fault == "unfinished":  # properly ended body, but the answer stops half-way
            events = events[:cut]
        try:
            self._start_chunked(h)
            for data in events[:cut]:
                h.wfile.write(self._chunk(data))
            h.wfile.flush()
            if fault == "stall_mid":
                return self._hold(h, leave, "stall_mid")
            if fault == "truncated":
                leave("truncated")
                return self._hang_up(h)
            ok = fault is None
            if ok:
                with self.lock:
                    self.ok_answers[prompt] += 1
            leave("ok" if ok else fault)
            h.wfile.write(b"".join(self._chunk(d) for d in events[cut:]) + b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    @staticmethod
    def _start_chunked(h) -> None:
        h.send_response_only(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def _hold(self, h, leave, outcome: str) -> None:
        """A stall: hold the request, sending nothing, for stall_s or until the client hangs
        up (EOF on the socket); records how long it was held."""
        start = time.monotonic()
        with self.lock:
            self._stalled[h.connection] = lambda: leave(outcome)
        try:
            self._stall(h)
        finally:
            with self.lock:
                self._stalled.pop(h.connection, None)
                self.stall_held.append(time.monotonic() - start)
        leave(outcome)
        h.close_connection = True

    @staticmethod
    def _hang_up(h) -> None:
        h.close_connection = True
        try:
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @staticmethod
    def _client_gone(sock) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _reap_stalled(self) -> None:
        """Stop counting stalled (or queued) requests whose client already hung up. Called (under the
        lock) when a request arrives: a client closes the timed-out connection before it
        reuses the slot, so its FIN is already queued on the stalled socket by then, even
        if the stalled thread has not been scheduled to notice it yet."""
        for sock, leave in list(self._stalled.items()):
            if self._client_gone(sock):
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

    @classmethod
    def _send(cls, h: BaseHTTPRequestHandler, status: int, data: bytes, headers: Optional[dict] = None,
              hang_up: bool = False) -> None:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        try:
            h.send_response_only(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h._headers_buffer.append(b"\r\n")  # end of headers, sent with the body in one write
            h.wfile.write(b"".join(h._headers_buffer) + data)
            h._headers_buffer = []
            h.wfile.flush()
        except OSError:
            h.close_connection = True
        if hang_up:
            cls._hang_up(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args()
    server = FaultServer(latency_s=args.latency, lifetime_s=args.lifetime)
    print(server.start(), flush=True)
    try:
        while server._server is not None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
