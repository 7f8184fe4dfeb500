"""Address book: Go file format, blacklist, limits, durability, corruption, concurrency."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from glueberry.errors import PeerBlacklisted, PeerNotFound, ResourceLimitExceeded
from glueberry.peers.addressbook import (
    GO_ZERO_TIME,
    AddressBook,
    AddressBookCorrupt,
    AddressBookError,
    PeerEntry,
    metadata_size,
)
from glueberry.wire.identity import PeerId, PrivateKey
from glueberry.wire.multiaddr import Multiaddr

PEER_A = PrivateKey.from_seed(b"\x01" * 32).peer_id
PEER_B = PrivateKey.from_seed(b"\x02" * 32).peer_id
PUB_A = PrivateKey.from_seed(b"\x01" * 32).public_key.data
T0 = datetime(2026, 1, 29, 14, 47, 51, 123456, tzinfo=timezone(timedelta(hours=2)))

GO_FILE = """{
  "version": 1,
  "peers": {
    "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5": {
      "peer_id": "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5",
      "public_key": "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=",
      "metadata": {
        "name": "peer"
      },
      "last_seen": "0001-01-01T00:00:00Z",
      "blacklisted": false,
      "created_at": "2026-01-29T14:47:51.123456789+02:00",
      "updated_at": "2026-01-29T14:47:51.123456789+02:00",
      "multiaddrs": [
        "/ip4/127.0.0.1/tcp/9000"
      ]
    }
  }
}"""


def fixed_now() -> datetime:
    return T0


def book_at(path: Path, **kw: object) -> AddressBook:
    return AddressBook(path, now=fixed_now, **kw)  # type: ignore[arg-type]


def test_reads_go_file(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text(GO_FILE)
    book = book_at(path)
    e = book.get_peer(PEER_A)
    assert e.public_key == PUB_A
    assert dict(e.metadata) == {"name": "peer"}
    assert e.last_seen is None and not e.blacklisted
    assert e.created_at == T0
    assert e.multiaddrs == ("/ip4/127.0.0.1/tcp/9000",)
    assert e.addrs() == [Multiaddr("/ip4/127.0.0.1/tcp/9000")]
    assert book.unparsed_entries == {}


def test_writes_go_layout(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    book = book_at(path)
    book.add_peer(PEER_A, ["/ip4/127.0.0.1/tcp/9000"], {"name": "peer"})
    book.update_public_key(PEER_A, PUB_A)
    # Identical to what Go writes, except the nanoseconds Python cannot hold.
    assert path.read_text() == GO_FILE.replace(".123456789", ".123456")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(tmp_path)) == ["book.json", "book.json.lock"]


def test_round_trip_and_go_escaping(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    book = book_at(path)
    book.add_peer(PEER_B, [Multiaddr("/ip6/::1/tcp/1")], {"x": "<a&b>", "ü": "\u2028"})
    book.add_peer(PEER_A, [])
    text = path.read_text()
    assert "\\u003ca\\u0026b\\u003e" in text and "\\u2028" in text and "ü" in text
    keys = list(json.loads(text)["peers"])
    assert keys == sorted(keys)
    again = AddressBook(path)
    assert again.list_all_peers() == book.list_all_peers()
    assert dict(again.get_peer(PEER_B).metadata) == {"x": "<a&b>", "ü": "\u2028"}


def test_time_formats(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    utc = datetime(2025, 3, 4, 5, 6, 7, 120000, tzinfo=UTC)
    book = AddressBook(path, now=lambda: utc)
    book.add_peer(PEER_A, [])
    book.update_last_seen(PEER_A, datetime(2025, 1, 1, tzinfo=timezone(-timedelta(hours=5))))
    book.flush()
    obj = json.loads(path.read_text())["peers"][str(PEER_A)]
    assert obj["created_at"] == "2025-03-04T05:06:07.12Z"
    assert obj["last_seen"] == "2025-01-01T00:00:00-05:00"
    assert "public_key" not in obj and "metadata" not in obj


def test_add_update_remove(tmp_path: Path) -> None:
    book = book_at(tmp_path / "b.json")
    e = book.add_peer(PEER_A, ["/ip4/1.2.3.4/tcp/1"], {"k": "v"})
    e2 = book.add_peer(PEER_A, ["/ip4/1.2.3.4/tcp/2"])
    assert e2.multiaddrs == ("/ip4/1.2.3.4/tcp/2",) and e2.metadata == e.metadata
    assert book.has_peer(PEER_A) and PEER_A in book and len(book) == 1
    with pytest.raises(ValueError):
        book.add_peer(PEER_A, ["not-an-addr"])
    book.remove_peer(PEER_A)
    with pytest.raises(PeerNotFound):
        book.remove_peer(PEER_A)
    with pytest.raises(PeerNotFound):
        book.get_peer(PEER_A)
    assert AddressBook(tmp_path / "b.json").list_all_peers() == []


def test_blacklist_unknown_peer(tmp_path: Path) -> None:
    book = book_at(tmp_path / "b.json")
    book.add_peer(PEER_B, [])
    entry = book.blacklist_peer(PEER_A)
    assert entry.blacklisted and entry.multiaddrs == ()
    assert book.is_blacklisted(PEER_A) and not book.is_blacklisted(PEER_B)
    assert [e.peer_id for e in book.list_peers()] == [PEER_B]
    assert book.count_active() == 1 and len(book) == 2
    with pytest.raises(PeerBlacklisted):
        book.add_peer(PEER_A, [])
    assert AddressBook(tmp_path / "b.json").is_blacklisted(PEER_A)
    assert not book.unblacklist_peer(PEER_A).blacklisted
    with pytest.raises(PeerNotFound):
        book.unblacklist_peer(PrivateKey.generate().peer_id)


def test_metadata_limits_and_merge(tmp_path: Path) -> None:
    book = book_at(tmp_path / "b.json", max_metadata_size=10)
    assert metadata_size({"ab": "cdé"}) == 6
    with pytest.raises(ResourceLimitExceeded) as info:
        book.add_peer(PEER_A, [], {"key": "01234567"})
    assert info.value.limit == "max_metadata_size"
    book.add_peer(PEER_A, [], {"a": "1", "b": "2"})
    e = book.update_metadata(PEER_A, {"a": "", "c": "3"})
    assert dict(e.metadata) == {"b": "2", "c": "3"}
    with pytest.raises(ResourceLimitExceeded):
        book.update_metadata(PEER_A, {"long": "xxxxxxxxxx"})
    with pytest.raises(TypeError):
        book.add_peer(PEER_A, [], {"a": 1})  # type: ignore[dict-item]


def test_update_public_key_unknown_is_noop(tmp_path: Path) -> None:
    book = book_at(tmp_path / "b.json")
    assert not book.update_public_key(PEER_A, PUB_A)
    book.add_peer(PEER_A, [])
    mtime = (tmp_path / "b.json").stat().st_mtime_ns
    assert book.update_public_key(PEER_A, PUB_A)
    assert book.update_public_key(PEER_A, PUB_A)
    assert book.get_peer(PEER_A).public_key == PUB_A
    assert (tmp_path / "b.json").stat().st_mtime_ns >= mtime


def test_last_seen_is_batched(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    book = book_at(path)
    book.add_peer(PEER_A, [])
    book.update_last_seen(PEER_B)  # unknown: ignored
    book.update_last_seen(PEER_A)
    assert book.dirty
    assert json.loads(path.read_text())["peers"][str(PEER_A)]["last_seen"] == GO_ZERO_TIME
    book.close()
    assert not book.dirty
    assert AddressBook(path).get_peer(PEER_A).last_seen == T0
    book.close()
    with pytest.raises(AddressBookError):
        book.add_peer(PEER_B, [])


def test_missing_empty_and_null(tmp_path: Path) -> None:
    assert len(AddressBook(tmp_path / "missing" / "b.json")) == 0
    assert not (tmp_path / "missing" / "b.json").exists()
    for text in ("", "  \n", '{"version": 1, "peers": null}', '{"version": 7}'):
        p = tmp_path / "x.json"
        p.write_text(text)
        assert len(AddressBook(p)) == 0


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"peers": []}', '"x"', "{" * 5000])
def test_corrupt_file_raises_and_is_untouched(tmp_path: Path, text: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(AddressBookCorrupt) as info:
        AddressBook(path)
    assert info.value.path == path and info.value.quarantined_to is None
    assert "left untouched" in str(info.value)
    assert path.read_text() == text


def test_corrupt_file_quarantined_never_overwriting(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    moved: list[Path] = []
    for i in range(3):
        path.write_text(f"garbage {i}")
        book = AddressBook(path, on_corrupt="quarantine")
        assert len(book) == 0 and book.quarantined is not None
        moved.append(book.quarantined)
        assert not path.exists()
        book.add_peer(PEER_A, [])
        assert path.exists()
    assert len(set(moved)) == 3
    assert sorted(p.read_text() for p in moved) == ["garbage 0", "garbage 1", "garbage 2"]


def test_bad_entries_are_kept_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    doc = json.loads(GO_FILE)
    doc["peers"]["not-a-peer-id"] = {"peer_id": "not-a-peer-id"}
    doc["peers"][str(PEER_B)] = {"peer_id": str(PEER_B), "multiaddrs": "oops"}
    path.write_text(json.dumps(doc))
    book = AddressBook(path)
    assert [e.peer_id for e in book.list_all_peers()] == [PEER_A]
    assert set(book.unparsed_entries) == {"not-a-peer-id", str(PEER_B)}
    book.blacklist_peer(PEER_A)
    written = json.loads(path.read_text())["peers"]
    assert written["not-a-peer-id"] == {"peer_id": "not-a-peer-id"}
    assert written[str(PEER_B)] == {"peer_id": str(PEER_B), "multiaddrs": "oops"}
    assert written[str(PEER_A)]["blacklisted"] is True


def test_entry_validation(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    good = json.loads(GO_FILE)["peers"][str(PEER_A)]
    bad_variants = [
        {**good, "peer_id": str(PEER_B)},
        {**good, "public_key": "***"},
        {**good, "metadata": {"a": 1}},
        {**good, "blacklisted": "yes"},
        {**good, "created_at": "yesterday"},
        {**good, "created_at": "2026-01-01T00:00:00"},
        "string entry",
    ]
    for variant in bad_variants:
        path.write_text(json.dumps({"peers": {str(PEER_A): variant}}))
        book = AddressBook(path)
        assert len(book) == 0 and len(book.unparsed_entries) == 1, variant
    path.write_text(json.dumps({"peers": {str(PEER_A): {"multiaddrs": None}}}))
    e = AddressBook(path).get_peer(PEER_A)
    assert e.multiaddrs == () and e.created_at is None


def test_invalid_stored_multiaddr_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(GO_FILE.replace("/ip4/127.0.0.1/tcp/9000", "/bogus/1"))
    e = AddressBook(path).get_peer(PEER_A)
    assert e.multiaddrs == ("/bogus/1",) and e.addrs() == []


def test_two_writers_merge(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    one = AddressBook(path)
    two = AddressBook(path)
    one.add_peer(PEER_A, ["/ip4/1.1.1.1/tcp/1"])
    two.add_peer(PEER_B, ["/ip4/2.2.2.2/tcp/2"])  # sees the file changed: merges
    assert {e.peer_id for e in AddressBook(path).list_all_peers()} == {PEER_A, PEER_B}
    assert two.has_peer(PEER_A)
    one.remove_peer(PEER_A)  # merges in PEER_B, then removes PEER_A
    assert [e.peer_id for e in AddressBook(path).list_all_peers()] == [PEER_B]
    two.clear()
    one.add_peer(PEER_A, [])
    assert [e.peer_id for e in AddressBook(path).list_all_peers()] == [PEER_A]


def test_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    book = AddressBook(path, lock_timeout=0.05)
    fd = os.open(str(path) + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(AddressBookError, match="locked"):
            book.add_peer(PEER_A, [])
    finally:
        os.close(fd)
    book.add_peer(PEER_A, [])


def test_reload_discards_unsaved(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    book = book_at(path)
    book.add_peer(PEER_A, [])
    book.update_last_seen(PEER_A)
    book.reload()
    assert not book.dirty and book.get_peer(PEER_A).last_seen is None


def test_in_memory_book() -> None:
    book = AddressBook(None)
    book.add_peer(PEER_A, [])
    book.update_last_seen(PEER_A)
    book.flush()
    book.blacklist_peer(PEER_B)
    assert len(book) == 2 and "peers=2" in repr(book)
    book.clear()
    assert len(book) == 0


def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glueberry.peers.addressbook as ab

    monkeypatch.setattr(ab, "MAX_FILE_SIZE", 10)
    path = tmp_path / "b.json"
    path.write_text(GO_FILE)
    with pytest.raises(AddressBookCorrupt, match="more than"):
        AddressBook(path)


def test_entry_is_immutable() -> None:
    e = PeerEntry(peer_id=PEER_A)
    with pytest.raises(AttributeError):
        e.blacklisted = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        e.metadata["x"] = "y"  # type: ignore[index]
    assert PeerId.from_string(str(e.peer_id)) == PEER_A
