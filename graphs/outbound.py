"""Outbound HTTP from tools: the allowlist (CHATOPS_HTTP_ALLOW) and the one guarded client every fetch goes through.

Every tool that fetches a URL goes through ``OutboundGuard``. It decides per URL, from the address the name
really resolves to, whether a call may run alone (allowlisted), needs a person (public) or must not run
(internal, malformed); then it fetches only what it checked: the connection is pinned to the checked IP,
each redirect hop is checked the same way, and what comes back is bounded and sanitised, so a GET cannot be
used to act on an internal admin endpoint, to map ports, or to carry banners and reason phrases into chat.

Its errors (``OutboundError``: ``OutboundRefused`` and its ``InvalidURL``, ``OutboundFailed``) are drawn with the
rest of the tree in graphs.errors.
"""

from __future__ import annotations

import asyncio
import codecs
import http
import ipaddress
import logging
import re
import socket
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx

from .errors import ConfigError, InvalidURL, OutboundFailed, OutboundRefused
from .types import Assessment, ToolMode

__all__ = [
    "Fetched",
    "HttpAllowlist",
    "OutboundGuard",
    "Resolve",
    "Target",
    "is_internal",
    "parse_target",
]

log = logging.getLogger(__name__)

ALLOW_VARIABLE = "CHATOPS_HTTP_ALLOW"
METHODS = ("GET", "HEAD")  # a tool that fetches reads; anything else is a side effect with its own tool
MAX_BODY_BYTES = 4096  # enough for a health answer; a big or endless body must not fill memory or the chat
MAX_ADDRESSES = 4  # tried in order when a name has several; bounds the time a fetch can spend connecting
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST_ENTRY = re.compile(rf"(?P<wild>\*\.)?(?P<host>{_HOST_LABEL}(?:\.{_HOST_LABEL})*)\.?(?::(?P<port>\d{{1,5}}))?")
_BRACKETED_ENTRY = re.compile(r"\[(?P<host>[0-9a-f:.]+)\](?::(?P<port>\d{1,5}))?")
_USERINFO = re.compile(r"(://)[^/?#]*@")
# Characters a path may keep as they are; anything else (spaces, non-ASCII) is percent-encoded, so the path
# checked against the allowlist is byte for byte the path requested.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


# --- addresses ------------------------------------------------------------------------------------------------


def is_internal(address: str | IPAddress) -> bool:
    """True unless the address is globally routable. The IPv4 address inside IPv4-mapped, 6to4, teredo and
    NAT64 forms is checked too, since ``ipaddress`` may call the IPv6 form global while the packet ends up
    at 127.0.0.1."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if any(is_internal(embedded) for embedded in _embedded_ipv4(ip)):
        return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or ip.is_link_local  # 169.254.169.254: cloud metadata endpoints
        or ip.is_loopback
        or ip.is_private  # includes unique-local fc00::/7
        or ip in _CGNAT
    )


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client): either may be where the packet goes
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip_text(ip: IPAddress) -> str:
    # Python 3.11 writes ::ffff:127.0.0.1 as ::ffff:7f00:1; a reviewer should see the 127.0.0.1 in it.
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


# --- URLs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One URL as it will be requested: normalised, so the allowlist sees exactly what is sent."""

    scheme: str
    host: str  # lower-case ASCII (IDNA), no brackets, no trailing dot
    port: int
    path: str  # percent-encoded path (dot segments removed) plus "?query": what is requested
    # The path decoded and normalised the way a server might (%2e%2e, %2f, "\"), for allowlist prefixes only.
    decoded_path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    @property
    def origin_url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def url(self) -> str:
        return f"{self.origin_url}{self.path}"

    def pinned(self, ip: str) -> httpx.URL:
        """The same request addressed to the checked IP, so no second DNS answer can change where it goes."""
        return httpx.URL(scheme=self.scheme, host=ip, port=self.port, raw_path=self.path.encode("ascii"))


