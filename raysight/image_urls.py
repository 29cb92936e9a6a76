"""Fetching image URLs without letting a request reach what it should not.

Off unless ``images.allow_urls`` is set. When on: only http(s), only allowlisted domains (if a
list is given), every address a host resolves to must be public (checked again on each
redirect, and the connection goes to the checked address), a time limit over the whole fetch
and a byte cap while reading.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit, urlunsplit

from raysight.errors import ImageFetchFailed, ImageTooLarge, URLRefused
from raysight.image_decode import check_byte_count, decode_from
from raysight.spec import ImageInputPolicy

if TYPE_CHECKING:
    import httpx
    from PIL import Image

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_clock = time.monotonic  # tests replace it to run the fetch deadline without sleeping


def fetch_image_url(
    url: str, policy: ImageInputPolicy, *, transport: httpx.BaseTransport | None = None
) -> Image.Image:
    """Fetch and decode an http(s) image URL that points to a public, allowed host.

    ``transport`` lets tests answer requests without a network.
    """
    if not policy.allow_urls:
        raise URLRefused(f"image URLs are turned off, so {_short(url)} was not fetched; set "
                         "images.allow_urls: true (and images.url_allowlist to limit domains)")
    import httpx

    limit = policy.url_timeout_s
    deadline = _clock() + limit
    timed_out = f"fetching {_short(url)} took longer than {limit}s (images.url_timeout_s)"
    current = url
    # trust_env=False: a proxy from the environment would bypass the address checks.
    with httpx.Client(transport=transport, timeout=limit, trust_env=False) as client:
        for _ in range(policy.url_max_redirects + 1):
            # Connect to the checked address, not the name: a DNS answer that changes between
            # check and connect (rebinding) cannot redirect the request to a private host.
            pinned_url, host_header, hostname = _check_url_target(current, policy)
            headers = {"Host": host_header, "User-Agent": "raysight", "Accept": "image/*"}
            tls_name = {"sni_hostname": hostname} if pinned_url.startswith("https") else {}
            try:
                with client.stream("GET", pinned_url, headers=headers, extensions=tls_name,
                                   follow_redirects=False) as response:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_CODES and location:
                        current = urljoin(current, location)
                        continue
                    if not response.is_success:
                        raise ImageFetchFailed(f"fetching {_short(current)} returned HTTP "
                                               f"{response.status_code} {response.reason_phrase}")
                    data = _read_capped(response, policy, deadline, current, timed_out)
            except httpx.TimeoutException:
                raise ImageFetchFailed(timed_out) from None
            except httpx.HTTPError as exc:
                raise ImageFetchFailed(f"could not fetch {_short(current)}: {exc}") from None
            return decode_from(f"image from {_short(current)}", data, policy)
    raise ImageFetchFailed(f"{_short(url)} redirected more than {policy.url_max_redirects} "
                           "times (images.url_max_redirects)")


def _read_capped(
    response: httpx.Response, policy: ImageInputPolicy, deadline: float, url: str, timed_out: str
) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        check_byte_count(int(declared), policy, f"the image at {_short(url)}")
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > policy.max_image_bytes:
            raise ImageTooLarge(f"the image at {_short(url)} is over {policy.max_image_bytes:,} "
                                "bytes, the limit (images.max_image_bytes); stopped reading it")
        if _clock() > deadline:
            raise ImageFetchFailed(timed_out)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_url_target(url: str, policy: ImageInputPolicy) -> tuple[str, str, str]:
    """Check a URL (or a redirect target): scheme, allowlist, every resolved address.

    Returns the URL pinned to the checked IP address, the Host header and the host name.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise URLRefused(f"only http and https image URLs are fetched; {_short(url)} has "
                         f"scheme {scheme!r}")
    hostname = (parts.hostname or "").rstrip(".")
    if not hostname or "@" in parts.netloc:
        raise URLRefused(f"the image URL {_short(url)} has no host, or has user credentials "
                         "(user@host), which image URLs may not carry")
    try:
        port = parts.port
    except ValueError:
        raise URLRefused(f"the image URL {_short(url)} has an invalid port") from None
    if policy.url_allowlist and not _host_allowed(hostname, policy.url_allowlist):
        raise URLRefused(f"host {hostname!r} is not in images.url_allowlist ("
                         f"{', '.join(policy.url_allowlist)}); add its domain there to allow it")
    address = _resolve_public(hostname, port or (443 if scheme == "https" else 80), url)
    netloc = (f"[{address}]" if address.version == 6 else str(address)) + (f":{port}" if port else "")
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), parts.netloc, hostname


def _host_allowed(hostname: str, allowlist: tuple[str, ...]) -> bool:
    """A listed domain allows itself and its subdomains ("example.com" not "badexample.com")."""
    domains = [domain.strip().strip(".").lower() for domain in allowlist]
    return any(hostname == d or hostname.endswith("." + d) for d in domains if d)


def _resolve_public(hostname: str, port: int, url: str) -> _Address:
    """Resolve a host; refuse it if ANY address is not public. Returns the one to connect to."""
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ImageFetchFailed(f"cannot resolve the host of {_short(url)}: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not _is_public(address):
            raise URLRefused(f"{_short(url)} resolves to {address}, a private, loopback, "
                             "link-local or otherwise non-public address; image URLs must point "
                             "to public hosts (this is always refused)")
        addresses.append(address)
    return min(addresses, key=lambda address: address.version)  # IPv4 first: reachable more often


def _is_public(address: _Address) -> bool:
    """Public, and so is every IPv4 address an IPv6 one embeds (a 6to4 address such as
    2002:a9fe:a9fe::1 routes to 169.254.169.254 on a host with a 6to4 relay)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if any(not _is_public(inner) for inner in embedded):
            return False
        if address.ipv4_mapped is not None:
            return True  # its one IPv4 address was public
    return address.is_global and not (address.is_private or address.is_loopback
                                      or address.is_link_local or address.is_multicast
                                      or address.is_reserved or address.is_unspecified)


_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_ISATAP_IDS = (0x00005EFE, 0x02005EFE)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
    (::a.b.c.d), 6to4 (2002::/16), Teredo (2001::/32, server and client), NAT64 (64:ff9b::/96,
    64:ff9b:1::/48) and ISATAP interface ids (::5efe:a.b.c.d)."""
    found: list[ipaddress.IPv4Address] = []
    value = int(address)
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (not :: or ::1)
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        found.append(low32)
    if (value >> 32) & 0xFFFFFFFF in _ISATAP_IDS:
        found.append(low32)
    return found


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[:limit] + "..."
