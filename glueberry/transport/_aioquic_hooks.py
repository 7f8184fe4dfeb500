"""Every use of aioquic's private API, in one small module.

aioquic (https://github.com/aiortc/aioquic) is a sans-I/O QUIC stack; :mod:`.quic` drives
its public API (``receive_datagram``, ``datagrams_to_send``, ``next_event``, ``get_timer``,
``send_stream_data``, ...). libp2p needs seven things that public API does not offer. Each is
done here and nowhere else, and each has one guard test in
``tests/transport/test_quic_hooks.py``, so an aioquic release that moves the internals fails
those tests loudly instead of silently weakening security or flow control:

H1 ``request-client-certificate``
    libp2p TLS is mutual: "servers MUST require client authentication". aioquic's server
    sends a CertificateRequest only when ``tls.Context._request_client_certificate`` is set
    (documented there as "for test purposes only"). :meth:`GlueberryQuicConnection._initialize`
    sets it right after aioquic creates the TLS context and before the ClientHello is read.

H2 ``peer-certificates``
    aioquic keeps the peer's certificates in ``tls.Context._peer_certificate`` and
    ``_peer_certificate_chain`` and never shows them. :func:`peer_certificates` returns them
    (DER) so that :mod:`glueberry.wire.tlscert` can verify them, and can see a *missing*
    client certificate (aioquic's server accepts an empty Certificate message).

H3 ``receive-window``
    aioquic grants flow-control credit as data *arrives* (it doubles a stream's window,
    and the connection's, whenever half of it is used), so a reader that stops reading
    never slows the sender and memory grows without bound. Here credit follows what the
    application has *consumed*: a stream may receive up to ``consumed + stream_window``
    bytes, the connection ``consumed + connection_window``, and MAX_STREAM_DATA/MAX_DATA
    go out once half a window was consumed. The two overrides
    (``_write_stream_limits``, ``_write_connection_limits``) raise
    ``QuicStream.max_stream_data_local`` / ``_local_max_data.value`` themselves and hide
    the counters aioquic's doubling rule reads (``receiver.highest_offset``,
    ``Limit.used``) for the duration of the call; aioquic still writes, retransmits and
    logs the frames.

H4 ``stream-state``
    Per-stream numbers the driver needs: bytes not yet sent (send-side backpressure:
    ``written - sender.highest_offset``), the final size of a reset stream (so that its
    undelivered bytes return to the connection window) and the stream limits advertised
    in the transport parameters (``_local_max_streams_bidi``/``_uni``; aioquic fixes
    them at 128).

H5 ``datagram-size``
    aioquic sends datagrams of a size fixed by its configuration and never reads the
    peer's ``max_udp_payload_size`` transport parameter. On loopback (MTU 64 KiB) the
    per-packet cost of aioquic (tens of µs of Python per packet and side) dominates, so
    the transport raises the size once the handshake is done:
    :meth:`GlueberryQuicConnection.set_max_datagram_size` updates
    ``_max_datagram_size`` and the copies aioquic's loss recovery keeps (the congestion
    controller's and the pacer's ``_max_datagram_size``), and
    :attr:`GlueberryQuicConnection.peer_max_udp_payload_size` is read from the peer's
    transport parameters (``_parse_transport_parameters``) so the size never exceeds what
    the peer accepts (RFC 9000 §18.2).

H6 ``ack-with-data``
    aioquic delays every ACK by ``K_GRANULARITY`` (1 ms) and only writes an ACK frame into
    a packet once that delay has passed, so a request/response exchange sends each data
    packet and, a millisecond later, a separate ACK-only packet, and each side wakes up
    once more to send it. :meth:`GlueberryQuicConnection.ack_with_data` moves the
    pending 1-RTT ACK deadline (``_spaces[ONE_RTT].ack_at``) to now when the driver is
    about to send application data, so the ACK rides on that packet (as quic-go and
    most stacks do); bulk receivers, which send no data, keep the delayed ACKs.

H7 ``key-share-groups``
    aioquic's TLS client offers a key share for every group it supports (P-256, P-384,
    X25519, X448): four key generations per dial, about 0.8 ms of CPU here, three of
    them wasted. The client offers X25519 and P-256 only (``tls.Context._supported_groups``,
    set in :meth:`GlueberryQuicConnection._initialize` before the ClientHello is
    built); go-libp2p, rust-libp2p and aioquic servers all pick one of them. Servers
    keep accepting every group aioquic supports.

Configuration fields that aioquic marks "for internal purposes" (``certificate``,
``private_key``, ``verify_mode``) are set in :func:`make_configuration`; they are covered
by the guard tests too.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any, Final

import aioquic
from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_transport_parameters

if TYPE_CHECKING:
    from cryptography import x509

    from glueberry.wire.tlscert import LocalCertificate

#: aioquic releases these hooks were verified against (see docs/quic-tls.md).
VERIFIED_AIOQUIC: Final = ">=1.7,<1.8"
#: The hooks, by name; each has one guard test.
HOOKS: Final = (
    "request-client-certificate",
    "peer-certificates",
    "receive-window",
    "stream-state",
    "datagram-size",
    "ack-with-data",
    "key-share-groups",
)
#: Key shares a client offers (H7), in preference order.
CLIENT_KEY_SHARE_GROUPS: Final = (tls.Group.X25519, tls.Group.SECP256R1)
#: aioquic writes STREAM frame and long-header lengths as 2-byte varints: a datagram
#: larger than this could carry a frame whose length does not fit (a corrupt packet).
MAX_DATAGRAM_SIZE: Final = 16383


def _check_aioquic() -> None:
    """Refuse to run on an aioquic whose internals are not where the hooks expect them."""
    missing = [
        name
        for name in (
            "_initialize",
            "_write_stream_limits",
            "_write_connection_limits",
            "_parse_transport_parameters",
        )
        if not callable(getattr(QuicConnection, name, None))
    ]
    if missing:
        raise ImportError(
            f"aioquic {aioquic.__version__} lacks {', '.join(missing)}; glueberry's QUIC "
            f"transport was verified with aioquic{VERIFIED_AIOQUIC}"
        )


_check_aioquic()


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if not (1, 7) <= _version_tuple(aioquic.__version__) < (1, 8):
    logging.getLogger(__name__).warning(
        "aioquic %s is outside the verified range %s; run tests/transport/test_quic_hooks.py",
        aioquic.__version__,
        VERIFIED_AIOQUIC,
    )


def make_configuration(
    *,
    is_client: bool,
    alpn: str,
    local: LocalCertificate,
    idle_timeout: float,
    max_datagram_size: int,
    stream_window: int,
    connection_window: int,
) -> QuicConfiguration:
    """An aioquic configuration for one libp2p QUIC connection.

    Certificate verification is ours (:mod:`glueberry.wire.tlscert`), so aioquic's PKIX
    verification is off (``verify_mode=CERT_NONE``); aioquic still checks that the peer's
    CertificateVerify is signed by the certificate's key. No server name: libp2p clients
    MUST NOT send SNI.
    """
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[alpn],
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_stream_data=stream_window,
        max_data=connection_window,
        server_name=None,
    )
    config.certificate = local.certificate
    config.private_key = local.private_key
    config.verify_mode = ssl.CERT_NONE
    return config


class GlueberryQuicConnection(QuicConnection):
    """An aioquic ``QuicConnection`` with hooks H1, H3-H7 (see the module docstring).

    Args:
        configuration: from :func:`make_configuration`.
        request_client_certificate: servers: ask for (and so require) a client certificate.
        max_incoming_streams: bidirectional streams the peer may have open at once.
        max_incoming_uni_streams: unidirectional streams likewise (libp2p uses none).
        **kwargs: passed to ``QuicConnection`` (``original_destination_connection_id``).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        request_client_certificate: bool = True,
        max_incoming_streams: int = 256,
        max_incoming_uni_streams: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(configuration=configuration, **kwargs)
        self._gb_request_cert = request_client_certificate
        self._gb_stream_window: int = configuration.max_stream_data
        self._gb_conn_window: int = configuration.max_data
        #: Bytes the application consumed, per stream and in total.
        self._gb_consumed: dict[int, int] = {}
        self._gb_conn_consumed = 0
        # H4: the stream limits announced in our transport parameters.
        for limit, value in (
            (self._local_max_streams_bidi, max_incoming_streams),
            (self._local_max_streams_uni, max_incoming_uni_streams),
        ):
            limit.value = limit.sent = value
        self._gb_peer_params = b""  # the peer's transport parameters (H5), parsed on demand

    # --- H1 ---------------------------------------------------------------------------------
    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self.configuration.is_client and self._gb_request_cert:
            self.tls._request_client_certificate = True
        if self.configuration.is_client:  # H7
            self.tls._supported_groups = list(CLIENT_KEY_SHARE_GROUPS)

    # --- H3 ---------------------------------------------------------------------------------
    def consume(self, stream_id: int, n: int) -> bool:
        """The application took (or dropped) ``n`` received bytes of ``stream_id``.

        Returns True when a window update (MAX_STREAM_DATA or MAX_DATA) is now due, i.e.
        the driver should call ``datagrams_to_send`` soon.
        """
        if not n:
            return False
        consumed = self._gb_consumed.get(stream_id, 0) + n
        self._gb_consumed[stream_id] = consumed
        self._gb_conn_consumed += n
        window = self._gb_conn_window
        if self._gb_conn_consumed + window - self._local_max_data.value >= window // 2:
            return True
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        window = self._gb_stream_window
        return bool(consumed + window - stream.max_stream_data_local >= window // 2)

    def stream_reset_by_peer(self, stream_id: int, delivered: int) -> None:
        """A peer reset ``stream_id`` after ``delivered`` bytes reached the application.

        Bytes between what was delivered and the stream's final size count against the
        connection window and will never be read: give that credit back.
        """
        stream = self._streams.get(stream_id)
        if stream is not None:
            undelivered = stream.receiver.highest_offset - delivered
            if undelivered > 0:
                self._gb_conn_consumed += undelivered

    def forget_stream(self, stream_id: int) -> None:
        self._gb_consumed.pop(stream_id, None)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic calls this for every stream for every packet it builds: keep the common
        # case (nothing to announce) to a few attribute reads.
        limit = stream.max_stream_data_local
        if limit:  # zero only for our own unidirectional streams
            window = self._gb_stream_window
            target = self._gb_consumed.get(stream.stream_id, 0) + window
            if target - limit >= window // 2:
                stream.max_stream_data_local = limit = target
        if stream.max_stream_data_local_sent == limit:
            return
        receiver = stream.receiver
        seen = receiver.highest_offset
        receiver.highest_offset = 0  # aioquic's doubling rule reads it: keep it quiet
        try:
            super()._write_stream_limits(builder=builder, space=space, stream=stream)
        finally:
            receiver.highest_offset = seen

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        window = self._gb_conn_window
        target = self._gb_conn_consumed + window
        if target - limit.value >= window // 2:
            limit.value = target
        used = limit.used
        limit.used = 0  # aioquic's doubling rule reads it: keep it quiet
        try:
            super()._write_connection_limits(builder=builder, space=space)
        finally:
            limit.used = used

    # --- H5 ---------------------------------------------------------------------------------
    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        self._gb_peer_params = data  # valid: a malformed list raised above

    @property
    def peer_max_udp_payload_size(self) -> int:
        """The peer's ``max_udp_payload_size`` (RFC 9000's default while unknown)."""
        if self._gb_peer_params:
            params = pull_quic_transport_parameters(Buffer(data=self._gb_peer_params))
            if params.max_udp_payload_size is not None:
                return int(params.max_udp_payload_size)
        return 65527

    @property
    def max_datagram_size(self) -> int:
        return int(self._max_datagram_size)

    def set_max_datagram_size(self, size: int) -> int:
        """Send datagrams of up to ``size`` bytes from now on (capped by the peer's
        ``max_udp_payload_size`` and :data:`MAX_DATAGRAM_SIZE`); returns the size used.

        Only for a path known to carry them (loopback): there is no path MTU discovery.
        """
        size = max(1200, min(size, self.peer_max_udp_payload_size, MAX_DATAGRAM_SIZE))
        self._max_datagram_size = size
        loss = self._loss
        loss._pacer._max_datagram_size = size
        cc = loss._cc
        if hasattr(cc, "_max_datagram_size"):
            cc._max_datagram_size = size
        if hasattr(cc, "additive_increase_factor"):  # cubic
            cc.additive_increase_factor = size
        return size

    # --- H6 ---------------------------------------------------------------------------------
    def ack_with_data(self, now: float) -> None:
        """Let the next 1-RTT packet carry the pending ACK instead of waiting for the
        delayed-ACK deadline (call it when application data is about to be sent)."""
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None and space.ack_at > now:
            space.ack_at = now

    # --- H4 ---------------------------------------------------------------------------------
    def unsent(self, stream_id: int, written: int) -> int:
        """Bytes of ``written`` (all the application gave) not yet sent on ``stream_id``."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return max(0, written - stream.sender.highest_offset)

    @property
    def receive_credit(self) -> tuple[int, int]:
        """``(connection limit advertised, bytes received)``: for tests and statistics."""
        return self._local_max_data.value, self._local_max_data.used

    def stream_receive_limit(self, stream_id: int) -> int | None:
        """The MAX_STREAM_DATA we grant on ``stream_id`` (None once the stream is gone)."""
        stream = self._streams.get(stream_id)
        return None if stream is None else int(stream.max_stream_data_local)


# --- H2 --------------------------------------------------------------------------------------
def peer_certificates(conn: QuicConnection) -> list[x509.Certificate]:
    """The certificates the peer presented in the handshake (empty: none)."""
    tls = getattr(conn, "tls", None)
    if tls is None:
        return []
    first = tls._peer_certificate
    if first is None:
        return []
    return [first, *tls._peer_certificate_chain]


__all__ = [
    "CLIENT_KEY_SHARE_GROUPS",
    "HOOKS",
    "MAX_DATAGRAM_SIZE",
    "VERIFIED_AIOQUIC",
    "GlueberryQuicConnection",
    "make_configuration",
    "peer_certificates",
]
