"""A scripted OpenAI-compatible chat.completions server on 127.0.0.1, so tests drive the real ChatOpenAI offline.

Scripts are plain data (JSON-able lists of rules, first match wins):

    {"when": {"last_user_contains": "disk", "has_tool_results": false},
     "reply": {"tool_calls": [{"name": "http_check", "args": {"url": "http://x"}}], "text": "checking"},
     "times": 1}

Matchers (all given must hold; all text matches are case-insensitive substrings):
    last_user_contains, has_tool_results, last_tool_name, last_tool_contains, system_contains, model.
Replies: {"text"}, {"tool_calls", "text"?}, {"fault": {"status": 429|500|..., "retry_after"?, "message"?}},
    plus optional "cut_after_chunks" (drop the connection mid-stream) and "chunk_delay" (seconds between chunks).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Rule = dict[str, Any]

WHEN_KEYS = frozenset(
    {"last_user_contains", "has_tool_results", "last_tool_name", "last_tool_contains", "system_contains", "model"}
)
REPLY_KEYS = frozenset({"text", "tool_calls", "fault", "cut_after_chunks", "chunk_delay"})
RESPONSES_API_MESSAGE = "this server speaks chat.completions only; set use_responses_api=False"


def rule(reply: Mapping[str, Any], *, times: int | None = None, **when: Any) -> Rule:
    """Build a rule dict: `rule({"text": "hi"}, last_user_contains="disk", times=1)`."""
    built: Rule = {"when": dict(when), "reply": dict(reply)}
    if times is not None:
        built["times"] = times
    return validate_rule(built)


def validate_rule(candidate: Mapping[str, Any]) -> Rule:
    # A typo in a matcher key would otherwise silently match everything; reject it where the script is written.
    unknown = set(candidate) - {"when", "reply", "times"}
    when = candidate.get("when", {})
    reply: Any = candidate.get("reply")  # checked below
    problems: list[str] = []
    if unknown:
        problems.append(f"unknown rule keys {sorted(unknown)}")
    if not isinstance(when, Mapping) or set(when) - WHEN_KEYS:
        problems.append(f"'when' must be a dict with keys from {sorted(WHEN_KEYS)}, got {when!r}")
    if not isinstance(reply, Mapping) or not reply or set(reply) - REPLY_KEYS:
        problems.append(f"'reply' must be a non-empty dict with keys from {sorted(REPLY_KEYS)}, got {reply!r}")
    elif not ({"text", "tool_calls", "fault"} & set(reply)):
        problems.append(f"'reply' needs one of text / tool_calls / fault, got {reply!r}")
    else:
        for call in reply.get("tool_calls", []):
            if not isinstance(call, Mapping) or "name" not in call:
                problems.append(f"each tool call needs a 'name', got {call!r}")
    times = candidate.get("times")
    if times is not None and (not isinstance(times, int) or times < 1):
        problems.append(f"'times' must be a positive int, got {times!r}")
    if problems:
        raise ValueError("invalid scripted rule: " + "; ".join(problems))
    return {"when": dict(when), "reply": dict(reply), **({"times": times} if times is not None else {})}


# --- reading a conversation -------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    # Content is either a string or a list of typed parts; only text parts carry what a script can match on.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(content)


class Conversation:
    """The facts rules match on, read once from a chat.completions request body."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        messages: list[Mapping[str, Any]] = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
        self.model: str = str(body.get("model", ""))
        user_positions = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last_user = user_positions[-1] if user_positions else -1
        self.last_user_text = _text(messages[last_user].get("content")) if user_positions else ""
        # ChatOpenAI sends the system prompt as "developer" for reasoning models.
        self.system_text = "\n".join(
            _text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
        )
        names_by_call_id = {
            call.get("id"): (call.get("function") or {}).get("name", "")
            for m in messages
            if m.get("role") == "assistant"
            for call in m.get("tool_calls") or []
        }
        self.tool_results: list[tuple[str, str]] = [
            (names_by_call_id.get(m.get("tool_call_id"), "?"), _text(m.get("content")))
            for m in messages[last_user + 1 :]
            if m.get("role") == "tool"
        ]

    def matches(self, when: Mapping[str, Any]) -> bool:
        checks = {
            "last_user_contains": lambda v: str(v).lower() in self.last_user_text.lower(),
            "has_tool_results": lambda v: bool(self.tool_results) == bool(v),
            "last_tool_name": lambda v: bool(self.tool_results) and self.tool_results[-1][0] == v,
            "last_tool_contains": lambda v: any(str(v).lower() in c.lower() for _, c in self.tool_results),
            "system_contains": lambda v: str(v).lower() in self.system_text.lower(),
            "model": lambda v: self.model == v,
        }
        return all(checks[key](value) for key, value in when.items())

    def describe(self) -> str:
        results = [f"{name}: {content[:120]}" for name, content in self.tool_results]
        return f"last user message: {self.last_user_text[:300]!r}; tool results: {results!r}"


