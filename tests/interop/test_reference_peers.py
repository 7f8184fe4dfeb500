"""The reference peers against each other (go-libp2p <-> js-libp2p), before any Python.

If these fail, an interop failure elsewhere is not Glueberry's fault: they prove that the
peers from ``interop/build.sh`` serve and drive the test protocols of ``docs/interop.md``
correctly, and they exercise the process fixtures of ``conftest.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.interop.conftest import DialerFactory, ListenerFactory

pytestmark = pytest.mark.interop

ALL = [
    "connect",
    "identify",
    "ping",
    "echo",
    "source",
    "sink",
    "reset",
    "close",
    "goaway",
    "disconnect",
]


@pytest.mark.parametrize(
    ("listener", "dialer", "extra"),
    [
        ("go", "js", []),
        ("js", "go", []),  # go negotiates lazily once identify listed the protocol
        ("js", "go", ["--eager"]),
        ("go", "go", ["--security", "tls"]),
    ],
)
def test_peer_pair(
    peer_listener: ListenerFactory,
    peer_dialer: DialerFactory,
    listener: str,
    dialer: str,
    extra: list[str],
) -> None:
    lis = peer_listener(listener, "--events")
    run = peer_dialer.run(dialer, lis.addr, "all", "--timeout", "30", *extra)
    assert run.ok, run.describe()
    assert set(run.result["tests"]) == set(ALL)
    connect = run.test("connect")
    assert connect["muxer"] == "/yamux/1.0.0"
    assert connect["remote_peer"] == lis.peer_id
    assert connect["security"] == ("/tls/1.0.0" if "tls" in extra else "/noise")
    ident = run.test("identify")
    assert ident["agent_version"].startswith(f"glueberry-interop-{listener}/")
    assert {"/echo/1.0.0", "/glueberry-test/sink/1.0.0", "/ipfs/ping/1.0.0"} <= set(
        ident["protocols"]
    )
    assert run.test("source")["bytes"] == 64 << 20
    assert run.test("sink")["bytes"] == 64 << 20
    # the listener saw the dialer, identified it, and served every test protocol
    seen = lis.wait_event(lambda e: e.get("event") == "identified", what="identify")
    assert seen["agent_version"].startswith(f"glueberry-interop-{dialer}/")
    for proto in ("/glueberry-test/source/1.0.0", "/glueberry-test/sink/1.0.0"):

        def served(e: dict[str, Any], p: str = proto) -> bool:
            return e.get("event") == "stream" and e.get("protocol") == p

        ev = lis.wait_event(served, what=proto)
        assert ev["ok"] and ev["bytes"] == 64 << 20


def test_bench_workload_smoke(peer_listener: ListenerFactory, peer_dialer: DialerFactory) -> None:
    """The go dialer runs /bench/1.0.0 against the js listener: the bench JSON keys."""
    lis = peer_listener("js")
    run = peer_dialer.run(
        "go",
        lis.addr,
        "bench",
        "--setup-n",
        "2",
        "--msgs",
        "200",
        "--bulk-mib",
        "2",
        "--rtt-n",
        "20",
        "--warmup",
        "2",
        "--security",
        "noise",
    )
    assert run.ok, run.describe()
    for key in (
        "setup_ms",
        "msgs_per_s",
        "bulk_MBps",
        "rtt_us_median",
        "rtt_us_p99",
        "rss_listener_MB",
        "rss_dialer_MB",
        "msgs_cpu_us_dialer",
        "msgs_cpu_us_listener",
    ):
        assert key in run.result, key
    assert len(run.result["setup_ms"]) == 2


async def test_async_dialer_and_event_wait(
    peer_listener: ListenerFactory, peer_dialer: DialerFactory
) -> None:
    """``arun`` and ``await_event`` keep the event loop free while a peer runs."""
    lis = peer_listener("go", "--security", "noise", "--events")
    run = await peer_dialer.arun("js", lis.addr, "ping", "--pings", "2")
    assert run.ok, run.describe()
    assert len(run.test("ping")["rtts_us"]) == 2
    ev = await lis.await_event(lambda e: e.get("event") == "connected", what="connection")
    assert ev["security"] == "/noise"


def test_unknown_or_missing_peer_fails_not_skips() -> None:
    from tests.interop.conftest import peer_binary

    with pytest.raises(pytest.fail.Exception):
        peer_binary("no-such-peer")
    assert peer_binary("go")[0].endswith("interop/go/bin/peer")


# --- gbpeer: the Glueberry v1 wire on go-libp2p ----------------------------------------------

#: shared/reference/glueberry-go-v1.md §2.9 (computed there in Python, not by Go).
REFERENCE_KEYS: dict[str, dict[str, str]] = {
    "A": {
        "ed25519_pub": "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
        "peer_id": "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5",
        "x25519_priv": "58e86efb75fa4e2c410f46e16de9f6acae1a1703528651b69bc176c088bef36e",
        "x25519_pub": "1b1b58dd50ea14b60da17b790cd02754d970c9bab864ebb3c0f3016fe51d3f57",
    },
    "B": {
        "ed25519_pub": "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394",
        "peer_id": "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq",
        "x25519_priv": "a83c626bc9c38c8c201878ebb1d5b0b50ac40e8986c78793db1d4ef369fca14e",
        "x25519_pub": "60346e7c911a5f6ba154129174cafe75b294ac3bbd5549632f48cec6266f8410",
    },
}
REFERENCE_VECTORS: dict[str, str] = {
    "x25519_shared": "4181d7302557342bdb6d061c4b1eebea828ecb625c3368b7111680793307220b",
    "stream_key": "5b7eb24d827b5976a95a65a1ec53336267eabd7288f6868fcc46e7ff1d9c19d3",
    "hello_blob": "000102030405060708090a0b80fbe2bb10b02de5c3016a4d05403eaf2b73581a81",
    "hello_frame": "2221000102030405060708090a0b80fbe2bb10b02de5c3016a4d05403eaf2b73581a81",
    "identity_point_x25519": "00" * 32,
}


def test_gbpeer_vectors_match_the_reference() -> None:
    """Go (filippo.io/edwards25519, x/crypto) computes exactly the §2.9 vectors."""
    import json
    import subprocess

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.interop.conftest import peer_binary

    out = subprocess.run(
        [*peer_binary("gbpeer"), "vectors"], capture_output=True, check=True, timeout=30
    )
    v = json.loads(out.stdout)
    for who in ("A", "B"):
        for key, want in REFERENCE_KEYS[who].items():
            assert v[who][key] == want, (who, key)
    for key in ("x25519_shared", "stream_key", "hello_blob", "hello_frame"):
        assert v[key] == REFERENCE_VECTORS[key], key
    assert v["identity_point_x25519"] == REFERENCE_VECTORS["identity_point_x25519"]
    assert v["identity_point_ecdh_ok"] is False
    assert v["frame_headers"] == {
        "010203": "0403",
        "empty": "0100",
        "200_bytes": "ca01c801",
        "16384_bytes": "838001808001",
        "1MiB": "838040808040",
    }
    assert v["handshake"]["hello_frame"] == "08071480011001" + "0000"
    assert v["handshake"]["pubkey_A"] == "1481011420" + REFERENCE_KEYS["A"]["ed25519_pub"] + "0000"
    # an independent recomputation with `cryptography`
    seed = bytes.fromhex(v["A"]["seed"])
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    assert pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == v["A"]["ed25519_pub"]
    xa = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["A"]["x25519_priv"]))
    assert (
        xa.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == v["A"]["x25519_pub"]
    )
    xb = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["B"]["x25519_priv"]))
    shared = xa.exchange(xb.public_key())
    assert shared.hex() == v["x25519_shared"]
    stream_key = HKDF(hashes.SHA256(), 32, None, b"glueberry-v1-stream-key").derive(shared)
    assert stream_key.hex() == v["stream_key"]
    nonce = bytes.fromhex(v["hello_nonce"])
    hello_blob = nonce + ChaCha20Poly1305(stream_key).encrypt(nonce, b"hello", None)
    assert hello_blob.hex() == v["hello_blob"]


@pytest.mark.parametrize("security", ["noise", "tls"])
def test_gbpeer_pair_handshake_exchange(
    peer_listener: ListenerFactory, peer_dialer: DialerFactory, security: str
) -> None:
    lis = peer_listener("gbpeer", "--events", "--security", security)
    run = peer_dialer.run("gbpeer", lis.addr, "handshake", "exchange", "--timeout", "30")
    assert run.ok, run.describe()
    assert run.test("handshake")["pubkey_matches_peer_id"] is True
    assert run.test("exchange")["remote_verdict"] == "ok"
    assert run.result["decrypt_failures"] == 0 and run.result["streams_reset"] == 0
    est = lis.wait_event(lambda e: e.get("event") == "established", what="established")
    assert est["pubkey_matches_peer_id"] is True
    ex = lis.wait_event(lambda e: e.get("event") == "exchange", what="exchange")
    assert ex["ok"], ex


def test_gbpeer_echo_and_bench(peer_listener: ListenerFactory, peer_dialer: DialerFactory) -> None:
    echo = peer_listener("gbpeer", "--echo")
    run = peer_dialer.run("gbpeer", echo.addr, "echo", "--timeout", "30")
    assert run.ok, run.describe()
    tagged = peer_listener("gbpeer")
    bench = peer_dialer.run(
        "gbpeer",
        tagged.addr,
        "bench",
        "--msgs",
        "300",
        "--bulk-mib",
        "2",
        "--rtt-n",
        "30",
        "--warmup",
        "3",
    )
    assert bench.ok, bench.describe()
    for key in ("msgs_per_s", "bulk_MBps", "rtt_us_median", "rss_listener_MB", "handshake_ms"):
        assert key in bench.result, key
