"""UPnP IGD client codecs: SSDP discovery, device description, SOAP actions, HTTP responses.

Specs: UPnP Device Architecture 1.1 (SSDP §1, description §2, control/SOAP §3),
http://upnp.org/specs/arch/UPnP-arch-DeviceArchitecture-v1.1.pdf, and the IGD
``WANIPConnection:1``/``:2`` service templates (``AddPortMapping``, ``DeletePortMapping``,
``GetExternalIPAddress``).

Theory of operation: all functions are pure. :func:`build_msearch` makes the multicast
``M-SEARCH`` datagram; :func:`parse_ssdp_response` reads a unicast answer (its ``LOCATION`` is
the device description URL). :func:`parse_description` finds the WAN connection service and
its control URL in the description XML; :func:`build_soap_request` and
:func:`parse_soap_response` encode an action and decode its ``...Response`` or SOAP fault.
:func:`build_http_request` / :func:`parse_http_response` are a deliberately small HTTP/1.1
(``Connection: close``, ``Content-Length`` or chunked bodies).

Everything here reads bytes from the LAN, which is not trusted (any host can answer an
M-SEARCH). So: every input has a size cap checked first; header counts are capped; XML with a
``DOCTYPE`` or entity declaration is refused before and during parsing (no entity expansion
"billion laughs", no external entities - expat never fetches them, and declaring one is
already an error here); control URLs must be ``http://`` URLs on the same host as the
description (no redirection of SOAP calls to third parties). Malformed input raises
:class:`~glueberry.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Final
from xml.parsers import expat
from xml.sax.saxutils import escape

from glueberry.errors import LocalProtocolError, RemoteProtocolError

_PROTO: Final = "upnp"

SSDP_ADDR: Final = "239.255.255.250"
SSDP_PORT: Final = 1900
IGD_V1: Final = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
IGD_V2: Final = "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
WAN_IP_V1: Final = "urn:schemas-upnp-org:service:WANIPConnection:1"
WAN_IP_V2: Final = "urn:schemas-upnp-org:service:WANIPConnection:2"
WAN_PPP_V1: Final = "urn:schemas-upnp-org:service:WANPPPConnection:1"
WAN_SERVICES: Final = (WAN_IP_V2, WAN_IP_V1, WAN_PPP_V1)

MAX_SSDP_RESPONSE: Final = 4096
MAX_HEADERS: Final = 64
MAX_HTTP_HEAD: Final = 8192
MAX_DESCRIPTION: Final = 128 * 1024
MAX_SOAP_RESPONSE: Final = 32 * 1024
MAX_XML_DEPTH: Final = 32

_SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
_CONTROL_NS: Final = "urn:schemas-upnp-org:control-1-0"


def _err(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(msg, protocol=_PROTO)


# --- HTTP-style headers ------------------------------------------------------------------


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise _err("undecodable header") from exc
    lines = text.split("\r\n")
    start = lines[0]
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise _err("too many headers")
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _err("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return start, headers


# --- SSDP --------------------------------------------------------------------------------


def build_msearch(st: str = IGD_V1, mx: int = 2) -> bytes:
    """The multicast ``M-SEARCH`` request for search target ``st``."""
    if not 1 <= mx <= 5:
        raise LocalProtocolError("MX must be 1..5", protocol=_PROTO)
    if any(c in st for c in "\r\n"):
        raise LocalProtocolError("bad search target", protocol=_PROTO)
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDR}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {st}\r\n"
        "\r\n"
    ).encode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class SsdpResponse:
    location: str
    """Device description URL (``http://...``)."""
    st: str
    usn: str
    server: str


def parse_ssdp_response(data: bytes) -> SsdpResponse:
    """Parse a unicast M-SEARCH answer (``HTTP/1.1 200 OK`` with ``LOCATION``)."""
    if len(data) > MAX_SSDP_RESPONSE:
        raise _err("SSDP response too large")
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        head = data.rstrip(b"\r\n")
    start, headers = _parse_head(head)
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
        raise _err("not an SSDP 200 response")
    location = headers.get("location", "")
    _check_http_url(location)
    return SsdpResponse(
        location=location,
        st=headers.get("st", ""),
        usn=headers.get("usn", ""),
        server=headers.get("server", ""),
    )


def _check_http_url(url: str) -> urllib.parse.SplitResult:
    if not url or len(url) > 512:
        raise _err("missing or overlong URL")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _err("malformed URL") from exc
    if parts.scheme != "http" or not parts.hostname:
        raise _err("URL must be http://host[:port]/...")
    del port
    return parts


# --- XML -----------------------------------------------------------------------------------


class _NoDTD(Exception):
    pass


def _refuse(*_args: object) -> None:
    raise _NoDTD


def _safe_xml(data: bytes, cap: int) -> ET.Element:
    """Parse untrusted XML: size-capped, no DTD, no entities, bounded depth.

    pyexpat is driven directly (the C ``ElementTree.XMLParser`` hides its expat object), so
    the DOCTYPE and entity handlers can refuse instead of expanding.
    """
    if len(data) > cap:
        raise _err(f"XML document larger than {cap} bytes")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise _err("XML with a DTD or entity declaration refused")
    builder = ET.TreeBuilder()
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_XML_DEPTH:
            raise _NoDTD
        builder.start(_clark(name), attrs)

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_clark(name))

    parser: Any = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        root = builder.close()
    except _NoDTD as exc:
        raise _err("XML with a DTD, an entity declaration or deep nesting refused") from exc
    except (expat.ExpatError, ValueError, AssertionError, RecursionError) as exc:
        # TreeBuilder asserts on mismatched tags (cannot happen after expat, but be safe).
        raise _err(f"malformed XML: {exc}") from exc
    return root


