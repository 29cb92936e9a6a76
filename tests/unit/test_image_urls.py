"""Image URLs: only public http(s) addresses are fetched, every hop is checked again, and
every way a fetch can fail is reported with the setting that governs it.

No Ray, no network (there is none here, and a loopback server is exactly what the checks
refuse): host names resolve through a fake DNS table and requests are answered by an
``httpx.MockTransport`` that records what raysight actually asked for.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx
import pytest

from raysight import image_urls
from raysight.errors import ImageFetchFailed, ImageTooLarge, NotAnImage, URLRefused
from raysight.image_urls import fetch_image_url
from raysight.images import load_image_reference
from raysight.spec import ImageInputPolicy
from tests.unit.test_images import encode, gradient

PUBLIC_IP = "93.184.216.34"
DEFAULT = ImageInputPolicy()


@pytest.fixture
def dns(monkeypatch):
    """A fake resolver: tests map host names to addresses; IP literals resolve to themselves."""
    table: dict[str, list[str]] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        addresses = table.get(host) or ([host] if _is_ip(host) else [])
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port)) for ip in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def url_policy(**overrides) -> ImageInputPolicy:
    return ImageInputPolicy(allow_urls=True, **overrides)


def serve(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    """Answer requests by their Host header and path; record them on the transport."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        key = request.headers["host"] + request.url.path
        return routes.get(key, httpx.Response(404))

    transport = httpx.MockTransport(handler)
    transport.seen = seen
    return transport


# --- bad URLs ------------------------------------------------------------------------------


def test_urls_are_refused_while_turned_off():
    with pytest.raises(URLRefused, match="allow_urls: true"):
        load_image_reference("https://example.com/cat.png", DEFAULT)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cat.png",
        "http://localhost:8000/cat.png",
        "http://10.1.2.3/cat.png",
        "http://192.168.0.7/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/cat.png",
        "http://[::ffff:127.0.0.1]/cat.png",
        "http://0.0.0.0/cat.png",
        "http://224.0.0.1/cat.png",
        "http://127.1/cat.png",
    ],
)
def test_non_public_addresses_are_refused(url):
    with pytest.raises(URLRefused, match="non-public address; image URLs must point to public"):
        fetch_image_url(url, url_policy(), transport=serve({}))


def test_host_with_any_private_address_is_refused(dns):
    dns["mixed.example.com"] = [PUBLIC_IP, "10.0.0.5"]
    with pytest.raises(URLRefused, match="resolves to 10.0.0.5"):
        fetch_image_url("https://mixed.example.com/cat.png", url_policy(), transport=serve({}))


# Each IPv6 form that embeds an IPv4 address, embedding a private or metadata one.
EMBEDDING_PRIVATE_IPV4 = {
    "6to4 of 169.254.169.254": "2002:a9fe:a9fe::1",
    "6to4 of 10.0.0.1": "2002:a00:1::",
    "IPv4-mapped 127.0.0.1": "::ffff:127.0.0.1",
    "IPv4-compatible 10.1.2.3": "::10.1.2.3",
    "NAT64 of 169.254.169.254": "64:ff9b::a9fe:a9fe",
    "local NAT64 of 192.168.0.1": "64:ff9b:1::c0a8:1",
    "Teredo, client 192.168.1.1": "2001:0:4136:e378:8000:63bf:3f57:fefe",
    "ISATAP of 172.16.0.1": "2001:db9:1:2:0:5efe:ac10:1",
}


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE_IPV4.values(), ids=EMBEDDING_PRIVATE_IPV4.keys())
def test_ipv6_forms_embedding_a_private_ipv4_are_refused(dns, address):
    dns["sneaky.example.com"] = [address]
    transport = serve({})
    with pytest.raises(URLRefused, match="non-public address"):
        fetch_image_url("http://sneaky.example.com/cat.png", url_policy(), transport=transport)
    assert transport.seen == []


def test_embedded_ipv4_addresses_are_found():
    found = image_urls.embedded_ipv4
    assert found(ipaddress.IPv6Address("2002:a9fe:a9fe::1")) == [ipaddress.IPv4Address("169.254.169.254")]
    assert found(ipaddress.IPv6Address("64:ff9b::808:808")) == [ipaddress.IPv4Address("8.8.8.8")]
    assert ipaddress.IPv4Address("192.168.1.1") in found(
        ipaddress.IPv6Address(EMBEDDING_PRIVATE_IPV4["Teredo, client 192.168.1.1"]))
    assert found(ipaddress.IPv6Address("2606:4700:4700::1111")) == []  # plain global IPv6


@pytest.mark.parametrize("url", ["ftp://example.com/cat.png", "file:///etc/passwd"])
def test_non_http_schemes_are_refused_by_fetch(url):
    with pytest.raises(URLRefused, match="only http and https"):
        fetch_image_url(url, url_policy())


def test_domain_not_in_the_allowlist_is_refused(dns):
    dns["notexample.com"] = [PUBLIC_IP]
    policy = url_policy(url_allowlist=("example.com",))
    expected = r"'notexample.com' is not in images.url_allowlist \(example.com\)"
    with pytest.raises(URLRefused, match=expected):
        fetch_image_url("https://notexample.com/cat.png", policy, transport=serve({}))


def test_redirect_target_is_checked_again(dns):
    dns["images.example.com"] = [PUBLIC_IP]
    redirect = httpx.Response(302, headers={"location": "http://169.254.169.254/latest/"})
    transport = serve({"images.example.com/cat.png": redirect})
    with pytest.raises(URLRefused, match="169.254.169.254"):
        fetch_image_url("http://images.example.com/cat.png", url_policy(), transport=transport)
    assert len(transport.seen) == 1  # the metadata address was never asked