# --- building OpenAI-shaped payloads ----------------------------------------------------------------------------


PROBE_TOOL = "chatops_probe"  # graphs.model_errors.PROBE_TOOL: the tool the bot's start-up check asks for


def _is_probe(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools") or []
    return len(tools) == 1 and (tools[0].get("function") or {}).get("name") == PROBE_TOOL


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _tool_calls(reply: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id") or f"call_{secrets.token_hex(4)}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("args", {}))},
        }
        for call in reply.get("tool_calls", [])
    ]


def _pieces(text: str) -> list[str]:
    # Word by word (each word keeps its trailing space) so a client can observe tokens arriving one at a time.
    return [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]


def _fragments(arguments: str, parts: int = 3) -> list[str]:
    size = max(1, math.ceil(len(arguments) / parts))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _usage(body: Mapping[str, Any], text: str, calls: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    # Rough word counts: tests only need plausible, non-zero, deterministic numbers.
    prompt = sum(len(_text(m.get("content")).split()) + 3 for m in body.get("messages") or [])
    completion = len(text.split()) + sum(len(c["function"]["arguments"]) // 4 + 1 for c in calls)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(body: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    text, calls = reply.get("text", ""), _tool_calls(reply)
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if calls else "stop"}
        ],
        "usage": _usage(body, text, calls),
        "system_fingerprint": None,
    }