def parse_target(url: str) -> Target:
    """``url`` as it will be requested; raises InvalidURL (with the reason to tell) if it cannot be checked."""
    shown = _shown(_USERINFO.sub(r"\1…@", url))  # never echo a password, whatever else is wrong
    # Spaces and invisible characters would make the URL read differently from what is requested.
    if not url or any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        raise InvalidURL(f"{shown!r} is not a valid URL.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidURL(f"{shown!r} is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"{shown!r} is not an http:// or https:// URL; only those can be requested.")
    if "@" in parts.netloc:
        # Never echo the credentials; they are the model's (or a channel member's) words, but still credentials.
        raise InvalidURL(f"a URL with a user name or password ({scheme}://…@…) is not allowed; remove them.")
    host = _host(parts.hostname or "")
    if not host:
        raise InvalidURL(f"{shown!r} has no host.")
    path = _normalise_path(quote(parts.path or "/", safe=_PATH_SAFE))  # the path starts with "/" after a host
    query = f"?{quote(parts.query, safe=_PATH_SAFE + '?')}" if parts.query else ""
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], path + query, _decoded(path) + query)


def _decoded(path: str) -> str:
    return _normalise_path(unquote(path).replace("\\", "/"))


def _host(raw: str) -> str:
    host = raw.lower().rstrip(".")
    ip = _address(host)
    if ip is not None:
        return _ip_text(ip)
    try:
        return host.encode("idna").decode("ascii") if host else ""
    except UnicodeError:
        return ""


def _normalise_path(path: str) -> str:
    # RFC 3986 dot-segment removal: "/health/../admin" is "/admin" to a server, so it must be to the allowlist.
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments and segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the folder "/a/"
    return "/" + "/".join(out)


def _shown(text: object, limit: int = 100) -> str:
    value = "".join(ch for ch in str(text) if unicodedata.category(ch) not in ("Cc", "Cf"))
    return value if len(value) <= limit else value[: limit - 1] + "…"


# --- the allowlist --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prefix:
    entry: str
    scheme: str
    host: str
    port: int
    path: str  # normalised; may carry "?query"
    decoded_path: str

    def matches(self, target: Target) -> bool:
        if (self.scheme, self.host, self.port) != target.origin:
            return False
        # Both the path as sent and as a server may decode it must sit under the prefix.
        return _under(target.path, self.path) and _under(target.decoded_path, self.decoded_path)


