"""Which http(s) URLs `cot-rm serve` fetches, and how it connects to them.

Whoever holds the API key names the URLs; without a policy the server would fetch whatever it can
reach: its own ports, a cloud metadata endpoint, an admin page on the private network. So, by default,
a URL is refused when its host resolves to an address that is not globally reachable: loopback,
private (RFC 1918, unique-local fc00::/7 and the older site-local fec0::/10), link-local
(169.254.0.0/16, fe80::/10: metadata endpoints live there), multicast, unspecified (0.0.0.0 and ::
reach this machine on Linux), reserved, the shared address space 100.64.0.0/10 (carrier-grade NAT:
not the internet, and cloud providers put internal services there), and the other special-purpose
ranges (documentation, benchmarking, 0.0.0.0/8...). An IPv4 address carried in IPv6 (IPv4-mapped
::ffff:a.b.c.d, NAT64's 64:ff9b::/96, 6to4's 2002::/16) is judged as that IPv4 address, so
::ffff:127.0.0.1 is loopback. A name with any refused address is refused, whichever one a connection
would have used. Only http and https are fetched.

`allow_private` (`--allow-private-media-urls`) lifts the address rule, for a trusted network;
`domains` (`--allowed-media-domains`) limits fetching to those exact host names (case-insensitive,
no subdomains implied, IP literals allowed), on top of the address rule (a listed host that resolves
to a private address is still refused unless `allow_private`).

Every hop is checked: redirects are followed here one at a time, each Location checked as the first
URL was. And each request goes to the address that was checked: the name is resolved once, every
address is checked, then the request is sent to that IP with the name kept in the Host header and as
the TLS server name (SNI and certificate check), so a DNS answer that changes between the check and
the connection (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")
)
SHARED_NET = ipaddress.ip_network("100.64.0.0/10")
NAT64_NET = ipaddress.ip_network("64:ff9b::/96")
PRIVATE_HINT = (
    "this server refuses private and local addresses "
    "(start it with --allow-private-media-urls on a trusted network)"
)
DOMAINS_HINT = "not one of this server's allowed media domains (--allowed-media-domains)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A URL the policy does not fetch; the message names the rule (nothing was sent to it)."""


def carried_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, NAT64, 6to4), else `ip` itself: a packet to
    ::ffff:127.0.0.1 reaches 127.0.0.1, and a NAT64 gateway forwards 64:ff9b::a00:1 to 10.0.0.1."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in NAT64_NET:
            return ipaddress.IPv4Address(ip.packed[-4:])
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_rule(ip: IPAddress) -> str | None:
    """What kind of address `ip` is ("a loopback address", ...) when the default rule refuses it; None
    for a globally reachable one. Checked most specific first, so the message names the likely rule."""
    ip = carried_ipv4(ip)
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if any(ip in net for net in PRIVATE_NETS):
        return "a private address"
    if ip in SHARED_NET:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:  # 0.0.0.0/8, documentation, benchmarking, IETF protocol ranges...
        return "a special-purpose address (not globally reachable)"
    return None


def host_key(host: str) -> str:
    """A host name as the allowlist compares it: lower case, no trailing dot, IDNA names in one form
    (as httpx reads them from URLs), IP literals in their canonical form."""
    host = host.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return httpx.URL(f"http://{host}/").host