def stream_chunks(body: Mapping[str, Any], reply: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    text, calls = reply.get("text", ""), _tool_calls(reply)
    base = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(text):
        yield chunk({"content": piece})
    for index, call in enumerate(calls):
        header = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        yield chunk({"tool_calls": [{"index": index, **header}]})
        for fragment in _fragments(call["function"]["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    yield chunk({}, "tool_calls" if calls else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(body, text, calls)}


# --- the server -------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not block stop()
    owner: ScriptedOpenAI


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so httpx can keep connections alive and streams use chunked encoding, as api.openai.com does;
    # a cut stream then surfaces as an incomplete chunked body instead of a clean end of file.
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections must not pin handler threads forever
    # TCP_NODELAY on every accepted socket. With Nagle's algorithm on, a small write that follows another one not
    # yet acknowledged waits for the client's delayed ACK (~40 ms on Linux): a streamed reply's chunks, and the
    # headers-then-body of a plain answer, stalled every back-to-back model call by about that much.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.owner.log_requests:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        owner = self.server.owner
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "scripted"} for name in owner.models]
            self._json(200, {"object": "list", "data": data})
        elif self.path.startswith("/v1/models/"):
            name = self.path.removeprefix("/v1/models/")
            self._json(200, {"id": name, "object": "model", "created": 0, "owned_by": "scripted"})
        else:
            self._not_found()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/responses":
            self._json(400, _error(RESPONSES_API_MESSAGE, "invalid_request_error", "unsupported_api"))
        elif path == "/v1/chat/completions":
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as exc:
                self._json(400, _error(f"scripted server: body is not JSON: {exc}", "invalid_request_error"))
                return
            self._chat_completions(body)
        else:
            self._not_found()

    def _chat_completions(self, body: dict[str, Any]) -> None:
        owner = self.server.owner
        conversation = Conversation(body)
        if _is_probe(body):  # the bot's start-up check: answered as a model with tool support, not recorded
            reply: Mapping[str, Any] | None = owner.probe_reply
        else:
            reply = owner._match(body, conversation)
        if reply is None:
            message = f"scripted server: no rule matches; {conversation.describe()}"
            # 400, not 5xx: the client must not retry an unscripted prompt, it must fail now.
            self._json(400, _error(message, "unscripted_prompt", "unscripted_prompt"))
            return
        if "fault" in reply:
            self._fault(reply["fault"])
        elif body.get("stream"):
            self._stream(body, reply)
        elif "cut_after_chunks" in reply:
            # A non-streamed reply has no chunks to cut: drop the connection before answering.
            self.close_connection = True
        else:
            self._json(200, completion_body(body, reply))

    def _fault(self, fault: Mapping[str, Any]) -> None:
        status = int(fault.get("status", 500))
        headers: dict[str, str] = {}
        if "retry_after" in fault:
            seconds = float(fault["retry_after"])
            # The openai client prefers retry-after-ms, which lets tests use sub-second back-offs.
            headers = {"retry-after-ms": str(int(seconds * 1000)), "Retry-After": str(math.ceil(seconds))}
        kind, code = {429: ("requests", "rate_limit_exceeded")}.get(status, ("server_error", None))
        message = fault.get("message") or f"scripted fault: HTTP {status}"
        self._json(status, _error(message, kind, code), headers)

    def _stream(self, body: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        delay = float(reply.get("chunk_delay", 0))
        cut_after = reply.get("cut_after_chunks")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        self.end_headers()
        try:
            for sent, chunk in enumerate(stream_chunks(body, reply)):
                if cut_after is not None and sent >= int(cut_after):
                    # No [DONE] and no terminating chunk: the client sees a connection dropped mid-body.
                    self.close_connection = True
                    return
                if sent and delay:
                    time.sleep(delay)
                self._write_chunk(f"data: {json.dumps(chunk)}\n\n")
            if cut_after is not None:
                self.close_connection = True
                return
            # [DONE] and the chunked body's terminator in one write: the client sees the end of the stream at once.
            self._write_chunk("data: [DONE]\n\n", last=True)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing left to tell it

    def _write_chunk(self, text: str, *, last: bool = False) -> None:
        """One chunk of the chunked body (size line, data, CRLF; with `last`, the terminating zero-size chunk too)
        in a single write, so each reaches the client as one segment."""
        data = text.encode()
        self.wfile.write(b"%X\r\n%b\r\n%b" % (len(data), data, b"0\r\n\r\n" if last else b""))
        self.wfile.flush()

    def _authorized(self) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return True
        message = "scripted server: missing 'Authorization: Bearer <key>' header"
        self._json(401, _error(message, "invalid_request_error", "invalid_api_key"))
        return False

    def _not_found(self) -> None:
        message = f"scripted server: unknown endpoint {self.command} {self.path}"
        self._json(404, _error(message, "invalid_request_error", "unknown_url"))

    def _json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{secrets.token_hex(8)}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class ScriptedOpenAI:
    """An OpenAI-compatible chat.completions server answering from a script; a daemon thread serves it."""

    def __init__(
        self,
        rules: Iterable[Mapping[str, Any]] = (),
        *,
        port: int = 0,
        models: Sequence[str] = ("scripted",),
        log_requests: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._remaining: list[int | None] = []
        self._requests: list[dict[str, Any]] = []
        self._unmatched: list[dict[str, Any]] = []
        self._port = port
        self._models = list(models)
        # How the bot's start-up probe is answered (graphs.model_errors.probe): as a model with tool-call support.
        self.probe_reply: Mapping[str, Any] = {"tool_calls": [{"name": PROBE_TOOL, "args": {"word": "ok"}}]}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.log_requests = log_requests
        self.reset(rules)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ScriptedOpenAI:
        """Load a script: a JSON list of rules, or an object {"rules": [...], "models": [...]}."""
        data = json.loads(Path(path).read_text())
        if isinstance(data, Mapping):
            kwargs.setdefault("models", data.get("models", ("scripted",)))
            data = data.get("rules", [])
        return cls(data, **kwargs)

    # -- script --

    def add_rule(self, new_rule: Mapping[str, Any]) -> None:
        checked = validate_rule(new_rule)
        with self._lock:
            self._rules.append(checked)
            self._remaining.append(checked.get("times"))

    def reset(self, rules: Iterable[Mapping[str, Any]] = ()) -> None:
        """Replace the script and forget recorded requests, so one server can serve several scenarios."""
        checked = [validate_rule(r) for r in rules]
        with self._lock:
            self._rules = checked
            self._remaining = [r.get("times") for r in checked]
            self._requests.clear()
            self._unmatched.clear()

    def _match(self, body: dict[str, Any], conversation: Conversation) -> dict[str, Any] | None:
        # Matching and spending a rule's `times` happen under one lock so concurrent requests can't both use it.
        with self._lock:
            self._requests.append(body)
            for i, candidate in enumerate(self._rules):
                left = self._remaining[i]
                if left == 0 or not conversation.matches(candidate["when"]):
                    continue
                if left is not None:
                    self._remaining[i] = left - 1
                return candidate["reply"]
            self._unmatched.append(body)
            return None

    @property
    def models(self) -> list[str]:
        with self._lock:
            scripted = [r["when"]["model"] for r in self._rules if "model" in r["when"]]
        return list(dict.fromkeys([*self._models, *scripted]))

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    @property
    def unmatched(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._unmatched)

    # -- lifecycle --

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ScriptedOpenAI is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedOpenAI:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"scripted OpenAI server thread did not stop within {timeout}s")

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted OpenAI-compatible API on 127.0.0.1.")
    parser.add_argument("--script", required=True, help="JSON file: a list of rules or {'rules': [...]}")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    # SIGTERM (how supervisors and tests stop us) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ScriptedOpenAI.from_file(args.script, port=args.port, log_requests=True).start()
    try:
        print(server.base_url, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"stopped; {len(server.unmatched)} unmatched request(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
