"""The ``glueberry`` command: identities, a listening node, ping, and a one-process demo.

::

    glueberry id     [--key FILE]                  create or show an identity, print its peer ID
    glueberry listen [--listen MULTIADDR]... [--key FILE]
                                                   serve identify, ping and the test protocols
                                                   (default: loopback TCP and, with the quic
                                                   extra, loopback QUIC)
    glueberry ping   MULTIADDR [-c N] [-i SECONDS] ping a peer like ping(8)
    glueberry demo                                 two nodes on loopback: connect, identify,
                                                   ping, echo; prints timings

Exit codes: 0 success; 1 some pings or checks failed; 2 bad command line or bad input (a
malformed multiaddr, an unreadable key file); 3 the peer could not be reached; 4 the peer is
not who the address says (peer ID mismatch) or the secure handshake failed; 130 interrupted.

Identity files hold the libp2p ``PrivateKey`` protobuf (what go-libp2p's
``crypto.MarshalPrivateKey`` writes), created with mode 0600. The default file is
``$XDG_CONFIG_HOME/glueberry/identity.key`` (``~/.config/glueberry/identity.key``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn, TextIO

from glueberry._loop import LOOPS
from glueberry._loop import run as run_on_loop
from glueberry._version import __version__
from glueberry.errors import (
    ConfigError,
    ConnectError,
    GlueberryError,
    HandshakeError,
    HandshakeTimeout,
    NegotiationFailed,
    PeerIdMismatch,
    SecurityError,
    TransportError,
)
from glueberry.wire.identity import PeerId, PrivateKey, decode_identity_file, encode_identity_file
from glueberry.wire.multiaddr import Multiaddr, MultiaddrError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_SECURITY: Final = 4
EXIT_INTERRUPTED: Final = 130

DEFAULT_LISTEN: Final = "/ip4/127.0.0.1/tcp/0"
DEFAULT_LISTEN_QUIC: Final = "/ip4/127.0.0.1/udp/0/quic-v1"


def default_listen_addrs() -> list[str]:
    """What ``glueberry listen`` binds without ``--listen``: loopback TCP, and loopback QUIC
    when aioquic (the ``quic`` extra) is installed. Loopback only: exposing a node to the
    network is an explicit choice (``--listen /ip4/0.0.0.0/tcp/4001``)."""
    from glueberry.net.transports import quic_available

    return [DEFAULT_LISTEN, DEFAULT_LISTEN_QUIC] if quic_available() else [DEFAULT_LISTEN]


#: Give up on reaching a peer after this long.
CONNECT_TIMEOUT: Final = 10.0


class CliError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def default_key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "glueberry" / "identity.key"


def load_or_create_key(path: Path) -> tuple[PrivateKey, bool]:
    """Read the identity in ``path``, or create it (mode 0600). Returns ``(key, created)``.

    Raises:
        CliError: the file exists but is not a key, or cannot be read or written.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CliError(f"cannot read identity file {path}: {exc.strerror}", EXIT_USAGE) from exc
    else:
        try:
            return decode_identity_file(data), False
        except ConfigError as exc:
            raise CliError(f"{path} is not an identity key file ({exc})", EXIT_USAGE) from exc
    key = PrivateKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(encode_identity_file(key))
            f.flush()
            os.fsync(f.fileno())
    except FileExistsError:
        # Someone created it between our read and our write: use theirs.
        return load_or_create_key(path)
    except OSError as exc:
        raise CliError(f"cannot create identity file {path}: {exc.strerror}", EXIT_USAGE) from exc
    return key, True


