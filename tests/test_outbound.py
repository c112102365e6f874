"""Outbound requests from tools: an attacker (a channel member, or a model inventing URLs) tries to make the bot
GET internal endpoints, follow redirects inward, or read banners and reason phrases back; the guard refuses.

Everything is real: an internal HTTP service on 127.0.0.1 that records every hit, a TCP server speaking SSH,
a closed port, the real runtime (Redis, ChatOpenAI against the scripted server) and the real bot process.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from graphs.builtin_tools import build_registry
from graphs.errors import ConfigError, OutboundFailed, OutboundRefused, ToolFailed
from graphs.outbound import HttpAllowlist, OutboundGuard, is_internal
from graphs.outbound import parse_target as target_of
from graphs.runtime import open_runtime
from graphs.tools import CURRENT_CALL, CallContext
from graphs.types import reject
from sandbox.openai_server import rule

from .bot_support import all_text, bot_env, mention, start_bot
from .conftest import settings_for

ADMIN = "/admin/users/delete?all=true"
BIDI_AND_CONTROLS = "\u202e\u2066\u200b\x00\x1b[31m\ufeff\U000e0041"
BIG_BODY = ("status: ok " + BIDI_AND_CONTROLS + "\r\n\t  ") * 200


# --- the attacker's targets -------------------------------------------------------------------------------------


class InternalService:
    """An internal HTTP service on 127.0.0.1 whose every hit is recorded: a GET on /admin/users/delete would
    delete every user, so the only safe number of hits there is zero."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []  # (path with query, Host header)
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                service.hits.append((self.path, self.headers.get("Host", "")))
                service.answer(self)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        status, reason, body, location = 404, None, "not found", None
        if path == "/health":
            status, body = 200, "ok"
        elif path == "/admin/users/delete":
            status, body = 200, "deleted every user"
        elif path == "/redirect-out":
            status, body, location = 302, "", f"http://localhost:{self.port}{ADMIN}"
        elif path == "/redirect-in":
            status, body, location = 302, "", "/health"
        elif path == "/loop":
            status, body, location = 302, "", "/loop"
        elif path == "/teapot":
            status, reason, body = 418, "I am a secret reason", "short and stout"
        elif path == "/odd":
            status, reason, body = 599, "Database password is hunter2", "odd"
        elif path == "/big":
            status, body = 200, BIG_BODY
        data = body.encode()
        handler.send_response(status, reason)
        if location:
            handler.send_header("Location", location)
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]

    def __enter__(self) -> InternalService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class SshBanner:
    """A TCP server that greets like sshd and hangs up: an open port that does not speak HTTP."""

    BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"

    def __init__(self) -> None:
        banner = self.BANNER

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(banner)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SshBanner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def service() -> Iterator[InternalService]:
    with InternalService() as running:
        yield running


@pytest.fixture
def ssh() -> Iterator[SshBanner]:
    with SshBanner() as running:
        yield running


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def guard(allow: str | None = None, **options: object) -> OutboundGuard:
    return OutboundGuard(HttpAllowlist.parse(allow), **options)  # type: ignore[arg-type]


class FakeDns:
    """Answers for made-up names, one answer per lookup in order (the last repeats): enough to rebind."""

    def __init__(self, **answers: list[list[str]]) -> None:
        self.answers = {name.replace("_", "."): list(found) for name, found in answers.items()}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        queue = self.answers.get(host)
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return queue.pop(0) if len(queue) > 1 else queue[0]


# --- the allowlist ----------------------------------------------------------------------------------------------


def allowed(allow: str, url: str) -> bool:
    return HttpAllowlist.parse(allow).entry_for_url(target_of(url)) is not None


def test_entries_are_separated_by_commas_and_or_whitespace():
    allow = HttpAllowlist.parse(
        " http://127.0.0.1:8080/health,10.0.0.0/8 \n ::1,, status.internal:8443\t*.corp.example "
    )
    assert [p.entry for p in allow.prefixes] == ["http://127.0.0.1:8080/health"]
    assert [entry for entry, _ in allow.networks] == ["10.0.0.0/8", "::1"]
    assert [h.entry for h in allow.hosts] == ["status.internal:8443", "*.corp.example"]
    assert not HttpAllowlist.parse(None) and not HttpAllowlist.parse("  ")