def _under(path: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith((prefix + "/", prefix + "?"))


@dataclass(frozen=True)
class _Host:
    entry: str
    host: str
    port: int | None  # None: any port
    subdomains: bool  # "*.corp.example": any name below it, not corp.example itself

    def matches(self, target: Target) -> bool:
        if self.port is not None and self.port != target.port:
            return False
        if self.subdomains:
            return target.host.endswith("." + self.host)
        return target.host == self.host


@dataclass(frozen=True)
class HttpAllowlist:
    """The targets tools may reach without a person, internal ones included (CHATOPS_HTTP_ALLOW).

    Three kinds of entry: a URL prefix (scheme, host, port and a path at or below it), a CIDR or bare IP
    (matches the address actually connected to), and a host name with an optional port (``*.`` for subdomains).
    """

    prefixes: tuple[_Prefix, ...] = ()
    networks: tuple[tuple[str, IPNetwork], ...] = ()
    hosts: tuple[_Host, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> HttpAllowlist:
        """Entries separated by commas and/or whitespace; a malformed one raises ConfigError naming it."""
        prefixes: list[_Prefix] = []
        networks: list[tuple[str, IPNetwork]] = []
        hosts: list[_Host] = []
        for entry in (raw or "").replace(",", " ").split():
            if "://" in entry:
                prefixes.append(_parse_prefix(entry))
            elif (network := _parse_network(entry)) is not None:
                networks.append((entry, network))
            else:
                hosts.append(_parse_host(entry))
        return cls(tuple(prefixes), tuple(networks), tuple(hosts))

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.networks or self.hosts)

    def entry_for_url(self, target: Target) -> str | None:
        """The prefix or host entry that allows this URL whatever it resolves to, if any."""
        rules: tuple[_Prefix | _Host, ...] = (*self.prefixes, *self.hosts)
        for rule in rules:
            if rule.matches(target):
                return rule.entry
        return None

    def entry_for_address(self, address: str | IPAddress) -> str | None:
        """The CIDR or IP entry the address is inside, if any."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        for entry, network in self.networks:
            if ip.version == network.version and ip in network:
                return entry
        return None


def _bad_entry(entry: str, why: str) -> ConfigError:
    return ConfigError(f"{ALLOW_VARIABLE}: {entry!r} {why}")


def _parse_prefix(entry: str) -> _Prefix:
    try:
        target = parse_target(entry)
    except InvalidURL:
        why = "is not a valid http:// or https:// URL prefix (no user name, password or spaces)"
        raise _bad_entry(entry, why) from None
    if urlsplit(entry).fragment:
        raise _bad_entry(entry, "has a #fragment; a URL prefix is scheme://host[:port]/path")
    return _Prefix(entry, target.scheme, target.host, target.port, target.path, target.decoded_path)


def _parse_network(entry: str) -> IPNetwork | None:
    if _address(entry) is None and "/" not in entry:
        return None
    try:
        return ipaddress.ip_network(entry)  # strict: "10.0.0.1/8" is a typo for a host or for 10.0.0.0/8
    except ValueError as exc:
        raise _bad_entry(entry, f"is not a valid IP address or CIDR network ({exc})") from None


def _parse_host(entry: str) -> _Host:
    lowered = entry.lower()
    match = _HOST_ENTRY.fullmatch(lowered) or _BRACKETED_ENTRY.fullmatch(lowered)
    if match is None or (match.re is _BRACKETED_ENTRY and _address(match["host"]) is None):
        raise _bad_entry(entry, "is not a URL prefix, a CIDR or IP, or a host name with an optional :port")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise _bad_entry(entry, "has a port outside 1-65535")
    host = _host(match["host"])
    if not host:
        raise _bad_entry(entry, "is not a valid host name")
    return _Host(entry, host, port, subdomains=bool(match.groupdict().get("wild")))


# --- the guard ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    mode: ToolMode
    addresses: tuple[str, ...] = ()
    reason: str = ""  # for deny
    allowed_by: str = ""  # the allowlist entry, for auto


@dataclass(frozen=True)
class Fetched:
    """What one guarded fetch found, already safe to show to the model and in chat."""

    method: str  # GET or HEAD
    url: str  # the URL as requested (normalised), before any redirect
    status: int  # the status code of the last response read
    reason: str  # http.HTTPStatus(status).phrase, never the server's own words; "" for an unknown code
    latency_ms: float  # from the first request to the last response's body, redirects included
    address: str  # the IP the last request was sent to
    redirects: tuple[str, ...] = ()  # the hops followed, in order, as "302 -> http://…"
    not_followed: str = ""  # "redirected to <origin>/… — not followed (why)" when a redirect was refused
    excerpt: str = ""  # the start of the body: control/format characters removed, whitespace collapsed, cut

    def summary(self) -> str:
        status = f"{self.status} {self.reason}".rstrip()
        lines = [f"{self.method} {self.url} -> {status} in {self.latency_ms:.0f} ms (connected to {self.address})"]
        lines += [f"redirect followed: {hop}" for hop in self.redirects]
        if self.not_followed:
            lines.append(self.not_followed)
        if self.excerpt:
            lines.append(f"body: {self.excerpt}")
        return "\n".join(lines)


class OutboundGuard:
    """The one way tools reach a URL: ``assess`` a proposed call, then ``fetch`` it, checked again."""

    def __init__(
        self,
        allowlist: HttpAllowlist,
        *,
        timeout_s: float = 5.0,
        max_redirects: int = 5,
        excerpt_chars: int = 200,
        resolve: Resolve | None = None,
    ) -> None:
        self.allowlist = allowlist
        self.timeout_s = timeout_s  # the most one fetch may take, redirects and name lookups included
        self.max_redirects = max_redirects
        self.excerpt_chars = excerpt_chars
        self._resolve = resolve or _system_resolve

    # -- deciding ---------------------------------------------------------------------------------------------

    async def assess(self, url: str) -> Assessment:
        """What may happen to a call that fetches ``url``: auto (allowlisted), ask (public) or deny."""
        try:
            target = parse_target(url)
        except InvalidURL as exc:
            return Assessment("deny", reason=str(exc))
        verdict = await self._check(target)
        if verdict.mode == "deny":
            return Assessment("deny", reason=verdict.reason)
        where = ", ".join(verdict.addresses)
        if verdict.mode == "auto":
            return Assessment("auto", (f"{target.url} resolves to {where} (allowlisted by {verdict.allowed_by})",))
        kind = "public address" if len(verdict.addresses) == 1 else "public addresses"
        return Assessment("ask", (f"{target.url} resolves to {where} ({kind})",))

    async def _check(self, target: Target) -> _Verdict:
        addresses = await self._addresses(target)
        if not addresses:
            return _Verdict("deny", reason=f"{target.origin_url} does not resolve to an address; nothing was sent.")
        entry = self.allowlist.entry_for_url(target)
        if entry is None and all(self.allowlist.entry_for_address(a) for a in addresses):
            entry = self.allowlist.entry_for_address(addresses[0])
        if entry is not None:
            return _Verdict("auto", addresses, allowed_by=entry)
        internal = [a for a in addresses if is_internal(a) and self.allowlist.entry_for_address(a) is None]
        if internal:
            kind = "an internal address" if len(internal) == 1 else "internal addresses"
            reason = (
                f"{target.url} resolves to {', '.join(internal)}, {kind}; internal targets need an entry in "
                f"{ALLOW_VARIABLE}."
            )
            return _Verdict("deny", addresses, reason=reason)
        return _Verdict("ask", addresses)

    async def _addresses(self, target: Target) -> tuple[str, ...]:
        literal = _address(target.host)
        if literal is not None:
            return (_ip_text(literal),)
        try:
            answers = await asyncio.wait_for(self._resolve(target.host, target.port), self.timeout_s)
        except (TimeoutError, OSError, UnicodeError):
            return ()
        found: list[str] = []
        for answer in answers:
            ip = _address(str(answer))
            if ip is None:
                return ()  # a resolver answering nonsense is not an answer to trust
            if _ip_text(ip) not in found:
                found.append(_ip_text(ip))
        return tuple(found)

    # -- fetching ---------------------------------------------------------------------------------------------

    async def fetch(self, url: str, *, method: str = "GET", reviewed: bool) -> Fetched:
        """Request ``url`` if it is allowed now; ``reviewed``: a person approved this very call.

        Raises OutboundRefused before anything is sent, OutboundFailed when no HTTP answer came.
        """
        method = method.upper()
        if method not in METHODS:
            raise OutboundRefused(f"{_shown(method, 10)} is not allowed; only GET and HEAD requests can be sent.")
        first = parse_target(url)  # InvalidURL is an OutboundRefused: nothing was sent
        failed = OutboundFailed(f"{method} {first.url}: no HTTP answer")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(method, first, reviewed)
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, OSError, _TooManyRedirects) as exc:
            # The cause goes to the operator's log only: in the result it would tell open ports from closed ones.
            log.info("%s %s: no HTTP answer (%s)", method, first.url, type(exc).__name__)
            raise failed from None

    async def _fetch(self, method: str, first: Target, reviewed: bool) -> Fetched:
        # The answer at plan time may differ from now (DNS rebinding): check again, then use only this answer.
        verdict = await self._check(first)
        if verdict.mode == "deny":
            raise OutboundRefused(verdict.reason)
        if verdict.mode == "ask" and not reviewed:
            raise OutboundRefused(
                f"{first.url} resolves to {', '.join(verdict.addresses)} (public); it needs approval, and this call "
                "was not approved."
            )
        started = time.perf_counter()
        target, addresses = first, verdict.addresses
        followed: list[str] = []
        not_followed = ""
        # trust_env=False: a proxy from the environment would resolve the name itself and undo the pinning.
        # No kept-alive connections: pooled by IP, a TLS connection made for one host name could serve another.
        client = httpx.AsyncClient(
            timeout=self.timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        async with client:
            while True:
                response, address = await self._send(client, method, target, addresses)
                try:
                    location = response.headers.get("location") if response.status_code in REDIRECTS else None
                    if location is None:
                        excerpt = await self._excerpt(response, method)
                        break
                    hop, why = await self._next_hop(target, location, first, reviewed)
                    if hop is None:
                        not_followed = why
                        excerpt = await self._excerpt(response, method)
                        break
                finally:
                    await response.aclose()
                if len(followed) >= self.max_redirects:
                    raise _TooManyRedirects()
                followed.append(f"{response.status_code} -> {hop[0].url}")
                target, addresses = hop
        return Fetched(
            method=method,
            url=first.url,
            status=response.status_code,
            reason=_phrase(response.status_code),
            latency_ms=(time.perf_counter() - started) * 1000,
            address=address,
            redirects=tuple(followed),
            not_followed=not_followed,
            excerpt=excerpt,
        )

    async def _send(
        self, client: httpx.AsyncClient, method: str, target: Target, addresses: Iterable[str]
    ) -> tuple[httpx.Response, str]:
        headers = {"Host": target.netloc, "Accept-Encoding": "identity", "User-Agent": "chatops-bot"}
        # sni_hostname: TLS is still verified against the real host name, though the URL names the IP.
        extensions = {"sni_hostname": target.host} if target.scheme == "https" and _address(target.host) is None else {}
        last: Exception | None = None
        for address in list(addresses)[:MAX_ADDRESSES]:
            request = client.build_request(method, target.pinned(address), headers=headers, extensions=extensions)
            try:
                return await client.send(request, stream=True), address
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # "localhost" may answer on 127.0.0.1 but not on ::1: try the next checked address
        assert last is not None
        raise last

    async def _next_hop(
        self, current: Target, location: str, first: Target, reviewed: bool
    ) -> tuple[tuple[Target, tuple[str, ...]] | None, str]:
        """The checked next hop, or None and the line saying why it was not followed."""
        try:
            hop = parse_target(urljoin(current.url, location))
        except (InvalidURL, ValueError):
            return None, "redirected to a location that is not a plain http(s) URL — not followed"
        shown = f"redirected to {hop.origin_url}/… — not followed"
        verdict = await self._check(hop)
        if verdict.mode == "auto":
            return (hop, verdict.addresses), ""
        if verdict.mode == "deny":
            return None, f"{shown} (an internal address or one that does not resolve; not in {ALLOW_VARIABLE})"
        if not reviewed:
            return None, f"{shown} (not in {ALLOW_VARIABLE}; a public target needs approval)"
        if hop.origin != first.origin:
            return None, f"{shown} (another origin than the approved URL, and not in {ALLOW_VARIABLE})"
        return (hop, verdict.addresses), ""

    async def _excerpt(self, response: httpx.Response, method: str) -> str:
        if method == "HEAD" or response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            return ""  # decompressing would let a small answer grow without bound
        body = bytearray()
        async for chunk in response.aiter_raw():
            body.extend(chunk)
            if len(body) >= MAX_BODY_BYTES:
                break
        more = len(body) > MAX_BODY_BYTES
        return _sanitise(_decode(bytes(body[:MAX_BODY_BYTES]), response.charset_encoding), self.excerpt_chars, more)


class _TooManyRedirects(Exception):
    """More hops than max_redirects: reported like any other missing answer."""


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _decode(body: bytes, charset: str | None) -> str:
    try:
        codec = codecs.lookup(charset or "utf-8").name
    except LookupError:
        codec = "utf-8"
    return body.decode(codec, errors="replace")


def _sanitise(text: str, limit: int, more: bool = False) -> str:
    """Text safe to show: no control or format characters (bidi overrides, zero-width), one space between words."""
    kept = "".join(
        " " if ch in "\n\t\r" else ch for ch in text if ch in "\n\t\r" or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    collapsed = " ".join(kept.split())
    if len(collapsed) > limit:
        return collapsed[: max(limit - 1, 0)].rstrip() + "…"
    return collapsed + ("…" if more and collapsed else "")