def parse_domains(text: str) -> frozenset[str]:
    """`a.com,b.org` -> the allowlist; ValueError for anything that is not a bare host name."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise ValueError("give one or more host names, comma-separated")
    for entry in entries:
        bare = entry.strip("[]")
        if any(c in entry for c in "/@?#\\ ") or (":" in bare and not _is_ip(bare)):
            raise ValueError(f"{entry!r}: give a bare host name (no scheme, port or path)")
    try:
        return frozenset(host_key(e) for e in entries)
    except httpx.InvalidURL as err:
        raise ValueError(f"not a host name ({err})") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order (an IP literal: itself). Runs the
    system resolver in a thread, as a connection would, so /etc/hosts and the like apply."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:  # as httpx would report it had it resolved the name
        raise httpx.ConnectError(f"{host}: {err.strerror}") from None
    found = dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos)
    if not found:
        raise httpx.ConnectError(f"{host}: no address")
    return list(found)


@dataclass(frozen=True)
class MediaPolicy:
    """The rules for one server: the address rule (unless `allow_private`) and the host allowlist."""

    allow_private: bool = False  # lift the address rule (a trusted network)
    domains: frozenset[str] = frozenset()  # host_key()s; empty: any host

    def check_url(self, url: httpx.URL, via: httpx.URL | None = None) -> None:
        """The rules that need no DNS: the scheme and the host allowlist. `via`: the URL whose redirect
        led here."""
        if url.scheme not in SCHEMES:
            raise Refused(f"{_where(url, via)}, not an http(s) URL; this server fetches http and https only")
        if not url.host:
            raise httpx.InvalidURL(f"{url}: no host")
        if self.domains and host_key(url.host) not in self.domains:
            raise Refused(f"{_where(url, via)}: the host {url.host} is {DOMAINS_HINT}")

    async def addresses(self, url: httpx.URL, via: httpx.URL | None = None) -> list[IPAddress]:
        """Check `url` fully: its scheme, its host, then every address it resolves to. Returns the
        addresses to connect to (those, and no others)."""
        self.check_url(url, via)
        ips = await resolve(url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80))
        if not self.allow_private:
            for ip in ips:
                if (kind := address_rule(ip)) is not None:
                    verb = ", which resolves to" if via is not None else " resolves to"
                    shown = ip if carried_ipv4(ip) == ip else f"{ip} (IPv4 {carried_ipv4(ip)})"
                    raise Refused(f"{_where(url, via)}{verb} {shown}, {kind}; {PRIVATE_HINT}")
        return ips


def _where(url: httpx.URL, via: httpx.URL | None) -> str:
    return str(url) if via is None else f"{via} redirects to {url}"


def pinned_client(timeout_s: float) -> httpx.AsyncClient:
    """A client for policed fetches. Redirects off (`open_url` follows them, checking each). An explicit
    transport, because httpx then ignores the proxy variables of the environment: a proxy would resolve
    the name itself, past the check (certificates still come from the usual places)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(), timeout=timeout_s, follow_redirects=False)


async def open_url(client: httpx.AsyncClient, url: str, policy: MediaPolicy, headers: dict) -> httpx.Response:
    """A streamed GET of `url` under `policy`, redirects followed (at most MAX_REDIRECTS), each hop
    checked and sent to the addresses checked. Raises Refused before anything is sent to a refused
    hop. The caller closes the response."""
    first = current = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        via = None if current is first else first
        ips = await policy.addresses(current, via)
        resp = await _send_pinned(client, current, ips, headers)
        location = resp.headers.get("location")
        if resp.status_code not in REDIRECT_CODES or not location:
            return resp
        await resp.aclose()
        current = current.join(location)
    raise httpx.TooManyRedirects(f"{first}: more than {MAX_REDIRECTS} redirects")


async def _send_pinned(client: httpx.AsyncClient, url: httpx.URL, ips: list[IPAddress], headers: dict):
    """Send GET `url` to the first of `ips` that accepts a connection. The URL handed to httpx names
    the IP, so nothing resolves the name again; the name stays in the Host header and, for https, in
    the `sni_hostname` extension, which httpcore uses as the TLS server name and checks the
    certificate against: httpx's public request API, where a custom transport or network backend
    would have to reach into its private connection pool. `connection: close`: the pool keys connections by IP,
    so a later hop to another name on the same IP would otherwise reuse a TLS session verified for
    the first name."""
    named = not _is_ip(url.host)
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if named and url.scheme == "https" else {}
    last: Exception | None = None
    for ip in ips:
        request = client.build_request("GET", url.copy_with(host=str(ip)),
                                       headers={**headers, "host": url.netloc.decode("ascii"), "connection": "close"},
                                       extensions=extensions)  # fmt: skip
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as err:  # nothing was sent: the next checked address may answer
            last = err
    raise last if last is not None else httpx.ConnectError(f"{url}: no address to connect to")