@pytest.mark.parametrize(
    ("url", "matches"),
    [
        ("http://127.0.0.1:8080/health", True),
        ("http://127.0.0.1:8080/health/x", True),
        ("http://127.0.0.1:8080/health?a=1", True),
        ("http://127.0.0.1:8080/healthz", False),
        ("http://127.0.0.1:8080/health/../admin/users/delete", False),  # a server resolves the dots
        ("http://127.0.0.1:8080/health/%2e%2e/admin", False),  # ...or decodes them first
        ("http://127.0.0.1:8080/health%2f..%2fadmin", False),
        ("http://127.0.0.1:8080/admin", False),
        ("http://127.0.0.1:8081/health", False),
        ("https://127.0.0.1:8080/health", False),
        ("http://localhost:8080/health", False),
    ],
)
def test_a_url_prefix_matches_its_origin_and_paths_at_or_below_it(url, matches):
    assert allowed("http://127.0.0.1:8080/health", url) is matches


def test_a_prefix_ending_in_a_slash_is_a_plain_prefix():
    assert allowed("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api/v1")
    assert not allowed("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api")
    assert allowed("http://127.0.0.1:8080", "http://127.0.0.1:8080/anything?at=all")
    assert allowed("https://status.internal/", "https://status.internal:443/x")


def test_host_entries_match_the_urls_host_case_insensitively():
    assert allowed("status.internal", "http://STATUS.Internal:9000/x")
    assert allowed("status.internal", "https://status.internal./")
    assert allowed("status.internal:8443", "https://status.internal:8443/")
    assert not allowed("status.internal:8443", "https://status.internal/")
    assert allowed("*.corp.example", "http://a.b.corp.example/")
    assert not allowed("*.corp.example", "http://corp.example/")
    assert not allowed("*.corp.example", "http://evilcorp.example/")
    assert allowed("localhost:8080", "http://localhost:8080/health")
    assert not allowed("localhost:8080", "http://127.0.0.1:8080/health")


def test_cidr_and_ip_entries_match_the_address_connected_to():
    allow = HttpAllowlist.parse("10.0.0.0/8 127.0.0.1 ::1 fd00::/8")
    assert allow.entry_for_address("10.20.30.40") == "10.0.0.0/8"
    assert allow.entry_for_address("127.0.0.1") == "127.0.0.1"
    assert allow.entry_for_address("127.0.0.2") is None
    assert allow.entry_for_address("::1") == "::1"
    assert allow.entry_for_address("fd12::3") == "fd00::/8"
    assert allow.entry_for_address("8.8.8.8") is None
    assert allow.entry_for_url(target_of("http://10.1.1.1/")) is None  # addresses are matched after DNS, not here


@pytest.mark.parametrize(
    "entry",
    [
        "*",
        "ftp://files.internal/",
        "http://user:pw@status.internal/",
        "10.0.0.1/8",
        "10.0.0.0/33",
        "status.internal:99999",
        "status.internal:port",
        "status!.internal",
        "a..b",
        "http://x/#frag",
        "[::1",
    ],
)
def test_a_malformed_entry_stops_start_up_naming_the_variable_and_the_entry(entry):
    with pytest.raises(ConfigError) as refused:
        HttpAllowlist.parse(f"http://127.0.0.1:8080/health, {entry}")
    message = str(refused.value)
    assert "CHATOPS_HTTP_ALLOW" in message and entry.split()[0] in message


# --- which addresses are internal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "0.0.0.0",
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1, which ipaddress 3.11 calls global
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # teredo, client 127.0.0.1
    ],
)
def test_loopback_private_metadata_and_their_ipv6_disguises_are_internal(address):
    assert is_internal(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not_internal(address):
    assert not is_internal(address)


# --- assessing a proposed call ----------------------------------------------------------------------------------


async def test_an_internal_target_is_denied_with_the_address_it_resolves_to():
    found = await guard().assess("http://127.0.0.1:5000/admin")
    assert found.mode == "deny"
    assert found.reason == (
        "http://127.0.0.1:5000/admin resolves to 127.0.0.1, an internal address; "
        "internal targets need an entry in CHATOPS_HTTP_ALLOW."
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://0x7f000001/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fc00::1]/",
        "http://100.64.0.1/",
        "http://localhost/",
    ],
)
async def test_other_spellings_of_internal_addresses_are_denied_too(url):
    found = await guard().assess(url)
    assert found.mode == "deny" and "internal address" in found.reason


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://files.example/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://user:hunter2@8.8.8.8/", "user name or password"),
        ("ftp://user:hunter2@files.example/", "http:// or https://"),
        ("http://user:hunter2@8.8.8.8:99999/", "not a valid URL"),
        ("http://8.8.8.8\\@127.0.0.1/", "user name or password"),
        ("http://exa mple.com/", "not a valid URL"),
        ("http://8.8.8.8:99999/", "not a valid URL"),
        ("http://no-such-host.invalid/", "does not resolve"),
        ("", "not a valid URL"),
    ],
)
async def test_urls_that_cannot_be_checked_are_denied(url, words):
    found = await guard().assess(url)
    assert found.mode == "deny" and words in found.reason
    assert "hunter2" not in found.reason


