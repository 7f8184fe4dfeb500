"""Multiaddr: self-describing network addresses, text and binary forms.

Spec: https://github.com/multiformats/multiaddr (README and ``protocols.csv``; the codes
below were checked against ``protocols.csv`` of April 2025) and the per-protocol notes in
``protocols/`` (``http-path``, ``DNSADDR``).

* Text form: ``(/<name>[/<value>])+`` (``/ip4/192.0.2.42/tcp/443``).
* Binary form: ``(<uvarint code><value>)+``. A value is absent (size 0), fixed-size (ip4 is
  4 bytes, ports 2), or a uvarint length followed by that many bytes.
* A *path* protocol (``/unix``) consumes the rest of the text form, slashes included, and
  must be the last component.

Theory of operation: a :class:`Multiaddr` is an immutable list of ``(Protocol, raw value)``
parts, validated once when it is built. The binary form is computed at once (it is what
equality and hashing use); the text form is built on first use and cached. Both parsers are
strict: unknown protocol codes or names, truncated input, non-minimal varints, a length
prefix running past the end, empty values, ports above 65535, malformed IP addresses, peer
IDs that are not sha2-256/identity multihashes, anything after a path component, and any
address longer than :data:`MAX_MULTIADDR_BYTES` raise :class:`MultiaddrError`. That class is
both a :class:`~glueberry.errors.RemoteProtocolError` (bytes that came from a peer) and a
:class:`ValueError` (a malformed string typed by a user). Every length is checked against
the remaining input before anything is sliced.

Objects of the PyPI ``multiaddr`` package are accepted wherever a ``Multiaddr`` is (they are
converted through their binary form); that package is never imported here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from glueberry.errors import RemoteProtocolError
from glueberry.wire import varint
from glueberry.wire.identity import PeerId, b58decode, b58encode

__all__ = [
    "MAX_DNS_NAME_LENGTH",
    "MAX_MULTIADDR_BYTES",
    "MAX_MULTIADDR_STRING",
    "PROTOCOLS",
    "Component",
    "Multiaddr",
    "MultiaddrError",
    "Protocol",
    "SocketAddress",
    "protocol_by_code",
    "protocol_by_name",
]

_PROTO: Final = "multiaddr"

#: Largest binary multiaddr accepted (go-libp2p's identify caps addresses similarly).
MAX_MULTIADDR_BYTES: Final = 1024
#: Largest text multiaddr accepted (a 1024-byte ``http-path`` percent-encodes to ~3 KiB).
MAX_MULTIADDR_STRING: Final = 4096
#: RFC 1035: a domain name is at most 255 octets. Also used for ``sni`` and ``ip6zone``.
MAX_DNS_NAME_LENGTH: Final = 255

#: ``Protocol.size`` of a length-prefixed value.
VARIABLE: Final = -1


class MultiaddrError(RemoteProtocolError, ValueError):
    """A malformed multiaddr (binary from the network, or text from a user)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, protocol=_PROTO)


@dataclass(frozen=True, slots=True)
class Protocol:
    """One multiaddr protocol from ``protocols.csv``."""

    code: int
    """The multicodec code (``4`` for ip4)."""
    name: str
    """The canonical text name (``"ip4"``)."""
    size: int
    """Value size in bits; ``0`` for no value, :data:`VARIABLE` for length-prefixed."""
    path: bool = False
    """True for protocols whose value is the rest of the text form (``unix``)."""


class Component(NamedTuple):
    """One ``/<name>/<value>`` part of a multiaddr."""

    protocol: Protocol
    value: str | None
    """The value in text form, or ``None`` for protocols without a value."""
    raw: bytes
    """The value in binary form (without the length prefix); ``b""`` when there is none."""

    @property
    def name(self) -> str:
        return self.protocol.name

    @property
    def code(self) -> int:
        return self.protocol.code


class SocketAddress(NamedTuple):
    """What a socket needs from ``/ip4|ip6|dns|dns4|dns6/<host>/tcp|udp/<port>``."""

    host: str
    """An IP address in text form (``"fe80::1%eth0"`` with a zone), or a DNS name."""
    port: int
    family: Literal["ip4", "ip6", "dns", "dns4", "dns6"]
    """Which host protocol the address uses (``dns*`` still need resolving)."""
    transport: Literal["tcp", "udp"]


def _err(msg: str) -> MultiaddrError:
    return MultiaddrError(msg)


# --- value codecs ------------------------------------------------------------------------
# Each codec is (text -> raw, raw -> text, validate raw). ``validate`` runs on every binary
# input; ``parse`` output is always valid.