def parse_peer_multiaddr(text: str) -> tuple[Multiaddr, PeerId]:
    """Split ``/ip4/.../tcp/.../p2p/<id>`` into the transport address and the peer ID."""
    try:
        ma = Multiaddr(text)
    except MultiaddrError as exc:
        raise CliError(
            f"not a valid multiaddr: {text!r} ({exc}); "
            "expected something like /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...",
            EXIT_USAGE,
        ) from exc
    peer = ma.peer_id
    if peer is None:
        raise CliError(
            f"{text} does not name a peer: append /p2p/<peer ID> (printed by `glueberry listen`)",
            EXIT_USAGE,
        )
    return ma.without_p2p(), peer


def _explain(exc: BaseException, target: str) -> CliError:
    """Turn a connection failure into a sentence a newcomer can act on."""
    if isinstance(exc, PeerIdMismatch):
        return CliError(
            f"the node at {target} is a different peer than the address says ({exc}); "
            "check the /p2p/ part of the address",
            EXIT_SECURITY,
        )
    if isinstance(exc, HandshakeTimeout) and target.endswith("/quic-v1"):
        # QUIC connects and authenticates in one handshake: silence means unreachable.
        return CliError(
            f"no answer from {target} ({exc}): is the node running, and is the address "
            "(UDP) reachable from here?",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, SecurityError | HandshakeError):
        return CliError(f"secure handshake with {target} failed: {exc}", EXIT_SECURITY)
    if isinstance(exc, TimeoutError):
        return CliError(
            f"no answer from {target} within {CONNECT_TIMEOUT:.0f} s: is the node running, "
            "and is the address reachable from here?",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, ConnectError | TransportError | OSError):
        return CliError(
            f"cannot reach {target}: {exc}. Is `glueberry listen` running there?",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, NegotiationFailed):
        return CliError(f"{target} does not speak the protocol: {exc}", EXIT_FAILED)
    return CliError(f"{type(exc).__name__}: {exc}", EXIT_FAILED)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


# --- commands ----------------------------------------------------------------------------------


def cmd_id(args: argparse.Namespace, out: TextIO) -> int:
    path = Path(args.key) if args.key else default_key_path()
    key, created = load_or_create_key(path)
    if created:
        print(f"created a new identity in {path}", file=sys.stderr)
    print(key.peer_id, file=out)
    return EXIT_OK


