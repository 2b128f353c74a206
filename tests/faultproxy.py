"""A small fault-injection HTTP proxy on 127.0.0.1 for tests, in front of a real FHIR server.

    async with FaultProxy(upstream_base_url) as proxy:
        proxy.plan(lambda m, path: m == "GET", ["429", "ok", "reset", "truncate"])
        ... client talks to proxy.base_url ...

Each request is forwarded on a fresh upstream connection (``Connection: close`` both ways). A
*plan* hands each matching request the next fault of its list (``"ok"`` forwards untouched);
when the list is used up the plan stops firing. Faults:

- ``429`` / ``503``: answered by the proxy, with ``Retry-After`` (``proxy.retry_after``);
- ``reset``: the client's connection is aborted before any answer;
- ``truncate``: the upstream answer with only half its body, then the connection closes;
- ``delay``: the upstream answer after ``proxy.delay`` seconds (past the client's timeout);
- ``html``: ``200 text/html`` with a login page, as a misconfigured gateway sends;
- ``garbage``: ``200 application/fhir+json`` whose body is cut-off JSON;
- ``loop``: the upstream Bundle with its ``next`` link pointing at the page itself.

Bounded: at most ``max_clients`` connections at once, bodies up to ``max_body`` bytes, and the
server stops by itself after ``lifetime`` seconds even if a test forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

Match = Callable[[str, str], bool]  # (method, path with query) -> fires?
FAULTS = frozenset({"ok", "429", "503", "reset", "truncate", "delay", "html", "garbage", "loop"})


@dataclass
class _Plan:
    """Which requests a plan applies to, and the faults it has left."""

    match: Match
    faults: list[str]


@dataclass
class FaultProxy:
    """Forward to `upstream` (a FHIR base URL on loopback) and inject the planned faults."""

    upstream: str
    retry_after: str = "1"
    delay: float = 2.0
    max_clients: int = 32
    max_body: int = 64 * 1024 * 1024
    lifetime: float = 120.0
    injected: list[str] = field(default_factory=list)  # faults fired, in order
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) seen

    def __post_init__(self) -> None:
        """Check the upstream is loopback and prepare the state."""
        parts = urlsplit(self.upstream)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError("the upstream must be http://127.0.0.1:<port>/...")
        self._up_host, self._up_port, self._path = parts.hostname, parts.port, parts.path
        self._plans: list[_Plan] = []
        self._server: asyncio.Server | None = None
        self._gate = asyncio.Semaphore(self.max_clients)
        self._stopper: asyncio.TimerHandle | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The proxy's FHIR base URL (same path as the upstream's)."""
        return f"http://127.0.0.1:{self.port}{self._path}"

    def plan(self, match: Match, faults: list[str]) -> None:
        """Give each request that `match`es the next fault of `faults`, until they run out."""
        unknown = set(faults) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self._plans.append(_Plan(match, list(faults)))

    def clear(self) -> None:
        """Forget every plan: forward everything untouched."""
        self._plans.clear()

    async def __aenter__(self) -> FaultProxy:
        """Listen on a free loopback port; stop by itself after `lifetime` seconds."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._stopper = asyncio.get_running_loop().call_later(self.lifetime, self._server.close)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening."""
        if self._stopper is not None:
            self._stopper.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _next_fault(self, method: str, target: str) -> str:
        """The fault for this request: the first matching plan with faults left."""
        for plan in self._plans:
            if plan.faults and plan.match(method, target):
                fault = plan.faults.pop(0)
                if fault != "ok":
                    self.injected.append(fault)
                return fault
        return "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (one request), within the connection bound."""
        async with self._gate:
            try:
                await self._serve(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                pass  # the client went away or sent nonsense: nothing to answer
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request, then inject its fault or forward it."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
        length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
        if length > self.max_body:
            raise ValueError("request body too large")
        body = await reader.readexactly(length) if length else b""
        self.requests.append((method, target))
        fault = self._next_fault(method, target)
        if fault == "reset":
            writer.transport.abort()
            return
        if fault in ("429", "503"):
            writer.write(_response(int(fault), {"Retry-After": self.retry_after}, _outcome()))
            return
        if fault == "html":
            page = b"<html><body>Please log in</body></html>"
            writer.write(_response(200, {"Content-Type": "text/html"}, page))
            return
        if fault == "garbage":
            writer.write(_response(200, {}, b'{"resourceType": "Bundle", "entry": [{"res'))
            return
        status, up_headers, up_body = await self._forward(method, target, headers, body)
        if fault == "delay":
            await asyncio.sleep(self.delay)
        if fault == "loop":
            up_body = _loop_next(up_body, target, self.base_url)
        if fault == "truncate":
            full = len(up_body)
            cut = up_body[: full // 2]
            writer.write(_response(status, up_headers, cut, length=full))
            await writer.drain()
            writer.transport.abort()
            return
        writer.write(_response(status, up_headers, up_body))
        await writer.drain()

    async def _forward(
        self, method: str, target: str, headers: list[list[str]], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Send the request upstream on a fresh connection; return status, headers, body."""
        up_reader, up_writer = await asyncio.open_connection(self._up_host, self._up_port)
        try:
            keep = [
                (k.strip(), v.strip())
                for k, v in headers
                if k.strip().lower() not in ("connection", "host", "content-length")
            ]
            keep += [("Host", f"{self._up_host}:{self._up_port}"), ("Connection", "close")]
            if body:
                keep.append(("Content-Length", str(len(body))))
            request = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keep)
            up_writer.write(request.encode("latin-1") + b"\r\n" + body)
            await up_writer.drain()
            raw = await up_reader.read()  # Connection: close -> read to EOF
            if len(raw) > self.max_body:
                raise ValueError("upstream answer too large")
        finally:
            up_writer.close()
            with contextlib.suppress(ConnectionError):
                await up_writer.wait_closed()
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        out: dict[str, str] = {}
        chunked = False
        for line in header_lines:
            key, _, value = line.partition(":")
            lower = key.strip().lower()
            if lower == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif lower not in ("content-length", "connection", "transfer-encoding"):
                out[key.strip()] = value.strip()
        # Server-side absolute URLs (next links, Content-Location) name the upstream.
        up_base = f"http://{self._up_host}:{self._up_port}".encode()
        body_out = _dechunk(rest) if chunked else rest
        body_out = body_out.replace(up_base, f"http://127.0.0.1:{self.port}".encode())
        for key, value in out.items():
            out[key] = value.replace(up_base.decode(), f"http://127.0.0.1:{self.port}")
        return status, out, body_out


def _dechunk(data: bytes) -> bytes:
    """The body of a chunked transfer encoding."""
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def _outcome() -> bytes:
    """The OperationOutcome the proxy sends with its own 429 and 503."""
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "throttled", "diagnostics": "slow down"}],
        }
    ).encode()


def _response(
    status: int, headers: dict[str, str], body: bytes, *, length: int | None = None
) -> bytes:
    """A raw HTTP/1.1 response; `length` overrides Content-Length (for truncation)."""
    headers = {"Content-Type": "application/fhir+json"} | headers
    headers["Content-Length"] = str(len(body) if length is None else length)
    headers["Connection"] = "close"
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def _loop_next(body: bytes, target: str, base_url: str) -> bytes:
    """The Bundle with its next link pointing back at the page just served."""
    bundle = json.loads(body)
    origin = base_url.split("/fhir", 1)[0] if "/fhir" in base_url else base_url
    links = [link for link in bundle.get("link", []) if link.get("relation") != "next"]
    links.append({"relation": "next", "url": origin + target})
    bundle["link"] = links
    return json.dumps(bundle).encode()