class _Codec(NamedTuple):
    parse: Callable[[str], bytes]
    format: Callable[[bytes], str]
    validate: Callable[[bytes], None]


def _no_validate(raw: bytes) -> None:
    pass


def _ip4_parse(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise _err(f"invalid IPv4 address {text!r}") from None


def _ip4_format(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


_MAPPED_PREFIX: Final = b"\0" * 10 + b"\xff\xff"


def _ip6_parse(text: str) -> bytes:
    # ipaddress accepts "fe80::1%eth0"; in a multiaddr the zone is its own /ip6zone part.
    if "%" in text:
        raise _err(f"invalid IPv6 address {text!r} (use /ip6zone/<zone>/ip6/<addr>)")
    try:
        return ipaddress.IPv6Address(text).packed
    except ValueError:
        raise _err(f"invalid IPv6 address {text!r}") from None


def _ip6_format(raw: bytes) -> str:
    if raw[:12] == _MAPPED_PREFIX:
        # RFC 5952 §5: IPv4-mapped addresses are written with the dotted quad (as go does).
        return "::ffff:" + _ip4_format(raw[12:])
    return str(ipaddress.IPv6Address(raw))


def _port_parse(text: str) -> bytes:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise _err(f"invalid port {text!r}")
    if len(text) > 1 and text[0] == "0":
        raise _err(f"invalid port {text!r} (leading zero)")
    port = int(text)
    if port > 65535:
        raise _err(f"port {port} out of range")
    return port.to_bytes(2, "big")


def _port_format(raw: bytes) -> str:
    return str(int.from_bytes(raw, "big"))


def _ipcidr_parse(text: str) -> bytes:
    if not (text.isascii() and text.isdigit()) or len(text) > 3 or int(text) > 255:
        raise _err(f"invalid ipcidr {text!r}")
    if len(text) > 1 and text[0] == "0":
        raise _err(f"invalid ipcidr {text!r} (leading zero)")
    return bytes((int(text),))


def _ipcidr_format(raw: bytes) -> str:
    return str(raw[0])


# Names: no '/', no whitespace or control characters (they cannot be host names and would
# make the text form ambiguous or unprintable).
_BAD_NAME_CHARS: Final = re.compile(r"[\x00-\x20\x7f/]")


def _make_name_codec(what: str) -> _Codec:
    def validate(raw: bytes) -> None:
        if not raw:
            raise _err(f"empty {what}")
        if len(raw) > MAX_DNS_NAME_LENGTH:
            raise _err(f"{what} longer than {MAX_DNS_NAME_LENGTH} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(f"{what} is not valid UTF-8") from None
        if _BAD_NAME_CHARS.search(text):
            raise _err(f"{what} {text!r} contains '/', whitespace or a control character")

    def parse(text: str) -> bytes:
        raw = text.encode("utf-8")
        validate(raw)
        return raw

    def fmt(raw: bytes) -> str:
        return raw.decode("utf-8")

    return _Codec(parse, fmt, validate)


def _p2p_parse(text: str) -> bytes:
    try:
        return PeerId.from_string(text).to_bytes()
    except RemoteProtocolError as exc:
        raise _err(f"invalid peer ID {text!r}: {exc}") from exc


def _p2p_validate(raw: bytes) -> None:
    try:
        PeerId(raw)
    except RemoteProtocolError as exc:
        raise _err(f"invalid peer ID multihash: {exc}") from exc


def _unix_validate(raw: bytes) -> None:
    if len(raw) < 2 or raw[:1] != b"/":
        raise _err("unix path must start with '/' and name a file")
    if raw[-1:] == b"/":
        raise _err("unix path must not end with '/'")
    if b"\0" in raw:
        raise _err("unix path contains a NUL byte")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _err("unix path is not valid UTF-8") from None


def _unix_parse(text: str) -> bytes:
    raw = text.encode("utf-8")
    _unix_validate(raw)
    return raw


def _utf8_format(raw: bytes) -> str:
    return raw.decode("utf-8")


_PCT_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _http_path_parse(text: str) -> bytes:
    # protocols/http-path.md: the text is one percent-encoded URI path segment (RFC 3986;
    # '+' is a literal plus, not a space).
    if _PCT_ESCAPE.search(text):
        raise _err(f"invalid percent-escape in http-path {text!r}")
    raw = urllib.parse.unquote_to_bytes(text)
    if not raw:
        raise _err("empty http-path")
    return raw


def _http_path_format(raw: bytes) -> str:
    return urllib.parse.quote(raw, safe="")


def _http_path_validate(raw: bytes) -> None:
    if not raw:
        raise _err("empty http-path")


def _check_multihash(raw: bytes, what: str) -> None:
    try:
        res = varint.decode(raw, 0)
        if res is not None:
            res = varint.decode(raw, res[1])
    except RemoteProtocolError as exc:
        raise _err(f"{what}: malformed multihash: {exc}") from exc
    if res is None:
        raise _err(f"{what}: truncated multihash")
    if res[0] != len(raw) - res[1]:
        raise _err(f"{what}: multihash digest length mismatch")


_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64STD: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _b64(body: str, *, url: bool, padded: bool) -> bytes:
    if not (_B64URL if url else _B64STD).fullmatch(body):
        raise ValueError("invalid base64 character")
    if padded:
        if len(body) % 4 != 0:
            raise ValueError("padded base64 length is not a multiple of 4")
    else:
        if "=" in body:
            raise ValueError("unexpected base64 padding")
        if len(body) % 4 == 1:
            raise ValueError("invalid base64 length")
        body += "=" * (-len(body) % 4)
    return base64.b64decode(body, altchars=b"-_" if url else None, validate=True)


def _b32(body: str, *, padded: bool) -> bytes:
    if "=" in body and not padded:
        raise ValueError("unexpected base32 padding")
    body = body.upper().rstrip("=")
    return base64.b32decode(body + "=" * (-len(body) % 8))


def _multibase_decode(text: str) -> bytes:
    """Decode the multibase encodings go-multibase emits for ``certhash``."""
    if not text:
        raise ValueError("empty multibase string")
    prefix, body = text[0], text[1:]
    if prefix == "u":
        return _b64(body, url=True, padded=False)
    if prefix == "U":
        return _b64(body, url=True, padded=True)
    if prefix == "m":
        return _b64(body, url=False, padded=False)
    if prefix == "M":
        return _b64(body, url=False, padded=True)
    if prefix in "bB":
        if body != (body.lower() if prefix == "b" else body.upper()):
            raise ValueError("mixed-case base32")
        return _b32(body, padded=False)
    if prefix in "cC":
        return _b32(body, padded=True)
    if prefix in "fF":
        return bytes.fromhex(body)
    if prefix == "z":
        return b58decode(body, max_length=MAX_MULTIADDR_STRING)
    raise ValueError(f"unsupported multibase prefix {prefix!r}")


def _certhash_parse(text: str) -> bytes:
    try:
        raw = _multibase_decode(text)
    except (ValueError, binascii.Error, RemoteProtocolError) as exc:
        raise _err(f"invalid certhash {text!r}: {exc}") from None
    _certhash_validate(raw)
    return raw


def _certhash_format(raw: bytes) -> str:
    return "u" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _certhash_validate(raw: bytes) -> None:
    if not raw:
        raise _err("empty certhash")
    _check_multihash(raw, "certhash")


def _make_onion_codec(host_bytes: int, host_chars: int) -> _Codec:
    def validate(raw: bytes) -> None:
        if int.from_bytes(raw[host_bytes:], "big") == 0:
            raise _err("onion port must not be 0")

    def parse(text: str) -> bytes:
        host, sep, port_text = text.partition(":")
        if not sep or len(host) != host_chars:
            raise _err(f"invalid onion address {text!r}")
        try:
            host_raw = base64.b32decode(host.upper())
        except (ValueError, binascii.Error):
            raise _err(f"invalid onion address {text!r}") from None
        raw = host_raw + _port_parse(port_text)
        validate(raw)
        return raw

    def fmt(raw: bytes) -> str:
        host = base64.b32encode(raw[:host_bytes]).decode("ascii").lower()
        return f"{host}:{_port_format(raw[host_bytes:])}"

    return _Codec(parse, fmt, validate)


_IP4: Final = _Codec(_ip4_parse, _ip4_format, _no_validate)
_IPCIDR: Final = _Codec(_ipcidr_parse, _ipcidr_format, _no_validate)
_UNIX: Final = _Codec(_unix_parse, _utf8_format, _unix_validate)
_P2P: Final = _Codec(_p2p_parse, b58encode, _p2p_validate)
_CERTHASH: Final = _Codec(_certhash_parse, _certhash_format, _certhash_validate)
_HTTP_PATH: Final = _Codec(_http_path_parse, _http_path_format, _http_path_validate)
_IP6: Final = _Codec(_ip6_parse, _ip6_format, _no_validate)
_PORT: Final = _Codec(_port_parse, _port_format, _no_validate)
_DNS: Final = _make_name_codec("DNS name")
_NONE: Final = _Codec(lambda text: b"", lambda raw: "", _no_validate)


# --- protocol table ----------------------------------------------------------------------

_TABLE: Final[tuple[tuple[Protocol, _Codec], ...]] = (
    (Protocol(4, "ip4", 32), _IP4),
    (Protocol(6, "tcp", 16), _PORT),
    (Protocol(273, "udp", 16), _PORT),
    (Protocol(33, "dccp", 16), _PORT),
    (Protocol(41, "ip6", 128), _IP6),
    (Protocol(42, "ip6zone", VARIABLE), _make_name_codec("IPv6 zone")),
    (Protocol(43, "ipcidr", 8), _IPCIDR),
    (Protocol(53, "dns", VARIABLE), _DNS),
    (Protocol(54, "dns4", VARIABLE), _DNS),
    (Protocol(55, "dns6", VARIABLE), _DNS),
    (Protocol(56, "dnsaddr", VARIABLE), _DNS),
    (Protocol(132, "sctp", 16), _PORT),
    (Protocol(301, "udt", 0), _NONE),
    (Protocol(302, "utp", 0), _NONE),
    (Protocol(400, "unix", VARIABLE, path=True), _UNIX),
    (Protocol(421, "p2p", VARIABLE), _P2P),
    (Protocol(444, "onion", 96), _make_onion_codec(10, 16)),
    (Protocol(445, "onion3", 296), _make_onion_codec(35, 56)),
    (Protocol(448, "tls", 0), _NONE),
    (Protocol(449, "sni", VARIABLE), _make_name_codec("SNI name")),
    (Protocol(454, "noise", 0), _NONE),
    (Protocol(460, "quic", 0), _NONE),
    (Protocol(461, "quic-v1", 0), _NONE),
    (Protocol(465, "webtransport", 0), _NONE),
    (Protocol(466, "certhash", VARIABLE), _CERTHASH),
    (Protocol(480, "http", 0), _NONE),
    (Protocol(481, "http-path", VARIABLE), _HTTP_PATH),
    (Protocol(443, "https", 0), _NONE),
    (Protocol(477, "ws", 0), _NONE),
    (Protocol(478, "wss", 0), _NONE),
    (Protocol(479, "p2p-websocket-star", 0), _NONE),
    (Protocol(277, "p2p-stardust", 0), _NONE),
    (Protocol(275, "p2p-webrtc-star", 0), _NONE),
    (Protocol(276, "p2p-webrtc-direct", 0), _NONE),
    (Protocol(280, "webrtc-direct", 0), _NONE),
    (Protocol(281, "webrtc", 0), _NONE),
    (Protocol(290, "p2p-circuit", 0), _NONE),
)

#: Every supported protocol, by code.
PROTOCOLS: Final[dict[int, Protocol]] = {p.code: p for p, _ in _TABLE}
_BY_NAME: Final[dict[str, Protocol]] = {p.name: p for p, _ in _TABLE}
_BY_NAME["ipfs"] = PROTOCOLS[421]  # legacy name of /p2p, accepted when parsing text
_CODECS: Final[dict[int, _Codec]] = {p.code: c for p, c in _TABLE}
# Pre-encoded code prefixes (every code fits in two varint bytes).
_CODE_PREFIX: Final[dict[int, bytes]] = {p.code: varint.encode(p.code) for p, _ in _TABLE}

P_IP4: Final = PROTOCOLS[4]
P_IP6: Final = PROTOCOLS[41]
P_IP6ZONE: Final = PROTOCOLS[42]
P_TCP: Final = PROTOCOLS[6]
P_UDP: Final = PROTOCOLS[273]
P_P2P: Final = PROTOCOLS[421]
P_CIRCUIT: Final = PROTOCOLS[290]
_DNS_CODES: Final = frozenset((53, 54, 55))


def protocol_by_name(name: str) -> Protocol:
    """Look a protocol up by its text name (``"ipfs"`` gives ``p2p``).

    Raises:
        MultiaddrError: unknown name.
    """
    proto = _BY_NAME.get(name)
    if proto is None:
        raise _err(f"unknown multiaddr protocol {name!r}")
    return proto


def protocol_by_code(code: int) -> Protocol:
    """Look a protocol up by its code.

    Raises:
        MultiaddrError: unknown code.
    """
    proto = PROTOCOLS.get(code)
    if proto is None:
        raise _err(f"unknown multiaddr protocol code {code}")
    return proto


def _lookup(proto: str | int | Protocol) -> Protocol:
    if isinstance(proto, Protocol):
        return proto
    if isinstance(proto, int):
        return protocol_by_code(proto)
    return protocol_by_name(proto)


# --- parsers -----------------------------------------------------------------------------

_Part = tuple[Protocol, bytes]


def _encode_part(proto: Protocol, raw: bytes) -> bytes:
    if proto.size == VARIABLE:
        return _CODE_PREFIX[proto.code] + varint.encode(len(raw)) + raw
    return _CODE_PREFIX[proto.code] + raw


def _parse_binary(buf: bytes | bytearray | memoryview) -> tuple[_Part, ...]:
    end = len(buf)
    if end == 0:
        raise _err("empty multiaddr")
    if end > MAX_MULTIADDR_BYTES:
        raise _err(f"multiaddr longer than {MAX_MULTIADDR_BYTES} bytes")
    parts: list[_Part] = []
    pos = 0
    try:
        while pos < end:
            if parts and parts[-1][0].path:
                raise _err(f"component after path protocol /{parts[-1][0].name}")
            res = varint.decode(buf, pos)
            if res is None:
                raise _err("truncated protocol code")
            code, pos = res
            proto = PROTOCOLS.get(code)
            if proto is None:
                raise _err(f"unknown multiaddr protocol code {code}")
            if proto.size == 0:
                parts.append((proto, b""))
                continue
            if proto.size > 0:
                length = proto.size // 8
            else:
                res = varint.decode(buf, pos)
                if res is None:
                    raise _err(f"truncated length of /{proto.name}")
                length, pos = res
                if length == 0:
                    raise _err(f"empty value for /{proto.name}")
            if length > end - pos:
                raise _err(f"value of /{proto.name} runs past the end of the multiaddr")
            raw = bytes(buf[pos : pos + length])
            pos += length
            _CODECS[code].validate(raw)
            parts.append((proto, raw))
    except MultiaddrError:
        raise
    except RemoteProtocolError as exc:  # a malformed varint
        raise _err(f"malformed multiaddr: {exc}") from exc
    return tuple(parts)


def _parse_text(text: str) -> tuple[_Part, ...]:
    if len(text) > MAX_MULTIADDR_STRING:
        raise _err(f"multiaddr string longer than {MAX_MULTIADDR_STRING} characters")
    if not text.startswith("/"):
        raise _err(f"multiaddr {text!r} must begin with '/'")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _err(f"multiaddr {text!r} is not valid Unicode (lone surrogate)") from None
    segments = text.split("/")
    if len(segments) > 2 and segments[-1] == "":
        segments.pop()  # one trailing slash is tolerated, as go-multiaddr does
    segments = segments[1:]
    if segments == [""]:
        raise _err("empty multiaddr")
    parts: list[_Part] = []
    i = 0
    n = len(segments)
    while i < n:
        name = segments[i]
        i += 1
        if not name:
            raise _err(f"empty protocol name in {text!r}")
        proto = _BY_NAME.get(name)
        if proto is None:
            raise _err(f"unknown multiaddr protocol {name!r} in {text!r}")
        if proto.size == 0:
            parts.append((proto, b""))
            continue
        if i >= n:
            raise _err(f"missing value for /{name} in {text!r}")
        if proto.path:
            value = "/" + "/".join(segments[i:])
            i = n
        else:
            value = segments[i]
            i += 1
        parts.append((proto, _CODECS[proto.code].parse(value)))
    return tuple(parts)


# --- the value type ----------------------------------------------------------------------


def _restore(data: bytes) -> Multiaddr:
    """Unpickle (allows the empty multiaddr, which parsing refuses)."""
    return Multiaddr._from_parts(_parse_binary(data) if data else ())


class Multiaddr:
    """An immutable, hashable multiaddr.

    ``Multiaddr(x)`` accepts the text form, the binary form, another ``Multiaddr`` or an
    object of the PyPI ``multiaddr`` package. Equality and hashing use the binary form, so
    ``Multiaddr("/ipfs/Qm…") == Multiaddr("/p2p/Qm…")``. Iterating yields ``(name, value)``
    pairs (``value`` is ``None`` for protocols without one).

    Raises:
        MultiaddrError: malformed input (a ``ValueError`` and a ``RemoteProtocolError``).
        TypeError: an unsupported type.
    """

    __slots__ = ("_bytes", "_components", "_hash", "_parts", "_str")

    _bytes: bytes
    _parts: tuple[_Part, ...]
    _str: str | None
    _components: tuple[Component, ...] | None
    _hash: int

    def __init__(self, addr: str | bytes | bytearray | memoryview | Multiaddr | object) -> None:
        if isinstance(addr, Multiaddr):
            self._init(addr._parts, addr._bytes)
            object.__setattr__(self, "_str", addr._str)
            return
        if isinstance(addr, str):
            parts = _parse_text(addr)
        elif isinstance(addr, bytes | bytearray | memoryview):
            parts = _parse_binary(addr)
        else:
            parts = _parse_binary(_foreign_bytes(addr))
        self._init(parts, None)

    def _init(self, parts: tuple[_Part, ...], data: bytes | None) -> None:
        if data is None:
            data = b"".join(_encode_part(p, raw) for p, raw in parts)
            if len(data) > MAX_MULTIADDR_BYTES:
                raise _err(f"multiaddr longer than {MAX_MULTIADDR_BYTES} bytes")
        setattr_ = object.__setattr__
        setattr_(self, "_parts", parts)
        setattr_(self, "_bytes", data)
        setattr_(self, "_str", None)
        setattr_(self, "_components", None)
        setattr_(self, "_hash", hash(data))

    @classmethod
    def _from_parts(cls, parts: tuple[_Part, ...]) -> Multiaddr:
        self = cls.__new__(cls)
        self._init(parts, None)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Multiaddr is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Multiaddr is immutable")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_string(cls, text: str) -> Multiaddr:
        """Parse the text form (``/ip4/1.2.3.4/tcp/80``)."""
        return cls(text)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Multiaddr:
        """Parse the binary form (as carried in identify, relay and peer records)."""
        return cls(bytes(data))

    @classmethod
    def from_socket_address(
        cls, host: str, port: int, transport: Literal["tcp", "udp"] = "tcp"
    ) -> Multiaddr:
        """``/ip4|ip6[/ip6zone]|dns/<host>/<transport>/<port>`` from a socket-style address.

        ``host`` may be an IPv4 or IPv6 literal (``"fe80::1%eth0"`` gives an ``/ip6zone``
        part) or a DNS name (``/dns``).
        """
        if transport not in ("tcp", "udp"):
            raise _err(f"transport must be 'tcp' or 'udp', not {transport!r}")
        if not 0 <= port <= 65535:
            raise _err(f"port {port} out of range")
        parts: list[_Part] = []
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                host.encode("utf-8")
            except UnicodeEncodeError:
                raise _err(f"invalid host {host!r}") from None
            parts.append((PROTOCOLS[53], _CODECS[53].parse(host)))
        else:
            if isinstance(ip, ipaddress.IPv4Address):
                parts.append((P_IP4, ip.packed))
            else:
                if ip.scope_id:
                    parts.append((P_IP6ZONE, _CODECS[42].parse(ip.scope_id)))
                parts.append((P_IP6, ip.packed))
        parts.append((P_TCP if transport == "tcp" else P_UDP, port.to_bytes(2, "big")))
        return cls._from_parts(tuple(parts))

    # -- forms --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The binary form."""
        return self._bytes

    def __bytes__(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        s = self._str
        if s is None:
            out = []
            for proto, raw in self._parts:
                out.append("/" + proto.name)
                if proto.size != 0:
                    value = _CODECS[proto.code].format(raw)
                    out.append(value if proto.path else "/" + value)
            s = "".join(out)
            object.__setattr__(self, "_str", s)
        return s

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"

    def __reduce__(self) -> tuple[Callable[[bytes], Multiaddr], tuple[bytes]]:
        return _restore, (self._bytes,)

    # -- value semantics ----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Multiaddr):
            return other._bytes == self._bytes
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __len__(self) -> int:
        return len(self._parts)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        for c in self.components():
            yield c.protocol.name, c.value

    # -- inspection ---------------------------------------------------------------------

    def components(self) -> tuple[Component, ...]:
        """The parts in order, with their text and binary values."""
        comps = self._components
        if comps is None:
            comps = tuple(
                Component(p, _CODECS[p.code].format(raw) if p.size != 0 else None, raw)
                for p, raw in self._parts
            )
            object.__setattr__(self, "_components", comps)
        return comps

    def protocols(self) -> tuple[Protocol, ...]:
        """The protocols in order (``Protocol.name`` gives ``"ip4"``, ``"tcp"``, …)."""
        return tuple(p for p, _ in self._parts)

    def has(self, proto: str | int | Protocol) -> bool:
        """Whether any part uses ``proto`` (a name, code or :class:`Protocol`)."""
        code = _lookup(proto).code
        return any(p.code == code for p, _ in self._parts)

    def value_for(self, proto: str | int | Protocol) -> str | None:
        """The text value of the first ``proto`` part; ``""`` if it has no value; ``None``
        if the address has no such part."""
        code = _lookup(proto).code
        for p, raw in self._parts:
            if p.code == code:
                return _CODECS[code].format(raw) if p.size != 0 else ""
        return None

    @property
    def peer_id(self) -> PeerId | None:
        """The peer ID of a trailing ``/p2p/<id>`` part, else ``None``.

        For ``/…/p2p/<relay>/p2p-circuit/p2p/<target>`` this is the target.
        """
        if self._parts and self._parts[-1][0] is P_P2P:
            return PeerId(self._parts[-1][1])
        return None

    # -- composition --------------------------------------------------------------------

    def encapsulate(self, other: Multiaddr | str | bytes | object) -> Multiaddr:
        """``self`` followed by ``other``."""
        other_ma = other if isinstance(other, Multiaddr) else Multiaddr(other)
        if self._parts and self._parts[-1][0].path and other_ma._parts:
            raise _err(f"cannot encapsulate after path protocol /{self._parts[-1][0].name}")
        return Multiaddr._from_parts(self._parts + other_ma._parts)

    def decapsulate(self, other: Multiaddr | str | bytes | object) -> Multiaddr:
        """Remove the last occurrence of ``other`` and everything after it.

        Matching is per component. Returns ``self`` unchanged when ``other`` does not occur;
        the result may be the empty multiaddr (``str()`` is ``""``).
        """
        other_ma = other if isinstance(other, Multiaddr) else Multiaddr(other)
        n = len(other_ma._parts)
        if n == 0:
            return self
        for i in range(len(self._parts) - n, -1, -1):
            if self._parts[i : i + n] == other_ma._parts:
                return Multiaddr._from_parts(self._parts[:i])
        return self

    def decapsulate_code(self, proto: str | int | Protocol) -> Multiaddr:
        """Remove the last ``proto`` part and everything after it (``self`` if absent)."""
        code = _lookup(proto).code
        for i in range(len(self._parts) - 1, -1, -1):
            if self._parts[i][0].code == code:
                return Multiaddr._from_parts(self._parts[:i])
        return self

    def with_p2p(self, peer_id: PeerId | str) -> Multiaddr:
        """This address ending in ``/p2p/<peer_id>``.

        Raises:
            MultiaddrError: the address already ends in a different ``/p2p`` part.
        """
        if isinstance(peer_id, PeerId):
            pid = peer_id
        else:
            try:
                pid = PeerId.from_string(peer_id)
            except RemoteProtocolError as exc:
                raise _err(f"invalid peer ID {peer_id!r}: {exc}") from exc
        current = self.peer_id
        if current is not None:
            if current == pid:
                return self
            raise _err(f"{self} already names peer {current}, not {pid}")
        return Multiaddr._from_parts((*self._parts, (P_P2P, pid.to_bytes())))

    def without_p2p(self) -> Multiaddr:
        """This address without a trailing ``/p2p/<id>`` part."""
        if self._parts and self._parts[-1][0] is P_P2P:
            return Multiaddr._from_parts(self._parts[:-1])
        return self

    @property
    def is_relayed(self) -> bool:
        """Whether the address goes through a circuit relay (has ``/p2p-circuit``)."""
        return any(p is P_CIRCUIT for p, _ in self._parts)

    def split_circuit(self) -> tuple[Multiaddr, Multiaddr] | None:
        """``(relay address, destination part)`` around the last ``/p2p-circuit``.

        ``/ip4/R/tcp/1/p2p/Rid/p2p-circuit/p2p/T`` gives ``(/ip4/R/tcp/1/p2p/Rid, /p2p/T)``;
        ``None`` for a direct address.
        """
        for i in range(len(self._parts) - 1, -1, -1):
            if self._parts[i][0] is P_CIRCUIT:
                return (
                    Multiaddr._from_parts(self._parts[:i]),
                    Multiaddr._from_parts(self._parts[i + 1 :]),
                )
        return None

    # -- transports ---------------------------------------------------------------------

    def _host_parts(self) -> tuple[str | None, Protocol | None, bytes, int]:
        """(zone, host protocol, host raw, index after the host)."""
        parts = self._parts
        zone: str | None = None
        i = 0
        if parts and parts[0][0] is P_IP6ZONE:
            zone = parts[0][1].decode("utf-8")
            i = 1
        if i < len(parts):
            proto, raw = parts[i]
            if proto is P_IP4 or proto is P_IP6 or proto.code in _DNS_CODES:
                if zone is not None and proto is not P_IP6:
                    return None, None, b"", 0
                return zone, proto, raw, i + 1
        return None, None, b"", 0

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The leading ``/ip4`` or ``/ip6`` address (with its ``/ip6zone``), else ``None``."""
        zone, proto, raw, _ = self._host_parts()
        if proto is P_IP4:
            return ipaddress.IPv4Address(raw)
        if proto is P_IP6:
            return ipaddress.IPv6Address(_ip6_format(raw) + (f"%{zone}" if zone else ""))
        return None

    def to_socket_address(self) -> SocketAddress:
        """Host and port of a leading ``/ip4|ip6|dns|dns4|dns6/…/tcp|udp/<port>``.

        Further parts (``/quic-v1``, ``/p2p/…``) are allowed and ignored.

        Raises:
            MultiaddrError: the address does not start with a host and a TCP/UDP port.
        """
        zone, proto, raw, i = self._host_parts()
        if proto is None or i >= len(self._parts):
            raise _err(f"{self} does not start with a host and a TCP/UDP port")
        tproto, traw = self._parts[i]
        if tproto is not P_TCP and tproto is not P_UDP:
            raise _err(f"{self} does not start with a host and a TCP/UDP port")
        host = _CODECS[proto.code].format(raw)
        if zone is not None:
            host = f"{host}%{zone}"
        family: Literal["ip4", "ip6", "dns", "dns4", "dns6"] = proto.name  # type: ignore[assignment]
        transport: Literal["tcp", "udp"] = tproto.name  # type: ignore[assignment]
        return SocketAddress(host, int.from_bytes(traw, "big"), family, transport)

    def transport_kind(self) -> str | None:
        """What transport dials this address.

        One of ``"p2p-circuit"`` (relayed), ``"tcp"``, ``"ws"``, ``"wss"`` (also
        ``/tls/ws``), ``"quic-v1"``, ``"quic"`` (draft-29), ``"webtransport"``,
        ``"webrtc-direct"``, ``"webrtc"``, ``"udp"``, ``"unix"``; ``None`` when there is no
        transport part (``/dnsaddr/…``, bare ``/p2p/…``).
        """
        if self.is_relayed:
            return "p2p-circuit"
        names = [p.name for p, _ in self._parts]
        if names and names[0] == "unix":
            return "unix"
        _, proto, _, i = self._host_parts()
        if proto is None or i >= len(names):
            if "webrtc" in names:
                return "webrtc"
            return None
        rest = names[i + 1 :]
        if names[i] == "tcp":
            if "wss" in rest:
                return "wss"
            if "ws" in rest:
                return "wss" if "tls" in rest[: rest.index("ws")] else "ws"
            return "tcp"
        if names[i] == "udp":
            for kind in ("webtransport", "webrtc-direct", "quic-v1", "quic"):
                if kind in rest:
                    return kind
            return "udp"
        return None

    def _ip_for_class(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        ip = self.ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    def _dns_name(self) -> str | None:
        _, proto, raw, _ = self._host_parts()
        if proto is not None and proto.code in _DNS_CODES:
            return raw.decode("utf-8").lower().rstrip(".")
        return None

    @property
    def is_loopback(self) -> bool:
        """A loopback IP (127/8, ::1), or the name ``localhost``/``*.localhost``."""
        ip = self._ip_for_class()
        if ip is not None:
            return ip.is_loopback
        name = self._dns_name()
        return name is not None and (name == "localhost" or name.endswith(".localhost"))

    @property
    def is_unspecified(self) -> bool:
        """``0.0.0.0`` or ``::`` (a wildcard listen address)."""
        ip = self._ip_for_class()
        return ip is not None and ip.is_unspecified

    @property
    def is_private(self) -> bool:
        """An IP address that is not globally routable.

        True for RFC 1918, shared (100.64/10), link-local, loopback, unspecified, ULA
        (fc00::/7) and documentation ranges; False for public IPs and for DNS names.
        """
        ip = self._ip_for_class()
        return ip is not None and not ip.is_global and not ip.is_multicast

    @property
    def is_public(self) -> bool:
        """A globally routable unicast IP, or a DNS name other than ``localhost``/``.local``."""
        ip = self._ip_for_class()
        if ip is not None:
            return ip.is_global and not ip.is_multicast
        name = self._dns_name()
        if name is None:
            return False
        return not (name == "localhost" or name.endswith(".localhost") or name.endswith(".local"))


def _foreign_bytes(obj: object) -> bytes:
    """Binary form of an object of the PyPI ``multiaddr`` package (duck-typed)."""
    module = type(obj).__module__ or ""
    to_bytes = getattr(obj, "to_bytes", None)
    if module.split(".")[0] == "multiaddr" and callable(to_bytes):
        data = to_bytes()
        if isinstance(data, bytes | bytearray):
            return bytes(data)
    raise TypeError(f"cannot make a Multiaddr from {type(obj).__name__}")