def _clark(name: str) -> str:
    uri, sep, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else name


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(el: ET.Element, name: str) -> str | None:
    for child in el:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class IgdService:
    service_type: str
    """One of :data:`WAN_SERVICES`."""
    control_url: str
    """Absolute ``http://`` URL for SOAP actions."""


def parse_description(data: bytes, location: str) -> IgdService:
    """Find the preferred WAN connection service in a device description.

    Raises:
        RemoteProtocolError: hostile/malformed XML, no WAN connection service, or a control
            URL that leaves the description's host.
    """
    loc = _check_http_url(location)
    root = _safe_xml(data, MAX_DESCRIPTION)
    base = location
    url_base = _child_text(root, "URLBase")
    if url_base:
        base = url_base
    found: dict[str, str] = {}
    for el in root.iter():
        if _local(el.tag) != "service":
            continue
        stype = _child_text(el, "serviceType")
        ctl = _child_text(el, "controlURL")
        if stype in WAN_SERVICES and ctl and stype not in found:
            found[stype] = ctl
    for stype in WAN_SERVICES:
        if stype in found:
            url = urllib.parse.urljoin(base, found[stype])
            parts = _check_http_url(url)
            if parts.hostname != loc.hostname:
                raise _err("control URL points to another host than the description")
            return IgdService(service_type=stype, control_url=url)
    raise _err("no WANIPConnection/WANPPPConnection service in the description")


# --- SOAP ----------------------------------------------------------------------------------

_NAME_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def build_soap_request(
    service_type: str, action: str, args: list[tuple[str, str]]
) -> tuple[bytes, str]:
    """Return ``(body, SOAPAction header value)`` for ``action`` with ordered ``args``."""
    if not _NAME_RE.match(action) or any(not _NAME_RE.match(k) for k, _ in args):
        raise LocalProtocolError("invalid SOAP action or argument name", protocol=_PROTO)
    if any(c in service_type for c in '"<>&\r\n'):
        raise LocalProtocolError("invalid service type", protocol=_PROTO)
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in args)
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_SOAP_ENV}" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{service_type}">{inner}</u:{action}></s:Body>'
        "</s:Envelope>\r\n"
    ).encode()
    return body, f'"{service_type}#{action}"'


@dataclass(frozen=True, slots=True, kw_only=True)
class SoapResult:
    values: dict[str, str]
    """Out-arguments of a successful action."""
    fault_code: int | None = None
    """UPnP error code of a SOAP fault (e.g. 718 ConflictInMappingEntry)."""
    fault_description: str | None = None

    @property
    def ok(self) -> bool:
        return self.fault_code is None