async def _listen(args: argparse.Namespace, out: TextIO) -> int:
    from glueberry.net.host import Host, HostConfig
    from glueberry.net.services import IdentifyService, PingService
    from glueberry.net.testprotocols import TEST_LIMITS, register_test_protocols

    if args.key:
        key, created = load_or_create_key(Path(args.key))
        if created:
            print(f"created a new identity in {args.key}", file=sys.stderr)
    else:
        key = PrivateKey.generate()
    texts: list[str] = args.listen or default_listen_addrs()
    listen: list[Multiaddr] = []
    for text in texts:
        try:
            listen.append(Multiaddr(text))
        except MultiaddrError as exc:
            raise CliError(f"not a valid listen multiaddr: {text!r} ({exc})", EXIT_USAGE) from exc
    try:
        host = Host(key, listen_addrs=listen, config=HostConfig(limits=TEST_LIMITS))
        async with host:
            IdentifyService(host)
            PingService(host)
            register_test_protocols(host)
            for addr in host.addrs:
                print(addr.with_p2p(host.peer_id), file=out, flush=True)
            example = host.addrs[0].with_p2p(host.peer_id) if host.addrs else "<address>"
            print(
                f"glueberry listen: serving identify, ping and the test protocols as "
                f"{host.peer_id}; try `glueberry ping {example}` from another terminal; "
                "stop with Ctrl-C",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.Event().wait()
    except OSError as exc:
        where = " ".join(texts)
        raise CliError(f"cannot listen on {where}: {exc.strerror or exc}", EXIT_USAGE) from exc
    except ConnectError as exc:  # port in use, no transport for the address (e.g. no aioquic)
        raise CliError(f"{exc}", EXIT_USAGE) from exc
    return EXIT_OK


async def _ping(args: argparse.Namespace, out: TextIO) -> int:
    from glueberry.net.host import Host
    from glueberry.net.services import IdentifyService, PingService

    addr, peer = parse_peer_multiaddr(args.addr)
    if args.count < 1:
        raise CliError("-c must be at least 1", EXIT_USAGE)
    key = PrivateKey.generate()
    async with Host(key, listen_addrs=[]) as host:
        IdentifyService(host)
        pinger = PingService(host)
        print(f"PING {peer} via {addr}", file=out, flush=True)
        if addr.transport_kind() == "quic-v1":
            with contextlib.suppress(ImportError):  # load aioquic before the clock starts
                import glueberry.transport.quic  # noqa: F401
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                conn = await host.connect(peer, [addr])
        except (GlueberryError, OSError, TimeoutError) as exc:
            raise _explain(exc, str(addr)) from exc
        # The address chooses the transport: /tcp/ (Noise or TLS, yamux) or /quic-v1 (TLS).
        how = (
            f"QUIC ({conn.security_protocol})"
            if conn.transport_name == "quic-v1"
            else f"{conn.transport_name.upper()} + {conn.security_protocol} + {conn.muxer_protocol}"
        )
        print(f"connected in {_ms(time.perf_counter() - t0)} over {how}", file=out, flush=True)
        rtts: list[float] = []
        sent = 0
        try:
            async for seq, rtt in pinger.ping_iter(peer, args.count, interval=args.interval):
                sent = seq
                if rtt is None:
                    print(f"no pong: seq={seq}", file=out, flush=True)
                    continue
                rtts.append(rtt)
                print(f"pong from {peer}: seq={seq} time={_ms(rtt)}", file=out, flush=True)
        except GlueberryError as exc:
            raise _explain(exc, str(addr)) from exc
        _ping_summary(out, str(peer), max(sent, len(rtts)), rtts)
        return EXIT_OK if len(rtts) == args.count else EXIT_FAILED


def _ping_summary(out: TextIO, peer: str, sent: int, rtts: list[float]) -> None:
    loss = 100.0 * (sent - len(rtts)) / sent if sent else 0.0
    print(f"--- {peer} ping statistics ---", file=out)
    print(f"{sent} pings sent, {len(rtts)} pongs received, {loss:.0f}% loss", file=out)
    if rtts:
        ms = [r * 1e3 for r in rtts]
        mdev = statistics.pstdev(ms) if len(ms) > 1 else 0.0
        print(
            f"rtt min/avg/max/mdev = {min(ms):.3f}/{statistics.fmean(ms):.3f}/"
            f"{max(ms):.3f}/{mdev:.3f} ms",
            file=out,
        )
    out.flush()


async def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from glueberry.net.host import Host
    from glueberry.net.services import IdentifyService, PingService
    from glueberry.net.testprotocols import ECHO_PROTOCOL, register_test_protocols

    del args
    loop = Multiaddr("/ip4/127.0.0.1/tcp/0")
    alice_key, bob_key = PrivateKey.generate(), PrivateKey.generate()
    print(f"glueberry {__version__} demo: two nodes on 127.0.0.1", file=out)
    async with (
        Host(alice_key, listen_addrs=[loop]) as alice,
        Host(bob_key, listen_addrs=[loop]) as bob,
    ):
        ids = {h.peer_id: IdentifyService(h) for h in (alice, bob)}
        pings = {h.peer_id: PingService(h) for h in (alice, bob)}
        for h in (alice, bob):
            register_test_protocols(h, bench=False)
        print(f"  alice {alice.peer_id} on {alice.addrs[0]}", file=out)
        print(f"  bob   {bob.peer_id} on {bob.addrs[0]}", file=out)

        t0 = time.perf_counter()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await alice.connect(bob.peer_id, bob.addrs)
        t_conn = time.perf_counter() - t0
        print(f"connect (TCP + Noise + yamux)    {_ms(t_conn)}", file=out)

        t0 = time.perf_counter()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            info_bob = await ids[alice.peer_id].wait_identified(bob.peer_id)
            info_alice = await ids[bob.peer_id].wait_identified(alice.peer_id)
        t_id = time.perf_counter() - t0
        print(f"identify, both ways              {_ms(t_id)}", file=out)
        print(f"  alice sees bob as   {info_bob.agent_version}", file=out)
        print(f"  bob sees alice as   {info_alice.agent_version}", file=out)
        # Each side reports where it sees the other (identify's observedAddr).
        print(f"  bob sees alice at   {info_bob.observed_addr}", file=out)

        rtts = await pings[alice.peer_id].ping(bob.peer_id, 5)
        print(
            f"ping x{len(rtts)}                          median {_ms(statistics.median(rtts))}",
            file=out,
        )

        msg = b"hello from alice, " * 1000
        t0 = time.perf_counter()
        stream = await alice.new_stream(bob.peer_id, [ECHO_PROTOCOL])
        await stream.write(msg)
        await stream.close_write()
        echoed = b""
        while chunk := await stream.read():
            echoed += chunk
        t_echo = time.perf_counter() - t0
        ok = echoed == msg
        print(
            f"echo {len(msg)} bytes                  {_ms(t_echo)}  {'ok' if ok else 'MISMATCH'}",
            file=out,
        )
    from glueberry.demo import run_demo  # the Glueberry node on top: handshake, encryption

    print(file=out)
    ok = await run_demo(out) and ok
    print("demo finished" if ok else "demo FAILED", file=out, flush=True)
    return EXIT_OK if ok else EXIT_FAILED


# --- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glueberry",
        description="Encrypted peer-to-peer messaging on asyncio, with a libp2p-compatible stack.",
        epilog="exit codes: 0 ok, 1 failed checks, 2 bad input, 3 unreachable, "
        "4 wrong peer / handshake failed, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"glueberry {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="event loop: asyncio's own (default) or uvloop (pip install 'glueberry[uvloop]')",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("id", help="create or show an identity key and print its peer ID")
    p.add_argument("--key", metavar="FILE", help=f"identity file (default {default_key_path()})")

    p = sub.add_parser("listen", help="run a node that answers identify, ping and echo")
    p.add_argument(
        "--listen",
        metavar="MULTIADDR",
        action="append",
        help="address to listen on; repeat for several (TCP /ip4/…/tcp/PORT, QUIC "
        "/ip4/…/udp/PORT/quic-v1). Default: "
        + " and ".join(default_listen_addrs())
        + " (loopback only)",
    )
    p.add_argument("--key", metavar="FILE", help="identity file (default: a fresh identity)")

    p = sub.add_parser("ping", help="ping a peer, e.g. one started with `glueberry listen`")
    p.add_argument(
        "addr",
        metavar="MULTIADDR",
        help="/ip4/.../tcp/.../p2p/<peer ID> or /ip4/.../udp/.../quic-v1/p2p/<peer ID>",
    )
    p.add_argument("-c", "--count", type=int, default=4, help="pings to send (default 4)")
    p.add_argument(
        "-i", "--interval", type=float, default=1.0, help="seconds between pings (default 1)"
    )

    sub.add_parser("demo", help="two nodes in this process: connect, identify, ping, echo")
    return parser


def _configure_logging(verbosity: int) -> None:
    import logging

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def run(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line ``argv``; return the exit code (never raises for user errors)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "id":
            return cmd_id(args, out)
        coro = {"listen": _listen, "ping": _ping, "demo": _demo}[args.command](args, out)
        try:
            return run_on_loop(coro, args.loop)
        except ModuleNotFoundError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
    except CliError as exc:
        print(f"glueberry {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    # Ctrl-C: let asyncio.run cancel the main task cleanly, then exit 130.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(run(argv))


__all__ = ["build_parser", "default_key_path", "load_or_create_key", "main", "run"]