async def test_a_public_target_needs_a_person_who_sees_where_it_resolves():
    found = await guard().assess("http://8.8.8.8/")
    assert found.mode == "ask"
    assert found.facts == ("http://8.8.8.8/ resolves to 8.8.8.8 (public address)",)
    dns = FakeDns(example_com=[["93.184.216.34"]])
    named = await guard(resolve=dns).assess("http://Example.com")
    assert named.facts == ("http://example.com/ resolves to 93.184.216.34 (public address)",)


async def test_a_name_with_any_internal_address_is_denied():
    dns = FakeDns(mixed_example=[["93.184.216.34", "10.0.0.7"]], metadata_example=[["169.254.169.254"]])
    mixed = await guard(resolve=dns).assess("http://mixed.example/")
    assert mixed.mode == "deny" and "10.0.0.7, an internal address" in mixed.reason
    metadata = await guard(resolve=dns).assess("http://metadata.example/")
    assert metadata.mode == "deny" and "169.254.169.254" in metadata.reason


async def test_allowlisted_targets_may_run_alone_and_say_why():
    dns = FakeDns(status_internal=[["10.1.2.3"]], db_internal=[["10.9.9.9", "10.9.9.8"]])
    by_host = await guard("status.internal", resolve=dns).assess("http://status.internal/health")
    assert by_host.mode == "auto"
    assert by_host.facts == ("http://status.internal/health resolves to 10.1.2.3 (allowlisted by status.internal)",)
    by_network = await guard("10.0.0.0/8", resolve=dns).assess("http://db.internal:5984/_up")
    assert by_network.mode == "auto" and "10.9.9.9, 10.9.9.8" in by_network.facts[0]
    by_prefix = await guard("http://127.0.0.1:8080/health").assess("http://127.0.0.1:8080/health?full=1")
    assert by_prefix.mode == "auto"
    assert (await guard("http://127.0.0.1:8080/health").assess("http://127.0.0.1:8080/admin")).mode == "deny"


# --- fetching -----------------------------------------------------------------------------------------------------


async def test_an_allowlisted_health_check_reports_status_latency_address_and_body(service):
    fetched = await guard(f"{service.url}/health").fetch(f"{service.url}/health", reviewed=False)
    assert (fetched.status, fetched.reason, fetched.address, fetched.excerpt) == (200, "OK", "127.0.0.1", "ok")
    first, body = fetched.summary().splitlines()
    assert first.startswith(f"GET {service.url}/health -> 200 OK in ") and first.endswith(
        " ms (connected to 127.0.0.1)"
    )
    assert body == "body: ok"
    assert service.hits == [("/health", f"127.0.0.1:{service.port}")]


async def test_an_internal_target_is_refused_at_fetch_time_without_a_hit(service):
    with pytest.raises(OutboundRefused, match="internal address"):
        await guard().fetch(f"{service.url}{ADMIN}", reviewed=True)  # not even a person's approval lets it through
    with pytest.raises(OutboundRefused, match="internal address"):
        await guard(f"{service.url}/health").fetch(f"{service.url}{ADMIN}", reviewed=False)
    assert service.hits == []


async def test_a_public_target_is_not_requested_without_approval():
    with pytest.raises(OutboundRefused, match="needs approval"):
        await guard().fetch("http://8.8.8.8/", reviewed=False)


