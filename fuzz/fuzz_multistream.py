"""Fuzz target: multistream-select listener and dialer machines.

Invariant: every input parses, or raises RemoteProtocolError (or NegotiationFailed for a
dialer whose proposals are refused). When a protocol is selected, ``trailing_data`` is
exactly the unconsumed suffix of the input (nothing dropped, B-08).
"""

from __future__ import annotations

from glueberry.errors import NegotiationFailed, RemoteProtocolError
from glueberry.proto.multistream import (
    MultistreamDialer,
    MultistreamListener,
    ProtocolSelected,
    encode_message,
)

_H = encode_message("/multistream/1.0.0")

SEEDS = [
    _H + encode_message("/noise"),
    _H + encode_message("/noise") + b"\x00\x20" + bytes(32),
    _H + encode_message("/tls/1.0.0") + encode_message("/noise"),
    _H + encode_message("ls"),
    _H + encode_message("na") + encode_message("/yamux/1.0.0") + b"data",
    _H + b"\x88\x08",
    _H + b"\x03ab",
    b"\x00",
]


def _check(m: MultistreamDialer | MultistreamListener, data: bytes, bytewise: bool) -> None:
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    fed = 0
    for chunk in chunks:
        if m.is_finished:
            break
        m.receive_data(chunk)
        fed += len(chunk)
        m.data_to_send()
    for ev in m.events():
        assert isinstance(ev, ProtocolSelected)
        assert data[:fed].endswith(ev.trailing_data)


def TARGET(data: bytes) -> None:
    for bytewise in (False, True):
        machines: list[MultistreamDialer | MultistreamListener] = [
            MultistreamListener({"/noise", "/yamux/1.0.0"}),
            MultistreamDialer(["/tls/1.0.0", "/noise"]),
            MultistreamDialer(["/noise"], lazy=True),
        ]
        for m in machines:
            try:
                _check(m, data, bytewise)
            except (RemoteProtocolError, NegotiationFailed):
                pass