def test_check_url_target_refuses_a_redirect_to_a_private_name(dns):
    dns["internal.example.com"] = ["172.16.4.2"]
    with pytest.raises(URLRefused, match="172.16.4.2"):
        image_urls._check_url_target("https://internal.example.com/x", url_policy())


def test_url_with_user_credentials_is_refused(dns):
    dns["images.example.com"] = [PUBLIC_IP]
    with pytest.raises(URLRefused, match=r"user credentials \(user@host\)"):
        image_urls._check_url_target("http://user@169.254.169.254@images.example.com/",
                                     url_policy())


def test_too_many_redirects(dns):
    dns["images.example.com"] = [PUBLIC_IP]
    loop = httpx.Response(301, headers={"location": "/cat.png"})
    transport = serve({"images.example.com/cat.png": loop})
    with pytest.raises(ImageFetchFailed, match="more than 2 times.*url_max_redirects"):
        fetch_image_url("https://images.example.com/cat.png", url_policy(url_max_redirects=2),
                        transport=transport)
    assert len(transport.seen) == 3


def test_http_error_status_is_reported(dns):
    dns["images.example.com"] = [PUBLIC_IP]
    with pytest.raises(ImageFetchFailed, match="returned HTTP 404 Not Found"):
        fetch_image_url("https://images.example.com/gone.png", url_policy(), transport=serve({}))


def test_timeout_is_reported_with_the_setting(dns):
    dns["slow.example.com"] = [PUBLIC_IP]

    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ImageFetchFailed, match=r"longer than 2.5s \(images.url_timeout_s\)"):
        fetch_image_url("https://slow.example.com/cat.png", url_policy(url_timeout_s=2.5),
                        transport=httpx.MockTransport(handler))


def test_slow_drip_body_hits_the_overall_deadline(dns, monkeypatch):
    dns["slow.example.com"] = [PUBLIC_IP]
    ticks = iter(range(0, 1000, 4))
    monkeypatch.setattr(image_urls, "_clock", lambda: next(ticks))
    body = httpx.Response(200, content=(b"x" * 10 for _ in range(100)))
    with pytest.raises(ImageFetchFailed, match="url_timeout_s"):
        fetch_image_url("https://slow.example.com/cat.png", url_policy(url_timeout_s=10),
                        transport=serve({"slow.example.com/cat.png": body}))


def test_endless_body_stops_at_the_byte_limit(dns):
    dns["big.example.com"] = [PUBLIC_IP]

    def endless():
        while True:
            yield b"\x00" * 4096

    transport = serve({"big.example.com/cat.png": httpx.Response(200, content=endless())})
    with pytest.raises(ImageTooLarge, match="over 100,000 bytes.*stopped reading"):
        fetch_image_url("https://big.example.com/cat.png", url_policy(max_image_bytes=100_000),
                        transport=transport)


def test_declared_length_over_the_limit_is_refused_before_reading(dns):
    dns["big.example.com"] = [PUBLIC_IP]
    transport = serve({"big.example.com/cat.png": httpx.Response(200, content=b"x" * 5000)})
    with pytest.raises(ImageTooLarge, match="5,000 bytes; the limit is 1,000 bytes"):
        fetch_image_url("https://big.example.com/cat.png", url_policy(max_image_bytes=1000),
                        transport=transport)


def test_html_instead_of_an_image_names_the_url(dns):
    dns["images.example.com"] = [PUBLIC_IP]
    page = httpx.Response(200, content=b"<!DOCTYPE html><html>login</html>")
    transport = serve({"images.example.com/cat.png": page})
    expected = r"^image from https://images.example.com/cat.png: .*<!DOCTYPE"
    with pytest.raises(NotAnImage, match=expected):
        fetch_image_url("https://images.example.com/cat.png", url_policy(), transport=transport)


# --- good URLs ---------------------------------------------------------------------------


def test_url_fetch_connects_to_the_checked_address(dns):
    dns["cdn.images.example.com"] = [PUBLIC_IP]
    png = encode(gradient((12, 6)))
    transport = serve({"cdn.images.example.com/cat.png": httpx.Response(200, content=png)})
    policy = url_policy(url_allowlist=("images.example.com",))
    image = fetch_image_url("https://cdn.images.example.com/cat.png", policy, transport=transport)
    assert image.size == (12, 6)
    (request,) = transport.seen
    assert request.url.host == PUBLIC_IP
    assert request.headers["host"] == "cdn.images.example.com"
    assert request.extensions["sni_hostname"] == "cdn.images.example.com"


def test_redirect_to_another_public_host_is_followed(dns):
    dns["a.example.com"] = [PUBLIC_IP]
    dns["b.example.org"] = ["2606:2800:220:1:248:1893:25c8:1946"]
    png = encode(gradient((7, 3)))
    moved = httpx.Response(307, headers={"location": "http://b.example.org:8080/c.png"})
    transport = serve({
        "a.example.com/cat.png": moved,
        "b.example.org:8080/c.png": httpx.Response(200, content=png),
    })
    image = fetch_image_url("https://a.example.com/cat.png", url_policy(), transport=transport)
    assert image.size == (7, 3)
    assert str(transport.seen[1].url) == "http://[2606:2800:220:1:248:1893:25c8:1946]:8080/c.png"