async def test_only_get_and_head_are_sent(service):
    allow = guard(f"{service.url}/")
    with pytest.raises(OutboundRefused, match="only GET and HEAD"):
        await allow.fetch(f"{service.url}{ADMIN}", method="POST", reviewed=True)
    head = await allow.fetch(f"{service.url}/health", method="HEAD", reviewed=False)
    assert head.status == 200 and head.excerpt == "" and head.summary().startswith(f"HEAD {service.url}/health -> 200")
    assert service.paths() == ["/health"]


async def test_a_name_that_rebinds_to_an_internal_address_after_the_check_is_refused(service):
    # Plan time: the name points at a public address, so a person approves it; by fetch time it points inward.
    dns = FakeDns(rebind_example=[["93.184.216.34"], ["127.0.0.1"]])
    rebinding = guard(resolve=dns)
    assert (await rebinding.assess(f"http://rebind.example:{service.port}{ADMIN}")).mode == "ask"
    with pytest.raises(OutboundRefused, match=r"127.0.0.1, an internal address"):
        await rebinding.fetch(f"http://rebind.example:{service.port}{ADMIN}", reviewed=True)
    assert service.hits == [] and dns.lookups == ["rebind.example", "rebind.example"]


async def test_the_connection_goes_to_the_checked_address_with_the_real_host_name(service):
    # status.internal exists only in this fake DNS: had anything resolved the name again, the request would fail.
    dns = FakeDns(status_internal=[["127.0.0.1"]])
    fetched = await guard(f"status.internal:{service.port}", resolve=dns).fetch(
        f"http://status.internal:{service.port}/health", reviewed=False
    )
    assert fetched.status == 200 and fetched.address == "127.0.0.1"
    assert service.hits == [("/health", f"status.internal:{service.port}")]
    assert dns.lookups == ["status.internal"]


async def test_the_servers_reason_phrase_never_comes_back(service):
    allow = guard(f"{service.url}/")
    teapot = await allow.fetch(f"{service.url}/teapot", reviewed=False)
    assert (teapot.status, teapot.reason) == (418, "I'm a Teapot")
    assert "secret" not in teapot.summary()
    odd = await allow.fetch(f"{service.url}/odd", reviewed=False)
    assert odd.reason == "" and f"{service.url}/odd -> 599 in " in odd.summary()
    assert "hunter2" not in odd.summary()


async def test_a_long_body_comes_back_short_without_control_or_bidi_characters(service):
    fetched = await guard(f"{service.url}/", excerpt_chars=120).fetch(f"{service.url}/big", reviewed=False)
    excerpt = fetched.excerpt
    assert len(excerpt) == 120 and excerpt.endswith("…") and excerpt.startswith("status: ok [31m status: ok")
    assert not [ch for ch in excerpt if unicodedata.category(ch) in ("Cc", "Cf")]
    assert "  " not in excerpt


async def test_a_redirect_inside_the_allowlist_is_followed_and_shown(service):
    fetched = await guard(f"{service.url}/").fetch(f"{service.url}/redirect-in", reviewed=False)
    assert fetched.status == 200 and fetched.redirects == (f"302 -> {service.url}/health",)
    assert f"redirect followed: 302 -> {service.url}/health" in fetched.summary()
    assert service.paths() == ["/redirect-in", "/health"]


async def test_a_redirect_to_another_host_is_not_followed(service):
    fetched = await guard(f"{service.url}/").fetch(f"{service.url}/redirect-out", reviewed=True)
    assert fetched.status == 302 and fetched.redirects == ()
    assert f"redirected to http://localhost:{service.port}/… — not followed" in fetched.summary()
    assert "internal" in fetched.not_followed and "users/delete" not in fetched.summary()
    assert service.paths() == ["/redirect-out"]


async def test_an_approved_redirect_to_an_internal_path_of_the_same_origin_is_not_followed(service):
    # /redirect-in itself is allowlisted, /health is not: even a reviewed call stops at the internal hop.
    fetched = await guard(f"{service.url}/redirect-in").fetch(f"{service.url}/redirect-in", reviewed=True)
    assert fetched.status == 302 and "not followed" in fetched.not_followed
    assert service.paths() == ["/redirect-in"]


async def test_a_redirect_loop_ends_as_no_answer_after_the_hop_limit(service):
    with pytest.raises(OutboundFailed) as failed:
        await guard(f"{service.url}/", max_redirects=3).fetch(f"{service.url}/loop", reviewed=False)
    assert str(failed.value) == f"GET {service.url}/loop: no HTTP answer"
    assert service.paths() == ["/loop"] * 4


