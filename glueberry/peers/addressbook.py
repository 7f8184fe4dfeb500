"""The persistent address book, in the Go library's JSON file format.

Reference: ``glueberry-go-v1.md`` §5 (Go ``pkg/addressbook``) and §3.7 (blacklisting).

File format (read and written compatibly with Go; ``json.MarshalIndent`` with two spaces,
peers sorted by ID, no trailing newline, ``<``, ``>`` and ``&`` escaped as Go does)::

    {"version": 1, "peers": {"<peer id>": {"peer_id", "public_key"?, "metadata"?,
     "last_seen", "blacklisted", "created_at", "updated_at", "multiaddrs"}}}

Times are RFC 3339 with up to nanoseconds (kept to microseconds here); Go's zero time
``0001-01-01T00:00:00Z`` means "never" and reads as ``None``.

Theory of operation
-------------------
The book is an in-memory map that is written to disk after every change except
:meth:`AddressBook.update_last_seen`, which only marks the book dirty (the Node calls
:meth:`AddressBook.flush` now and then, and :meth:`AddressBook.close` at shutdown). All
methods are synchronous, small and thread-safe; the Node calls them off its hot path.

Durability: a save writes a temporary file in the same directory, ``fsync``s it, renames it
over the book and ``fsync``s the directory, so a crash leaves either the old or the new book.

Concurrent writers: every load and save holds an exclusive ``flock`` on ``<path>.lock`` —
the same lock file and discipline as the Go library, so a Go node and a Python node can share
a book without torn writes. Unlike Go (last writer wins), a save first checks whether the file
changed since this process last read or wrote it; if so it re-reads it and merges: entries this
process changed or removed win, every other entry is taken from disk.

No data loss: an entry that cannot be parsed is kept verbatim and written back unchanged
(Go throws the whole file away for one bad entry, §9.2.16). A file that is not a JSON address
book at all raises :class:`AddressBookCorrupt` and is left untouched (``on_corrupt="raise"``,
the default), or is moved aside to a fresh ``<path>.corrupt-<time>`` name — never overwriting
anything — and the book starts empty (``on_corrupt="quarantine"``). Either way the message
says where the data is.

Blacklisting works for unknown peers too (an entry with no addresses is created), and a
blacklisted entry cannot be updated by :meth:`AddressBook.add_peer` (Go's rule).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from glueberry.errors import (
    ErrorCode,
    GlueberryError,
    PeerBlacklisted,
    PeerNotFound,
    ResourceLimitExceeded,
)
from glueberry.wire.identity import PeerId
from glueberry.wire.multiaddr import Multiaddr

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "GO_ZERO_TIME",
    "MAX_FILE_SIZE",
    "AddressBook",
    "AddressBookCorrupt",
    "AddressBookError",
    "PeerEntry",
    "metadata_size",
]

logger = logging.getLogger(__name__)

#: ``version`` written to the file (not checked on read, like Go).
FORMAT_VERSION: Final = 1
#: Go's ``time.Time{}`` in JSON: "never".
GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
#: Files larger than this are refused before reading (a book of ~100k peers fits).
MAX_FILE_SIZE: Final = 64 * 1024 * 1024

CorruptPolicy = Literal["raise", "quarantine"]


class AddressBookError(GlueberryError):
    """The address book could not be read, locked or written."""

    code = ErrorCode.UNKNOWN

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        #: The book's file.
        self.path = path


class AddressBookCorrupt(AddressBookError):
    """The book file is not a JSON address book. Nothing was overwritten.

    ``quarantined_to`` is where the file was moved (``on_corrupt="quarantine"``), or ``None``
    when it was left in place.
    """

    def __init__(
        self, message: str, *, path: Path | None = None, quarantined_to: Path | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.quarantined_to = quarantined_to


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerEntry:
    """One peer of the address book (an immutable snapshot)."""

    peer_id: PeerId
    """The peer."""
    multiaddrs: tuple[str, ...] = ()
    """Addresses as stored (strings that do not parse are kept, as Go does)."""
    public_key: bytes | None = None
    """The peer's Ed25519 public key, once ``prepare_streams`` recorded it."""
    metadata: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Free-form application metadata."""
    last_seen: datetime | None = None
    """Last successful connection, or ``None`` (Go's zero time)."""
    blacklisted: bool = False
    """Blacklisted peers are never dialled and their connections are refused."""
    created_at: datetime | None = None
    """When the entry was created."""
    updated_at: datetime | None = None
    """When the entry last changed."""

    def addrs(self) -> list[Multiaddr]:
        """The stored addresses that parse as multiaddrs."""
        out: list[Multiaddr] = []
        for text in self.multiaddrs:
            try:
                out.append(Multiaddr(text))
            except ValueError:
                continue
        return out


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Go's metadata size: the sum of the UTF-8 lengths of every key and value."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def _now() -> datetime:
    return datetime.now().astimezone()


# --- JSON codec ----------------------------------------------------------------------


def _format_time(dt: datetime | None) -> str:
    """RFC 3339 the way Go writes it: fraction without trailing zeros, ``Z`` for UTC."""
    if dt is None:
        return GO_ZERO_TIME
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    if dt.microsecond:
        text += "." + f"{dt.microsecond:06d}".rstrip("0")
    offset = dt.utcoffset()
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("time must be an RFC 3339 string")
    if value == GO_ZERO_TIME:
        return None
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("time must carry an offset")
    if dt.year == 1 and dt.month == 1 and dt.day == 1 and dt.time() == datetime.min.time():
        return None
    return dt


def _entry_to_json(entry: PeerEntry) -> dict[str, Any]:
    obj: dict[str, Any] = {"peer_id": str(entry.peer_id)}
    if entry.public_key:
        obj["public_key"] = base64.b64encode(entry.public_key).decode("ascii")
    if entry.metadata:
        obj["metadata"] = dict(entry.metadata)
    obj["last_seen"] = _format_time(entry.last_seen)
    obj["blacklisted"] = entry.blacklisted
    obj["created_at"] = _format_time(entry.created_at)
    obj["updated_at"] = _format_time(entry.updated_at)
    obj["multiaddrs"] = list(entry.multiaddrs)
    return obj


def _entry_from_json(key: str, obj: object) -> PeerEntry:
    """Parse one entry; raises ValueError (any kind of malformation)."""
    if not isinstance(obj, dict):
        raise ValueError("entry is not an object")
    peer_id = PeerId.from_string(key)
    field_id = obj.get("peer_id")
    if field_id is not None and (
        not isinstance(field_id, str) or PeerId.from_string(field_id) != peer_id
    ):
        raise ValueError("peer_id does not match its key")
    pk = obj.get("public_key")
    public_key: bytes | None = None
    if pk is not None:
        if not isinstance(pk, str):
            raise ValueError("public_key must be a base64 string")
        public_key = base64.b64decode(pk, validate=True) or None
    md = obj.get("metadata")
    metadata: dict[str, str] = {}
    if md is not None:
        if not isinstance(md, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in md.items()
        ):
            raise ValueError("metadata must map strings to strings")
        metadata = md
    addrs = obj.get("multiaddrs")
    if addrs is None:
        addrs = []
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise ValueError("multiaddrs must be a list of strings")
    blacklisted = obj.get("blacklisted", False)
    if not isinstance(blacklisted, bool):
        raise ValueError("blacklisted must be a boolean")
    return PeerEntry(
        peer_id=peer_id,
        multiaddrs=tuple(addrs),
        public_key=public_key,
        metadata=MappingProxyType(dict(metadata)),
        last_seen=_parse_time(obj.get("last_seen")),
        blacklisted=blacklisted,
        created_at=_parse_time(obj.get("created_at")),
        updated_at=_parse_time(obj.get("updated_at")),
    )


# Go's encoding/json escapes these even inside indented output.
_GO_ESCAPES: Final = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _dump(entries: Mapping[str, dict[str, Any]]) -> bytes:
    doc = {"version": FORMAT_VERSION, "peers": {k: entries[k] for k in sorted(entries)}}
    return json.dumps(doc, indent=2, ensure_ascii=False).translate(_GO_ESCAPES).encode()


class _Parsed:
    __slots__ = ("entries", "raw")

    def __init__(self) -> None:
        self.entries: dict[PeerId, PeerEntry] = {}
        self.raw: dict[str, Any] = {}


def _parse(data: bytes) -> _Parsed:
    """Parse a whole file; raises ValueError when it is not an address book at all."""
    out = _Parsed()
    if not data.strip():
        return out
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("top level is not a JSON object")
    peers = doc.get("peers")
    if peers is None:
        return out
    if not isinstance(peers, dict):
        raise ValueError('"peers" is not a JSON object')
    for key, obj in peers.items():
        try:
            entry = _entry_from_json(key, obj)
        except (ValueError, binascii.Error, GlueberryError) as exc:
            logger.warning("address book entry %r kept as is: %s", key[:80], exc)
            out.raw[key] = obj
            continue
        if entry.peer_id in out.entries:
            out.raw[key] = obj  # a second spelling of one peer ID: keep, do not use
            continue
        out.entries[entry.peer_id] = entry
    return out


# --- the book ------------------------------------------------------------------------


class AddressBook:
    """Known peers, persisted as JSON.

    Args:
        path: the book file, or ``None`` for a book that lives only in memory.
        on_corrupt: what to do with a file that is not an address book: ``"raise"``
            :class:`AddressBookCorrupt` (the file is left untouched), or ``"quarantine"`` it
            (moved aside, never overwriting anything) and start empty.
        max_metadata_size: bound on :func:`metadata_size` of any entry's metadata.
        lock_timeout: seconds to wait for the inter-process lock before
            :class:`AddressBookError`.
        now: wall-clock source for ``created_at`` / ``updated_at`` / ``last_seen``.

    Raises:
        AddressBookCorrupt: see ``on_corrupt``.
        AddressBookError: the file cannot be read or locked.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        on_corrupt: CorruptPolicy = "raise",
        max_metadata_size: int = 4096,
        lock_timeout: float = 10.0,
        now: Callable[[], datetime] = _now,
    ) -> None:
        if on_corrupt not in ("raise", "quarantine"):
            raise ValueError('on_corrupt must be "raise" or "quarantine"')
        self.path: Path | None = None if path is None else Path(path)
        self.max_metadata_size = max_metadata_size
        self._on_corrupt: CorruptPolicy = on_corrupt
        self._lock_timeout = lock_timeout
        self._now = now
        self._mutex = threading.RLock()
        self._entries: dict[PeerId, PeerEntry] = {}
        self._raw: dict[str, Any] = {}
        self._touched: set[PeerId] = set()
        self._removed: set[PeerId] = set()
        self._cleared = False
        self._dirty = False
        self._sig: tuple[int, int, int] | None = None
        self._closed = False
        #: Where a corrupt file was moved, when ``on_corrupt="quarantine"`` did so.
        self.quarantined: Path | None = None
        self._load()

    # --- file plumbing ---

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        assert self.path is not None
        lock_path = self.path.with_name(self.path.name + ".lock")
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                deadline = time.monotonic() + self._lock_timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise AddressBookError(
                                f"address book {self.path} is locked by another process"
                                f" ({lock_path})",
                                path=self.path,
                            ) from None
                        time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> _Parsed:
        """Read and parse the file (lock held). Raises AddressBookCorrupt or handles it."""
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_SIZE:
                    raise ValueError(f"file is {size} bytes, more than {MAX_FILE_SIZE}")
                data = f.read(MAX_FILE_SIZE + 1)
            return _parse(data)
        except FileNotFoundError:
            return _Parsed()
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            reason = f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            raise AddressBookError(
                f"cannot read address book {self.path}: {exc}", path=self.path
            ) from exc
        if self._on_corrupt == "raise":
            raise AddressBookCorrupt(
                f"address book {self.path} is corrupt ({reason}); it was left untouched:"
                " repair or move it, or use on_corrupt='quarantine'",
                path=self.path,
            )
        dest = self._quarantine()
        logger.warning(
            "address book %s is corrupt (%s); moved to %s, starting empty", self.path, reason, dest
        )
        self.quarantined = dest
        return _Parsed()

    def _quarantine(self) -> Path:
        """Move the file to a fresh name next to it, never replacing an existing file."""
        assert self.path is not None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1000):
            suffix = f".corrupt-{stamp}" + (f"-{n}" if n else "")
            dest = self.path.with_name(self.path.name + suffix)
            try:
                os.link(self.path, dest)  # fails if dest exists: nothing is overwritten
            except FileExistsError:
                continue
            except OSError as exc:
                raise AddressBookCorrupt(
                    f"address book {self.path} is corrupt and could not be moved aside"
                    f" ({exc}); it was left untouched",
                    path=self.path,
                ) from exc
            os.unlink(self.path)
            return dest
        raise AddressBookCorrupt(  # pragma: no cover
            f"address book {self.path} is corrupt; no free quarantine name", path=self.path
        )

    def _write(self, data: bytes) -> None:
        """Durably replace the file (lock held)."""
        assert self.path is not None
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=self.path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # not every platform can fsync a directory
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _load(self) -> None:
        if self.path is None:
            return
        with self._file_lock():
            parsed = self._read()
            self._sig = self._stat()
        self._entries = parsed.entries
        self._raw = parsed.raw

    def _save(self) -> None:
        """Write the book (merging concurrent changes made by other processes)."""
        if self.path is None:
            self._dirty = False
            return
        try:
            with self._file_lock():
                if self._stat() != self._sig:
                    self._merge(self._read())
                doc = {str(pid): _entry_to_json(e) for pid, e in self._entries.items()}
                for key, obj in self._raw.items():
                    doc.setdefault(key, obj)
                self._write(_dump(doc))
                self._sig = self._stat()
        except OSError as exc:
            raise AddressBookError(
                f"cannot write address book {self.path}: {exc}", path=self.path
            ) from exc
        self._touched.clear()
        self._removed.clear()
        self._cleared = False
        self._dirty = False

    def _merge(self, disk: _Parsed) -> None:
        if self._cleared:
            disk = _Parsed()
        merged = dict(disk.entries)
        for pid in self._removed:
            merged.pop(pid, None)
        for pid in self._touched:
            if pid in self._entries:
                merged[pid] = self._entries[pid]
        self._entries = merged
        self._raw = {**disk.raw} if not self._cleared else {}

    def _changed(self, pid: PeerId) -> None:
        self._touched.add(pid)
        self._removed.discard(pid)
        self._save()

    def _check_open(self) -> None:
        if self._closed:
            raise AddressBookError("address book is closed", path=self.path)

    # --- queries ---

    def get_peer(self, peer_id: PeerId) -> PeerEntry:
        """The entry of ``peer_id`` (blacklisted or not). Raises :class:`PeerNotFound`."""
        entry = self._entries.get(peer_id)
        if entry is None:
            raise PeerNotFound(f"peer {peer_id} not found in address book", peer_id=peer_id)
        return entry

    def has_peer(self, peer_id: PeerId) -> bool:
        return peer_id in self._entries

    def is_blacklisted(self, peer_id: PeerId) -> bool:
        entry = self._entries.get(peer_id)
        return entry is not None and entry.blacklisted

    def list_peers(self) -> list[PeerEntry]:
        """Entries that are not blacklisted, sorted by peer ID."""
        return [e for e in self.list_all_peers() if not e.blacklisted]

    def list_all_peers(self) -> list[PeerEntry]:
        """Every entry, sorted by peer ID."""
        return sorted(self._entries.values(), key=lambda e: str(e.peer_id))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def count_active(self) -> int:
        """Entries that are not blacklisted."""
        return sum(1 for e in self._entries.values() if not e.blacklisted)

    @property
    def dirty(self) -> bool:
        """Changes (``last_seen``) not yet written."""
        return self._dirty

    @property
    def unparsed_entries(self) -> Mapping[str, Any]:
        """Entries of the file that could not be parsed; they are written back unchanged."""
        return MappingProxyType(self._raw)

    # --- changes (each saved at once, except last_seen) ---

    def _check_metadata(self, metadata: Mapping[str, str]) -> None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map str to str")
        size = metadata_size(metadata)
        if size > self.max_metadata_size:
            raise ResourceLimitExceeded(
                f"metadata is {size} bytes, more than the limit of {self.max_metadata_size}",
                limit="max_metadata_size",
            )

    def add_peer(
        self,
        peer_id: PeerId,
        addrs: Iterable[Multiaddr | str],
        metadata: Mapping[str, str] | None = None,
    ) -> PeerEntry:
        """Add a peer, or update its addresses (replaced) and metadata (replaced if given).

        Raises:
            PeerBlacklisted: the peer is blacklisted.
            ResourceLimitExceeded: the metadata is larger than ``max_metadata_size``.
            ValueError: an address does not parse.
        """
        texts = tuple(str(a if isinstance(a, Multiaddr) else Multiaddr(a)) for a in addrs)
        if metadata is not None:
            self._check_metadata(metadata)
        with self._mutex:
            self._check_open()
            now = self._now()
            old = self._entries.get(peer_id)
            if old is not None and old.blacklisted:
                raise PeerBlacklisted(f"cannot update blacklisted peer {peer_id}", peer_id=peer_id)
            md = MappingProxyType(dict(metadata)) if metadata is not None else None
            if old is None:
                entry = PeerEntry(
                    peer_id=peer_id,
                    multiaddrs=texts,
                    metadata=md if md is not None else MappingProxyType({}),
                    created_at=now,
                    updated_at=now,
                )
            else:
                entry = dataclasses.replace(
                    old,
                    multiaddrs=texts,
                    metadata=md if md is not None else old.metadata,
                    updated_at=now,
                )
            self._entries[peer_id] = entry
            self._changed(peer_id)
            return entry

    def remove_peer(self, peer_id: PeerId) -> None:
        """Forget a peer. Raises :class:`PeerNotFound`."""
        with self._mutex:
            self._check_open()
            if self._entries.pop(peer_id, None) is None:
                raise PeerNotFound(f"peer {peer_id} not found in address book", peer_id=peer_id)
            self._touched.discard(peer_id)
            self._removed.add(peer_id)
            self._save()

    def blacklist_peer(self, peer_id: PeerId) -> PeerEntry:
        """Blacklist a peer, creating an entry for it if it is unknown."""
        with self._mutex:
            self._check_open()
            now = self._now()
            old = self._entries.get(peer_id)
            if old is None:
                entry = PeerEntry(peer_id=peer_id, blacklisted=True, created_at=now, updated_at=now)
            else:
                entry = dataclasses.replace(old, blacklisted=True, updated_at=now)
            self._entries[peer_id] = entry
            self._changed(peer_id)
            return entry

    def unblacklist_peer(self, peer_id: PeerId) -> PeerEntry:
        """Clear the blacklist flag (nothing is dialled). Raises :class:`PeerNotFound`."""
        with self._mutex:
            self._check_open()
            entry = dataclasses.replace(
                self.get_peer(peer_id), blacklisted=False, updated_at=self._now()
            )
            self._entries[peer_id] = entry
            self._changed(peer_id)
            return entry

    def update_public_key(self, peer_id: PeerId, public_key: bytes) -> bool:
        """Record the peer's Ed25519 key; a no-op (``False``) for unknown peers, as in Go."""
        with self._mutex:
            self._check_open()
            old = self._entries.get(peer_id)
            if old is None:
                return False
            if old.public_key == bytes(public_key):
                return True
            self._entries[peer_id] = dataclasses.replace(
                old, public_key=bytes(public_key), updated_at=self._now()
            )
            self._changed(peer_id)
            return True

    def update_metadata(self, peer_id: PeerId, changes: Mapping[str, str]) -> PeerEntry:
        """Merge ``changes`` into the peer's metadata; an empty value deletes its key.

        Raises:
            PeerNotFound: unknown peer.
            ResourceLimitExceeded: the result would exceed ``max_metadata_size``.
        """
        with self._mutex:
            self._check_open()
            old = self.get_peer(peer_id)
            merged = dict(old.metadata)
            for k, v in changes.items():
                if v == "":
                    merged.pop(k, None)
                else:
                    merged[k] = v
            self._check_metadata(merged)
            entry = dataclasses.replace(
                old, metadata=MappingProxyType(merged), updated_at=self._now()
            )
            self._entries[peer_id] = entry
            self._changed(peer_id)
            return entry

    def update_last_seen(self, peer_id: PeerId, when: datetime | None = None) -> None:
        """Record a successful connection. Not saved until :meth:`flush` (batched, as in Go)."""
        with self._mutex:
            self._check_open()
            old = self._entries.get(peer_id)
            if old is None:
                return
            self._entries[peer_id] = dataclasses.replace(
                old, last_seen=when if when is not None else self._now()
            )
            self._touched.add(peer_id)
            self._dirty = True

    def clear(self) -> None:
        """Remove every entry (including unparsed ones) and save."""
        with self._mutex:
            self._check_open()
            self._entries.clear()
            self._raw.clear()
            self._touched.clear()
            self._removed.clear()
            self._cleared = True
            self._save()

    def reload(self) -> None:
        """Discard unsaved changes and re-read the file."""
        with self._mutex:
            self._check_open()
            self._touched.clear()
            self._removed.clear()
            self._cleared = False
            self._dirty = False
            self._load()

    def flush(self) -> None:
        """Write pending ``last_seen`` changes, if any."""
        with self._mutex:
            if self._dirty and not self._closed:
                self._save()

    def close(self) -> None:
        """Flush and refuse further changes. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self.flush()
            self._closed = True

    def __repr__(self) -> str:
        return f"AddressBook({self.path}, peers={len(self._entries)})"
