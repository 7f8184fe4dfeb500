"""Fuzz target: ping (``/ipfs/ping/1.0.0``) responder and dialer machines.

The responder gets the input whole and split at every third byte (both must echo the same
bytes: whole 32-byte payloads only, in order, a partial tail dropped at end of stream); the
dialer gets the input as the "echo" of a known ping. Invariant: accepted, or
RemoteProtocolError, nothing else.
"""

from __future__ import annotations

from glueberry.errors import RemoteProtocolError
from glueberry.proto.ping import PING_SIZE, PingDialer, PingResponder, PongReceived

_PING = bytes(range(PING_SIZE))

SEEDS: list[bytes] = [b"", _PING, _PING * 3, _PING[:31], _PING + _PING[:5], b"\x00" * 33]


def _respond(chunks: list[bytes]) -> bytes:
    r = PingResponder()
    out = bytearray()
    for chunk in chunks:
        r.receive_data(chunk, 0.0)
        out += r.data_to_send()
    r.receive_data(b"", 0.0)
    out += r.data_to_send()
    list(r.events())
    return bytes(out)


def TARGET(data: bytes) -> None:
    whole = _respond([data] if data else [])
    split = _respond([data[i : i + 3] for i in range(0, len(data), 3)])
    assert whole == split
    assert whole == data[: len(data) - len(data) % PING_SIZE]

    d = PingDialer(timeout=10.0)
    d.send_ping(_PING, 0.0)
    d.data_to_send()
    try:
        d.receive_data(data, 1.0)
        d.receive_data(b"", 2.0)
    except RemoteProtocolError:
        return
    finally:
        for ev in d.events():
            if isinstance(ev, PongReceived):
                assert ev.payload == _PING and data.startswith(_PING)
