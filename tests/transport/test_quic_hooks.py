"""Guard tests: one per aioquic private-API hook (glueberry/transport/_aioquic_hooks.py).

They drive two aioquic connections against each other in memory (no sockets), so a new
aioquic release that moves an internal the hooks rely on fails here, by name.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from typing import Any

import pytest
from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

from glueberry.transport import _aioquic_hooks as hooks
from glueberry.wire import tlscert
from glueberry.wire.identity import PrivateKey

NOW = 1_900_000_000.0
CLIENT_ADDR = ("127.0.0.1", 1111)
SERVER_ADDR = ("127.0.0.1", 2222)
WINDOW = 64 * 1024
CONN_WINDOW = 256 * 1024


def _config(is_client: bool, *, cert: bool = True, key: int = 1) -> QuicConfiguration:
    local = tlscert.generate_certificate(PrivateKey.from_seed(bytes([key]) * 32), NOW)
    config = hooks.make_configuration(
        is_client=is_client,
        alpn=tlscert.ALPN_LIBP2P,
        local=local,
        idle_timeout=30.0,
        max_datagram_size=1350,
        stream_window=WINDOW,
        connection_window=CONN_WINDOW,
    )
    if not cert:
        config.certificate = None
        config.private_key = None
    return config


class Pair:
    def __init__(self, *, client_cert: bool = True, **server_kw: int) -> None:
        self.now = 1000.0
        self.client = hooks.GlueberryQuicConnection(configuration=_config(True, cert=client_cert))
        self.server: hooks.GlueberryQuicConnection | None = None
        self.server_kw = server_kw
        self.client.connect(SERVER_ADDR, now=self.now)
        self.events: dict[str, list[events.QuicEvent]] = {"client": [], "server": []}

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            self.now += 0.001
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                if self.server is None:
                    self.server = hooks.GlueberryQuicConnection(
                        configuration=_config(False, key=2),
                        original_destination_connection_id=self.client._peer_cid.cid,
                        **self.server_kw,  # type: ignore[arg-type]
                    )
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
                moved = True
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(self.now):
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
                    moved = True
            for name, conn in (("client", self.client), ("server", self.server)):
                while conn is not None and (ev := conn.next_event()) is not None:
                    self.events[name].append(ev)
            if not moved:
                return

    def expire(self, seconds: float = 10.0) -> None:
        """Let time pass: closing and draining periods end, their events come out."""
        self.now += seconds
        for name, conn in (("client", self.client), ("server", self.server)):
            if conn is None:
                continue
            conn.handle_timer(self.now)
            while (ev := conn.next_event()) is not None:
                self.events[name].append(ev)

    def received(self, side: str, stream_id: int | None = None) -> int:
        return sum(
            len(e.data)
            for e in self.events[side]
            if isinstance(e, events.StreamDataReceived)
            and (stream_id is None or e.stream_id == stream_id)
        )

    def handshake_done(self, side: str) -> bool:
        return any(isinstance(e, events.HandshakeCompleted) for e in self.events[side])


def test_hooks_are_all_guarded() -> None:
    tested = {
        name[len("test_hook_") :].replace("_", "-")
        for name in globals()
        if name.startswith("test_hook_")
    }
    assert tested == set(hooks.HOOKS)


def test_hook_request_client_certificate() -> None:
    # The server asks for a certificate, so a client that has one sends it ...
    with_cert = Pair()
    with_cert.pump()
    assert with_cert.handshake_done("server")
    assert with_cert.server is not None
    assert with_cert.server.tls._request_client_certificate is True
    assert len(hooks.peer_certificates(with_cert.server)) == 1
    # ... and a client without one answers with an empty Certificate message, which aioquic
    # accepts: the transport must refuse that connection itself (peer_certificates == []).
    without = Pair(client_cert=False)
    without.pump()
    assert without.server is not None
    assert without.handshake_done("server")
    assert hooks.peer_certificates(without.server) == []


def test_hook_peer_certificates() -> None:
    pair = Pair()
    pair.pump()
    assert pair.server is not None
    client_seen = hooks.peer_certificates(pair.client)
    server_seen = hooks.peer_certificates(pair.server)
    assert [c.public_bytes(ssl_der()) for c in client_seen] == [
        pair.server.configuration.certificate.public_bytes(ssl_der())
    ]
    assert [c.public_bytes(ssl_der()) for c in server_seen] == [
        pair.client.configuration.certificate.public_bytes(ssl_der())
    ]
    der = [c.public_bytes(ssl_der()) for c in server_seen]
    assert tlscert.peer_id_of(der, NOW) == PrivateKey.from_seed(b"\x01" * 32).peer_id


def ssl_der() -> Encoding:
    return Encoding.DER


def test_hook_receive_window() -> None:
    pair = Pair()
    pair.pump()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, bytes(4 * WINDOW))
    pair.pump(400)
    assert pair.server is not None
    # Nothing consumed: exactly one window arrives, no more (aioquic alone doubles it).
    assert pair.received("server", sid) == WINDOW
    assert pair.server.stream_receive_limit(sid) == WINDOW
    # Consuming half a window grants another half.
    pair.server.consume(sid, WINDOW // 2)
    pair.pump(400)
    assert pair.received("server", sid) == WINDOW + WINDOW // 2
    # The connection window bounds the sum over streams.
    for _ in range(8):
        other = pair.client.get_next_available_stream_id()
        pair.client.send_stream_data(other, bytes(WINDOW))
    pair.pump(800)
    limit, used = pair.server.receive_credit
    assert pair.received("server") == used <= limit == CONN_WINDOW
    for ev in pair.events["server"]:
        if isinstance(ev, events.StreamDataReceived):
            pair.server.consume(ev.stream_id, 0)
    pair.server.consume(sid, CONN_WINDOW // 2)
    pair.pump(800)
    limit, used = pair.server.receive_credit
    assert limit == CONN_WINDOW + CONN_WINDOW // 2 + WINDOW // 2


def test_hook_stream_state() -> None:
    pair = Pair(max_incoming_streams=3)
    pair.pump()
    assert pair.server is not None
    assert pair.server._local_max_streams_bidi.value == 3
    # Unsent bytes: everything until packets are built, then what flow control holds back.
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, bytes(2 * WINDOW))
    assert pair.client.unsent(sid, 2 * WINDOW) == 2 * WINDOW
    pair.pump(400)
    assert pair.client.unsent(sid, 2 * WINDOW) == WINDOW
    # Only three peer streams may be open at once.
    for _ in range(4):
        pair.client.send_stream_data(pair.client.get_next_available_stream_id(), b"x")
    pair.pump(100)
    opened = {
        e.stream_id for e in pair.events["server"] if isinstance(e, events.StreamDataReceived)
    }
    assert len(opened) == 3
    # A reset stream's undelivered bytes return to the connection window.
    before = pair.server._gb_conn_consumed
    pair.client.reset_stream(sid, 7)
    pair.pump(100)
    assert any(isinstance(e, events.StreamReset) for e in pair.events["server"])
    pair.server.stream_reset_by_peer(sid, delivered=pair.received("server", sid))
    assert pair.server._gb_conn_consumed == before  # all delivered, none lost
    pair.server.stream_reset_by_peer(sid, delivered=0)
    assert pair.server._gb_conn_consumed == before + WINDOW


def test_hook_datagram_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioquic does not advertise max_udp_payload_size: the RFC 9000 default applies.
    pair = Pair()
    pair.pump()
    assert pair.server is not None
    assert pair.client.peer_max_udp_payload_size == 65527
    assert pair.client.max_datagram_size == 1350
    # Raised: datagrams grow, capped by aioquic's two-byte frame lengths, and the copies
    # in loss recovery follow.
    assert pair.client.set_max_datagram_size(65000) == hooks.MAX_DATAGRAM_SIZE
    assert pair.client._loss._pacer._max_datagram_size == hooks.MAX_DATAGRAM_SIZE
    assert vars(pair.client._loss._cc)["_max_datagram_size"] == hooks.MAX_DATAGRAM_SIZE
    sid = pair.client.get_next_available_stream_id()
    payload = os.urandom(WINDOW)
    pair.client.send_stream_data(sid, payload, end_stream=True)
    sizes: list[int] = []
    for _ in range(200):
        pair.now += 0.001
        for data, _ in pair.client.datagrams_to_send(pair.now):
            sizes.append(len(data))
            pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
        for data, _ in pair.server.datagrams_to_send(pair.now):
            pair.client.receive_datagram(data, SERVER_ADDR, now=pair.now)
        while (ev := pair.server.next_event()) is not None:
            pair.events["server"].append(ev)
    got = b"".join(
        e.data
        for e in pair.events["server"]
        if isinstance(e, events.StreamDataReceived) and e.stream_id == sid
    )
    assert got == payload
    assert max(sizes) > 8 * 1024
    assert max(sizes) <= hooks.MAX_DATAGRAM_SIZE
    # The peer's max_udp_payload_size is read from its transport parameters and caps it.
    from aioquic.quic import connection as aioquic_connection

    push = vars(aioquic_connection)["push_quic_transport_parameters"]

    def advertise_1452(buf: Any, params: Any) -> None:
        params.max_udp_payload_size = 1452
        push(buf, params)

    monkeypatch.setattr(aioquic_connection, "push_quic_transport_parameters", advertise_1452)
    capped = Pair()
    capped.pump()
    assert capped.handshake_done("client")
    assert capped.client.peer_max_udp_payload_size == 1452
    assert capped.client.set_max_datagram_size(hooks.MAX_DATAGRAM_SIZE) == 1452


def test_hook_ack_with_data() -> None:
    pair = Pair()
    pair.pump()
    pair.expire(1.0)  # every handshake ACK sent, nothing in flight
    pair.pump()
    assert pair.server is not None
    client, server = pair.client, pair.server
    assert client._loss.bytes_in_flight == 0
    sid = client.get_next_available_stream_id()
    now = pair.now + 0.01
    client.send_stream_data(sid, b"ping")
    for data, _ in client.datagrams_to_send(now):
        server.receive_datagram(data, CLIENT_ADDR, now=now)
    assert client._loss.bytes_in_flight > 0
    space = server._spaces[tls.Epoch.ONE_RTT]
    assert space.ack_at is not None and space.ack_at > now  # aioquic delays the ACK
    # The reply carries the ACK: one datagram, and the client's ping is acknowledged.
    server.ack_with_data(now)
    server.send_stream_data(sid, b"pong")
    out = server.datagrams_to_send(now)
    assert len(out) == 1 and space.ack_at is None
    client.receive_datagram(out[0][0], SERVER_ADDR, now=now)
    assert client._loss.bytes_in_flight == 0


def test_hook_key_share_groups() -> None:
    pair = Pair()
    pair.pump()
    assert pair.server is not None and pair.handshake_done("client")
    client_tls, server_tls = pair.client.tls, pair.server.tls
    assert client_tls._supported_groups == list(hooks.CLIENT_KEY_SHARE_GROUPS)
    # Two key shares made (X25519, P-256), not four; the server took the first.
    assert client_tls._x25519_private_key is not None
    assert client_tls._x448_private_key is None
    assert len(client_tls._ec_private_keys) == 1
    assert server_tls._x25519_private_key is not None
    # Servers still accept every group aioquic knows.
    assert tls.Group.X448 in server_tls._supported_groups


def test_configuration_fields_exist() -> None:
    names = {f.name for f in dataclasses.fields(QuicConfiguration)}
    assert {"certificate", "private_key", "verify_mode", "server_name"} <= names
    config = _config(True)
    assert config.verify_mode == ssl.CERT_NONE
    assert config.server_name is None


@pytest.mark.parametrize(
    "name",
    [
        "_initialize",
        "_write_stream_limits",
        "_write_connection_limits",
        "_parse_transport_parameters",
    ],
)
def test_overridden_methods_exist(name: str) -> None:
    from aioquic.quic.connection import QuicConnection

    assert callable(getattr(QuicConnection, name))


def test_peer_ignoring_the_window_is_closed() -> None:
    """B-33: a peer that sends past the credit we granted gets FLOW_CONTROL_ERROR; nothing
    beyond the window is ever buffered."""
    pair = Pair()
    pair.pump()
    assert pair.server is not None
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"")
    # A hostile client: pretend the server granted four windows.
    pair.client._streams[sid].max_stream_data_remote = 4 * WINDOW
    pair.client._remote_max_data = 16 * WINDOW
    pair.client.send_stream_data(sid, bytes(4 * WINDOW))
    pair.pump(400)
    pair.expire()
    ends = [e for e in pair.events["server"] if isinstance(e, events.ConnectionTerminated)]
    assert ends and ends[0].error_code == 0x3  # FLOW_CONTROL_ERROR
    assert pair.received("server", sid) <= WINDOW