async def test_an_ssh_banner_a_closed_port_and_a_silent_port_read_the_same(ssh, closed_port, silent_port):
    allow = guard("127.0.0.1", timeout_s=1.0)
    messages = {}
    for name, port in (("ssh", ssh.port), ("closed", closed_port), ("silent", silent_port)):
        with pytest.raises(OutboundFailed) as failed:
            await allow.fetch(f"http://127.0.0.1:{port}/", reviewed=False)
        assert failed.value.__suppress_context__  # the cause stays in the operator's log
        messages[name] = str(failed.value).replace(str(port), "<port>")
    assert set(messages.values()) == {"GET http://127.0.0.1:<port>/: no HTTP answer"}, messages


async def test_http_check_turns_every_outcome_into_a_tool_result(service, ssh):
    registry = build_registry(guard=guard(f"{service.url}/health {service.url}/teapot http://127.0.0.1:{ssh.port}/"))
    http_check = registry.get("http_check").tool
    ok = await http_check.ainvoke({"url": f"{service.url}/health"})
    assert ok.startswith(f"GET {service.url}/health -> 200 OK") and ok.endswith("body: ok")
    with pytest.raises(ToolFailed, match="418 I'm a Teapot"):
        await http_check.ainvoke({"url": f"{service.url}/teapot"})
    with pytest.raises(ToolFailed) as banner:
        await http_check.ainvoke({"url": f"http://127.0.0.1:{ssh.port}/"})
    assert str(banner.value) == f"GET http://127.0.0.1:{ssh.port}/: no HTTP answer"
    # A public target: refused unless the execute step says a person approved this very call.
    with pytest.raises(ToolFailed, match="needs approval"):
        await http_check.ainvoke({"url": "http://8.8.8.8/"})
    # Even a call a person approved never reaches an internal address that is not allowlisted.
    token = CURRENT_CALL.set(CallContext(reviewed=True))
    try:
        with pytest.raises(ToolFailed, match="internal address"):
            await http_check.ainvoke({"url": f"{service.url}{ADMIN}"})
    finally:
        CURRENT_CALL.reset(token)
    assert service.paths() == ["/health", "/teapot"]
    assert (await registry.get("http_check").assess({"url": "http://8.8.8.8/"})).mode == "ask"


# --- through the agent ------------------------------------------------------------------------------------------


def script_checks(model, *urls: str) -> None:
    model.reset(
        [
            rule(
                {"text": "Checking.", "tool_calls": [{"name": "http_check", "args": {"url": u}} for u in urls]},
                has_tool_results=False,
            ),
            rule({"text": "Checked."}, has_tool_results=True),
        ]
    )


def tool_results(model) -> list[str]:
    return [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]


def result_about(model, url: str) -> str:
    (found,) = [r for r in tool_results(model) if r.startswith((f"GET {url} ", f"{url} "))]
    return found


async def test_without_an_allowlist_an_internal_admin_url_is_refused_before_anyone_is_asked(
    redis_url, model, runbooks, service, thread_id
):
    script_checks(model, f"{service.url}{ADMIN}")
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        result = await rt.runs.start(thread_id, "check the admin endpoint")
        assert await rt.runs.pending_review(thread_id) is None
    assert result.status == "rejected" and result.pending is None  # nothing ran: not "done"
    assert service.hits == []
    (told,) = tool_results(model)
    assert "127.0.0.1, an internal address" in told and "CHATOPS_HTTP_ALLOW" in told and "did not run" in told


async def test_an_allowlisted_health_prefix_runs_alone_and_nothing_else_on_that_host_does(
    redis_url, model, runbooks, service, thread_id
):
    script_checks(model, f"{service.url}/health", f"{service.url}{ADMIN}", f"{service.url}/redirect-in")
    settings = settings_for(redis_url, model, runbooks, http_allow=f"{service.url}/health")
    async with open_runtime(settings) as rt:
        result = await rt.runs.start(thread_id, "check the service")
    assert result.status == "done" and result.pending is None
    assert service.paths() == ["/health"]
    health, admin, redirect = (
        result_about(model, f"{service.url}{path}") for path in ("/health", ADMIN, "/redirect-in")
    )
    assert health.startswith(f"GET {service.url}/health -> 200 OK")
    assert "internal address" in admin and "did not run" in admin
    assert "internal address" in redirect and "did not run" in redirect