def parse_soap_response(status: int, body: bytes, action: str) -> SoapResult:
    """Decode the answer to ``action`` (HTTP ``status`` 200, or 500 with a fault)."""
    root = _safe_xml(body, MAX_SOAP_RESPONSE)
    if _local(root.tag) != "Envelope":
        raise _err("SOAP answer is not an Envelope")
    body_el = next((c for c in root if _local(c.tag) == "Body"), None)
    if body_el is None or len(body_el) < 1:
        raise _err("SOAP Envelope without a Body")
    payload = body_el[0]
    if _local(payload.tag) == "Fault":
        code: int | None = None
        desc: str | None = None
        for el in payload.iter():
            name = _local(el.tag)
            if name == "errorCode":
                try:
                    code = int((el.text or "").strip())
                except ValueError as exc:
                    raise _err("non-numeric UPnP errorCode") from exc
            elif name == "errorDescription":
                desc = (el.text or "").strip()[:256]
        return SoapResult(
            values={}, fault_code=code if code is not None else -1, fault_description=desc
        )
    if status != 200:
        raise _err(f"HTTP {status} without a SOAP fault")
    if _local(payload.tag) != f"{action}Response":
        raise _err(f"expected {action}Response, got {_local(payload.tag)}")
    values = {_local(c.tag): (c.text or "").strip() for c in payload}
    return SoapResult(values=values)


def add_port_mapping_args(
    *,
    protocol: str,
    external_port: int,
    internal_port: int,
    internal_client: str,
    description: str,
    lease: int,
) -> list[tuple[str, str]]:
    proto = protocol.upper()
    if proto not in ("TCP", "UDP"):
        raise LocalProtocolError("protocol must be TCP or UDP", protocol=_PROTO)
    for port in (external_port, internal_port):
        if not 1 <= port <= 0xFFFF:
            raise LocalProtocolError("port out of range", protocol=_PROTO)
    try:
        ipaddress.IPv4Address(internal_client)
    except ValueError as exc:
        raise LocalProtocolError(
            "internal client must be an IPv4 address", protocol=_PROTO
        ) from exc
    return [
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", proto),
        ("NewInternalPort", str(internal_port)),
        ("NewInternalClient", internal_client),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", description[:64]),
        ("NewLeaseDuration", str(max(0, lease))),
    ]


def delete_port_mapping_args(*, protocol: str, external_port: int) -> list[tuple[str, str]]:
    proto = protocol.upper()
    if proto not in ("TCP", "UDP"):
        raise LocalProtocolError("protocol must be TCP or UDP", protocol=_PROTO)
    return [
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", proto),
    ]


# --- HTTP/1.1 (tiny) -----------------------------------------------------------------------


def build_http_request(
    method: str, url: str, *, body: bytes = b"", headers: list[tuple[str, str]] | None = None
) -> bytes:
    """A ``Connection: close`` HTTP/1.1 request for ``url``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LocalProtocolError("only http:// URLs", protocol=_PROTO)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for k, v in headers or []:
        if any(c in k + v for c in "\r\n"):
            raise LocalProtocolError("header injection", protocol=_PROTO)
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body


def parse_http_response(data: bytes, *, max_body: int) -> tuple[int, dict[str, str], bytes]:
    """Parse a complete response read until EOF: ``(status, headers, body)``."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise _err("HTTP response without an end of headers")
    if len(head) > MAX_HTTP_HEAD:
        raise _err("HTTP headers too large")
    start, headers = _parse_head(head)
    m = re.match(r"^HTTP/1\.[01] (\d{3})(?: .*)?$", start)
    if not m:
        raise _err("malformed HTTP status line")
    status = int(m.group(1))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(rest, max_body)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise _err("bad Content-Length") from exc
        if length < 0 or length > max_body:
            raise _err("HTTP body too large")
        if len(rest) < length:
            raise _err("HTTP body shorter than Content-Length")
        body = rest[:length]
    else:
        if len(rest) > max_body:
            raise _err("HTTP body too large")
        body = rest
    return status, headers, body


def _dechunk(data: bytes, max_body: int) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0 or eol - pos > 16:
            raise _err("malformed chunk size")
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise _err("malformed chunk size") from exc
        pos = eol + 2
        if size == 0:
            return bytes(out)
        if len(out) + size > max_body:
            raise _err("HTTP body too large")
        if pos + size + 2 > len(data) or data[pos + size : pos + size + 2] != b"\r\n":
            raise _err("truncated chunk")
        out += data[pos : pos + size]
        pos += size + 2


__all__ = [
    "IGD_V1",
    "IGD_V2",
    "SSDP_ADDR",
    "SSDP_PORT",
    "WAN_IP_V1",
    "WAN_IP_V2",
    "WAN_PPP_V1",
    "IgdService",
    "SoapResult",
    "SsdpResponse",
    "add_port_mapping_args",
    "build_http_request",
    "build_msearch",
    "build_soap_request",
    "delete_port_mapping_args",
    "parse_description",
    "parse_http_response",
    "parse_soap_response",
    "parse_ssdp_response",
]