async def test_a_redirect_from_an_allowlisted_service_to_another_host_is_not_followed(
    redis_url, model, runbooks, service, thread_id
):
    script_checks(model, f"{service.url}/redirect-out")
    settings = settings_for(redis_url, model, runbooks, http_allow=f"{service.url}/")
    async with open_runtime(settings) as rt:
        result = await rt.runs.start(thread_id, "check the service")
    assert result.status == "done"
    assert service.paths() == ["/redirect-out"]  # the /admin hit never arrives
    (told,) = tool_results(model)
    assert "-> 302 Found" in told and f"redirected to http://localhost:{service.port}/… — not followed" in told


async def test_a_public_target_waits_for_a_person_who_sees_its_address(redis_url, model, runbooks, thread_id):
    script_checks(model, "http://8.8.8.8/")
    async with open_runtime(settings_for(redis_url, model, runbooks)) as rt:
        paused = await rt.runs.start(thread_id, "check google dns")
        assert paused.status == "waiting"
        (action,) = paused.pending.request["action_requests"]
        assert action["name"] == "http_check"
        assert any("8.8.8.8" in fact and "public" in fact for fact in action["facts"]), action
        # Nobody here may reach the internet: reject, so nothing is requested.
        done = await rt.runs.resume(thread_id, paused.pending.interrupt_id, [reject("not now")])
    assert done.status == "rejected"


async def test_a_host_entry_lets_localhost_health_run_without_review(redis_url, model, runbooks, service, thread_id):
    script_checks(model, f"http://localhost:{service.port}/health")
    settings = settings_for(redis_url, model, runbooks, http_allow=f"localhost:{service.port}")
    async with open_runtime(settings) as rt:
        result = await rt.runs.start(thread_id, "check the service")
    assert result.status == "done" and result.pending is None
    assert service.hits == [("/health", f"localhost:{service.port}")]
    (told,) = tool_results(model)
    assert told.startswith(f"GET http://localhost:{service.port}/health -> 200 OK")


async def test_a_malformed_allowlist_stops_the_runtime_from_starting(redis_url, model, runbooks):
    with pytest.raises(ConfigError, match=r"CHATOPS_HTTP_ALLOW.*'status.internal:port'"):
        async with open_runtime(
            settings_for(redis_url, model, runbooks, http_allow="status.internal, status.internal:port")
        ):
            pass


# --- through the Slack bot --------------------------------------------------------------------------------------


async def test_in_slack_an_internal_url_is_refused_without_a_card_and_an_allowlisted_one_runs(
    slack, redis_url, model, runbooks, service, tmp_path: Path
):
    script_checks_by_task(model, service)
    env = bot_env(slack, redis_url, model.base_url, runbooks.dir)
    bot = start_bot(slack, env, tmp_path / "bot.log")
    try:
        thread = await mention(slack, "delete the users via the admin endpoint")
        done = all_text(await thread.wait_progress("Nothing ran"))
        assert service.hits == []
        assert thread.cards() == [], "no approval card for a call that must not run"
        assert "internal" in done and "did not run" in done
    finally:
        assert bot.stop() == 0
    assert "Traceback" not in bot.log()

    allowed_env = {**env, "CHATOPS_HTTP_ALLOW": f"{service.url}/health"}
    bot = start_bot(slack, allowed_env, tmp_path / "bot-allowed.log")
    try:
        thread = await mention(slack, "check the service health")
        done = all_text(await thread.wait_progress("Done"))
        assert service.paths() == ["/health"]
        assert thread.cards() == []
        assert "200 OK" in done
    finally:
        assert bot.stop() == 0
    assert "Traceback" not in bot.log()


def script_checks_by_task(model, service: InternalService) -> None:
    model.reset(
        [
            rule(
                {"text": "Deleting.", "tool_calls": [{"name": "http_check", "args": {"url": f"{service.url}{ADMIN}"}}]},
                last_user_contains="admin endpoint",
                has_tool_results=False,
            ),
            rule(
                {"text": "Checking.", "tool_calls": [{"name": "http_check", "args": {"url": f"{service.url}/health"}}]},
                last_user_contains="service health",
                has_tool_results=False,
            ),
            rule({"text": "Finished."}, has_tool_results=True),
        ]
    )
