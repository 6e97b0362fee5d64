"""Copy a model cache from one volume to another and prove the copy: every file, symlink, empty
file and directory, with its mode, compared against the source's sha256 manifest after the data is
on the destination's disk. Python 3 standard library only: it runs in the training image.

    python3 cache_copy.py send    --root SRC --listen HOST:PORT --token-file F
    python3 cache_copy.py receive --root DST --source HOST:PORT --token-file F [--streams N]
    python3 cache_copy.py local   --from SRC --to DST [--streams N]
    python3 cache_copy.py verify  --root DST (--source HOST:PORT --token-file F | --from SRC)
    python3 cache_copy.py refresh --cache C --durable D --ready FILE --warmup ID [--wait-limit S]
    python3 cache_copy.py restore --cache C --durable D --ready FILE

`send` serves SRC read-only until a receiver says it is done. `receive` and `local` make DST an
exact copy of SRC and exit 0 only once it is verified; `verify` checks DST without changing it.

How a copy works. Files are cut into segments of 64 MiB; each segment's sha256 is the manifest's
unit, computed by the sender as it reads (a file's digest is the list of its segments' digests).
Segments travel over N parallel streams (TCP connections, or threads for `local`), uncompressed
(model weights do not compress). Each large segment is written, fsync'ed, dropped from the page
cache and read back from the device, and its sha256 compared with the sender's; small files are
checked the same way after one sync at the end. Symlinks stay links with their targets as written
(Hugging Face's relative snapshots/ -> blobs/ links), modes and mtimes are kept, and anything in
DST that is not in SRC is removed, so DST ends equal to SRC.

Resume. A re-run after a failure sends only what is missing: a destination segment that already
holds the sender's bytes (both sides hash it locally, no data crosses the network; the destination's
read back from the device like a written one) is kept.

Auth. Every connection starts with a challenge: the receiver proves it holds the token (HMAC-SHA256
of a fresh nonce), so the token never crosses the network; a wrong token is refused before the
receiver touches DST.

The durable copy (cache.durableCopy). `refresh` waits until the warm-up has finished (FILE, the
warm-up's marker, holds ID; at most --wait-limit seconds), then makes D/tree/M a verified copy of
C/M for each model directory M the warm-up's markers (FILE's directory) name, and records the
models and the markers in D/refreshed.json. Nothing else of the cache is copied (datasets and
outputs training writes stay out). Until the new record is written the last one stays valid: a
model it lists is withdrawn from it, alone, before its copy is rewritten; directories no marker
names any more are removed after the new record is written. The record holds each model's shape
(`shape`); one refresh writes at a time (D/.lock).
`restore` runs before the warm-up in the training pod: into a cache that holds none of the
recorded models and no markers (a claim re-created after node loss) it copies each model into
C/.mlcache/restoring, verifies it there (against the durable copy, then its recorded shape) and
renames it into place, then writes the markers, the
warm-up's own last. A cache that holds any of them is left alone (an interrupted warm-up resumes
from what it has). `restore` always exits 0: a restore that fails removes what it wrote, and the
warm-up then downloads, as without a durable copy.

Output: progress on stderr every --progress-every seconds (bytes done/total, rate, ETA); one JSON
line on stdout at the end: files, bytes, bytesSent, bytesKept, seconds, verified.
Exit status: 0 copied and verified; 1 verification failed (the line names the first bad path);
2 bad usage or a source that cannot be copied; 3 the sender is unreachable, refused the token, or
could not read a source file (it changed under the copy: both ends say which);
4 (refresh) the warm-up did not finish within --wait-limit.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import queue
import secrets
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

SEGMENT = 64 << 20  # the unit of transfer, verification and resume
CHUNK = 4 << 20  # one read or send
SMALL = 1 << 20  # files below this are synced and checked once, at the end, not one fsync each
# The file system's own entry at a volume's root (ext4's mkfs makes it, owned by root: Rook-Ceph volumes
# have one; mode 0700, or 2770 with the fsGroup once kubelet has applied it): not part of the cache, so
# never copied, compared or removed.
FILESYSTEM_ENTRY = "lost+found"
PROTOCOL = "mlcache-cache-copy/1"
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_PEER, EXIT_WAITED = 0, 1, 2, 3, 4


class CopyError(Exception):
    """Input or a source that cannot be copied: exit 2, one line."""


class PeerError(Exception):
    """The sender is unreachable, refused the token or broke off: exit 3, one line."""


class WaitedTooLong(Exception):
    """The warm-up the refresh follows did not finish in time."""


class _ReceiverGone(Exception):
    """The receiver's end of a stream closed: it resumes on a new connection."""


class Mismatch(Exception):
    """The destination does not hold what the source holds: exit 1, one line."""


# --- the manifest


@dataclass(frozen=True)
class Entry:
    path: str  # relative, POSIX
    type: str  # dir | file | link
    mode: int
    size: int = 0
    mtime_ns: int = 0
    target: str = ""  # a link's target, as written

    def shape(self) -> tuple[str, int, int, str]:
        """What a copy must match without reading data: type, mode, size, link target."""
        return (self.type, self.mode, self.size, self.target)

    def segments(self, segment: int = SEGMENT) -> list[tuple[int, int]]:
        if self.type != "file" or self.size == 0:
            return []
        return [(offset, min(segment, self.size - offset)) for offset in range(0, self.size, segment)]


def scan(root: Path) -> list[Entry]:
    """Every entry under root, parents before children; links are not followed."""
    if not root.is_dir():
        raise CopyError(f"{root}: not a directory")
    entries: list[Entry] = []

    def walk(directory: Path, relative: PurePosixPath) -> None:
        with os.scandir(directory) as items:
            for item in sorted(items, key=lambda i: i.name):
                if not relative.parts and item.name == FILESYSTEM_ENTRY:
                    continue
                path = relative / item.name
                info = item.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    entries.append(Entry(str(path), "link", 0o777, mtime_ns=info.st_mtime_ns, target=os.readlink(item.path)))
                elif stat.S_ISDIR(info.st_mode):
                    entries.append(Entry(str(path), "dir", stat.S_IMODE(info.st_mode)))
                    walk(Path(item.path), path)
                elif stat.S_ISREG(info.st_mode):
                    entries.append(Entry(str(path), "file", stat.S_IMODE(info.st_mode), info.st_size, info.st_mtime_ns))
                else:
                    raise CopyError(f"{item.path}: not a file, directory or symlink; a cache holds none of those")

    walk(root, PurePosixPath())
    return entries


def checked_manifest(raw: list[dict]) -> list[Entry]:
    """The sender's manifest, refused unless every path stays inside DST and every parent is a directory
    of the manifest (so no write can pass through a link)."""
    entries = [Entry(**item) for item in raw]
    dirs = {""}
    for entry in entries:
        path = PurePosixPath(entry.path)
        if path.is_absolute() or ".." in path.parts or not path.parts or str(path) != entry.path:
            raise PeerError(f"the sender's manifest names an unsafe path: {entry.path!r}")
        parent = "" if path.parent == PurePosixPath(".") else str(path.parent)
        if parent not in dirs:
            raise PeerError(f"the sender's manifest lists {entry.path!r} before its directory")
        if entry.type == "dir":
            dirs.add(entry.path)
        elif entry.type not in ("file", "link"):
            raise PeerError(f"the sender's manifest has an unknown entry type {entry.type!r}")
    return entries


def read_range(path: Path, offset: int, length: int, sink: Callable[[memoryview], None] | None = None) -> str:
    """sha256 of a file's range, each chunk handed to `sink` on the way."""
    digest = hashlib.sha256()
    buffer = bytearray(min(CHUNK, length) or 1)
    with open(path, "rb", buffering=0) as file:
        file.seek(offset)
        left = length
        while left:
            view = memoryview(buffer)[: min(len(buffer), left)]
            got = file.readinto(view)
            if not got:
                raise CopyError(f"{path}: shorter than its size ({offset + length - left} of {offset + length} bytes)")
            digest.update(view[:got])
            if sink:
                sink(view[:got])
            left -= got
    return digest.hexdigest()


def device_digest(path: Path, offset: int, length: int, synced: bool = False) -> str:
    """sha256 of what the device holds for a range: synced (unless the caller synced everything
    already), dropped from the page cache, read back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if not synced:
            os.fdatasync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return read_range(path, offset, length)


# --- sources: the local tree, or a sender over the network


class LocalSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest(self) -> list[Entry]:
        return scan(self.root)

    def fetch(self, path: str, offset: int, length: int, write: Callable[[memoryview], None]) -> str:
        return read_range(self.root / path, offset, length, write)

    def digest(self, path: str, offset: int, length: int) -> str:
        return read_range(self.root / path, offset, length)

    def close(self, done: bool = False) -> None:
        pass


def _send_frame(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        got = sock.recv(size - len(data))
        if not got:
            raise PeerError("the sender closed the connection")
        data += got
    return bytes(data)


def _recv_frame(sock: socket.socket, limit: int = 256 << 20) -> dict:
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    if size > limit:
        raise PeerError(f"a message of {size} bytes is over the limit")
    return json.loads(_recv_exact(sock, size))


def _proof(token: bytes, nonce: str) -> str:
    return hmac.new(token, f"{PROTOCOL} {nonce}".encode(), hashlib.sha256).hexdigest()


class RemoteSource:
    """One connection (one stream) to a sender."""

    def __init__(self, address: tuple[str, int], token: bytes, timeout: float = 60) -> None:
        try:
            self.sock = socket.create_connection(address, timeout=timeout)
        except OSError as err:
            raise PeerError(f"cannot reach the sender at {address[0]}:{address[1]}: {err.strerror or err}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            hello = _recv_frame(self.sock, 4096)
            if hello.get("hello") != PROTOCOL:
                raise PeerError(f"{address[0]}:{address[1]} does not speak {PROTOCOL}")
            _send_frame(self.sock, {"proof": _proof(token, hello["nonce"])})
            answer = _recv_frame(self.sock, 4096)
        except (OSError, ValueError, KeyError) as err:
            raise PeerError(f"the sender at {address[0]}:{address[1]} broke off the handshake: {err}") from None
        if not answer.get("ok"):
            raise PeerError(f"the sender refused the connection: {answer.get('error', 'no reason given')}")

    def _ask(self, message: dict) -> dict:
        try:
            _send_frame(self.sock, message)
            answer = _recv_frame(self.sock)
        except OSError as err:
            raise PeerError(f"the connection to the sender failed: {err}") from None
        if "error" in answer:
            raise PeerError(f"the sender: {answer['error']}")
        return answer

    def manifest(self) -> list[Entry]:
        return checked_manifest(self._ask({"op": "manifest"})["entries"])

    def fetch(self, path: str, offset: int, length: int, write: Callable[[memoryview], None]) -> str:
        self._ask({"op": "fetch", "path": path, "offset": offset, "length": length})
        buffer = bytearray(min(CHUNK, length) or 1)
        left = length
        try:
            while left:
                got = self.sock.recv_into(buffer, min(len(buffer), left))
                if not got:
                    raise PeerError(
                        f"the sender closed the connection in the middle of a segment of {path} (the network failed, or "
                        "the sender could not read the file: its log says which)"
                    )
                write(memoryview(buffer)[:got])
                left -= got
            answer = _recv_frame(self.sock)
        except OSError as err:
            raise PeerError(f"the connection to the sender failed: {err}") from None
        if "error" in answer:  # the file changed while the sender read it
            raise PeerError(f"the sender: {answer['error']}")
        return answer["sha256"]

    def digest(self, path: str, offset: int, length: int) -> str:
        return self._ask({"op": "digest", "path": path, "offset": offset, "length": length})["sha256"]

    def close(self, done: bool = False) -> None:
        try:
            if done:
                self._ask({"op": "done"})
        finally:
            self.sock.close()


# --- the sender


def serve(root: Path, address: tuple[str, int], token: bytes, log: Callable[[str], None]) -> dict:
    """Serve `root` until a receiver says it is done; returns what was sent."""
    entries = scan(root)
    files = {e.path: e for e in entries if e.type == "file"}
    sent = {"bytesSent": 0, "connections": 0, "refused": 0}
    lock = threading.Lock()
    finished = threading.Event()

    def changed(entry: Entry) -> str | None:
        """How a file differs from the manifest's entry (size, modification time), None if it does not.
        Opened, not only looked up: a file that cannot be read raises here, before anything is sent."""
        with open(root / entry.path, "rb") as file:
            now = os.fstat(file.fileno())
        if now.st_size != entry.size:
            return f"it changed under the copy ({now.st_size} bytes now, {entry.size} when the copy began)"
        if now.st_mtime_ns != entry.mtime_ns:
            return "it changed under the copy (modified since the copy began, same size)"
        return None

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nonce = secrets.token_hex(16)
            try:
                _send_frame(sock, {"hello": PROTOCOL, "nonce": nonce})
                proof = _recv_frame(sock, 4096).get("proof", "")
                if not hmac.compare_digest(str(proof), _proof(token, nonce)):
                    _send_frame(sock, {"error": "wrong token"})
                    with lock:
                        sent["refused"] += 1
                    log(f"refused a connection from {self.client_address[0]}: wrong token")
                    return
                _send_frame(sock, {"ok": True})
                with lock:
                    sent["connections"] += 1
                while self.answer(sock, _recv_frame(sock, 1 << 20)):
                    pass
            except (OSError, ValueError, PeerError):
                return  # the receiver went away; it resumes on a new connection

        def cannot_read(self, sock: socket.socket | None, entry: Entry, err: OSError | CopyError | str) -> bool:
            """One line in the sender's log, and in the receiver's when it is still listening for a frame."""
            own_path = f"{root / entry.path}: "  # CopyError's own prefix: the line names the path once
            reason = (err.strerror or str(err)) if isinstance(err, OSError) else str(err).removeprefix(own_path)
            log(f"cannot serve {entry.path}: {reason}")
            if sock is not None:
                _send_frame(sock, {"error": f"cannot read {entry.path}: {reason}"})
            return False

        def unservable(self, sock: socket.socket, entry: Entry) -> bool:
            """The file is not as the manifest has it, or cannot be opened: the reason said, True."""
            try:
                why: OSError | str | None = changed(entry)
            except OSError as err:
                why = err
            if why:
                self.cannot_read(sock, entry, why)
            return bool(why)

        def answer(self, sock: socket.socket, request: dict) -> bool:
            op = request.get("op")
            if op == "manifest":
                _send_frame(sock, {"entries": [e.__dict__ for e in entries]})
                return True
            if op == "done":
                _send_frame(sock, {"ok": True})
                finished.set()
                return False
            entry = files.get(str(request.get("path")))
            offset, length = request.get("offset"), request.get("length")
            if (
                op not in ("fetch", "digest")
                or entry is None
                or not isinstance(offset, int)
                or not isinstance(length, int)
                or offset < 0
                or length < 0
                or offset + length > entry.size
            ):
                _send_frame(sock, {"error": f"bad request {json.dumps(request)[:200]}"})
                return False
            path = root / entry.path
            # Checked before the first byte is sent: else the receiver gets a stream cut short, not the reason.
            if self.unservable(sock, entry):
                return False
            if op == "digest":
                try:
                    digest = read_range(path, offset, length)
                except (OSError, CopyError) as err:
                    return self.cannot_read(sock, entry, err)
            else:
                _send_frame(sock, {"ok": True, "length": length})

                def send(data: memoryview) -> None:
                    try:
                        sock.sendall(data)
                    except OSError as err:
                        raise _ReceiverGone from err

                try:
                    digest = read_range(path, offset, length, send)
                except _ReceiverGone:
                    return False  # it resumes on a new connection
                except (OSError, CopyError) as err:  # mid-segment: the receiver sees the stream end, the log why
                    self.cannot_read(None, entry, err)
                    return False
            if self.unservable(sock, entry):  # written to while it was read: the digest is of neither version
                return False
            _send_frame(sock, {"sha256": digest})
            if op == "fetch":
                with lock:
                    sent["bytesSent"] += length
            return True

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    try:
        server = Server(address, Handler)
    except OSError as err:
        raise CopyError(f"cannot listen on {address[0]}:{address[1]}: {err.strerror or err}") from None
    with server:
        log(
            f"serving {root} ({sum(e.size for e in files.values())} bytes in {len(entries)} entries) on {address[0]}:{address[1]}"
        )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        finished.wait()
        server.shutdown()
    return sent


# --- the receiver


@dataclass
class Progress:
    total: int
    log: Callable[[str], None]
    every: float
    done: int = 0
    sent: int = 0
    kept: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, size: int, sent: bool) -> None:
        with self.lock:
            self.done += size
            if sent:
                self.sent += size
            else:
                self.kept += size

    def line(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / seconds
        eta = f"{(self.total - self.done) / rate:.0f} s" if rate > 0 else "unknown"
        share = 100 * self.done / self.total if self.total else 100
        amount, unit = size_unit(self.total)
        return (
            f"{amount(self.done)} of {amount(self.total)} {unit} ({share:.0f}%), {rate / 1e6:.0f} MB/s, "
            f"ETA {eta}; sent {amount(self.sent)} {unit}, kept {amount(self.kept)} {unit} already there"
        )

    def report_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            self.log(self.line())


def size_unit(total: int) -> tuple[Callable[[int], str], str]:
    """How to write sizes beside a total of `total` bytes, and their unit: the decimal unit it reads
    best in (a model cache: GB; a small tree: MB or kB; bytes counted whole), so a progress line
    never reads `0.00 of 0.00 GB`."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if total >= scale:
            return (lambda size, scale=scale: f"{size / scale:.2f}"), unit
    return str, "bytes"


class _Writer:
    """Writes a segment at its offset; never through a link."""

    def __init__(self, path: Path, offset: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        self.position = offset

    def __call__(self, data: memoryview) -> None:
        while data:
            written = os.pwrite(self.fd, data, self.position)
            self.position += written
            data = data[written:]

    def close(self) -> None:
        os.close(self.fd)


def prepare(root: Path, entries: list[Entry]) -> set[str]:
    """Make DST's shape SRC's: remove what SRC lacks (or has as another type), create directories,
    links and files at their sizes. Returns the files that were there already at the right size,
    whose segments may already hold the right bytes."""
    wanted = {e.path: e for e in entries}
    root.mkdir(parents=True, exist_ok=True)
    for directory, dirnames, _ in os.walk(root):  # an earlier run may have left read-only directories
        if directory == str(root):
            # A volume's root belongs to root (the pod writes through fsGroup): its mode is not ours to change.
            dirnames[:] = [name for name in dirnames if name != FILESYSTEM_ENTRY]
        else:
            os.chmod(directory, stat.S_IMODE(os.lstat(directory).st_mode) | 0o700)
    for directory, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            if relative.partition("/")[0] == FILESYSTEM_ENTRY:
                continue
            entry = wanted.get(relative)
            info = path.lstat()
            kind = "link" if stat.S_ISLNK(info.st_mode) else "dir" if stat.S_ISDIR(info.st_mode) else "file"
            if entry is None or entry.type != kind or (kind == "link" and os.readlink(path) != entry.target):
                if kind == "dir":
                    path.chmod(0o700)
                    os.rmdir(path)  # bottom-up: its contents are already gone
                else:
                    path.unlink()
    present = set()
    for entry in entries:
        path = root / entry.path
        if entry.type == "dir":
            path.mkdir(mode=0o700, exist_ok=True)
            path.chmod(0o700 | entry.mode)  # writable until the end
        elif entry.type == "link":
            if not path.is_symlink():
                os.symlink(entry.target, path)
        else:
            if path.exists():
                path.chmod(0o600 | entry.mode)
                if path.stat().st_size == entry.size:
                    present.add(entry.path)
            with open(path, "ab"):
                pass
            os.truncate(path, entry.size)
    return present


def copy_tree(sources: list, root: Path, log: Callable[[str], None], progress_every: float = 5.0, segment: int = SEGMENT) -> dict:
    """Make `root` an exact, verified copy of what the sources (one per stream) serve."""
    started = time.monotonic()
    entries = sources[0].manifest()
    present = prepare(root, entries)
    files = [e for e in entries if e.type == "file"]
    total = sum(e.size for e in files)
    work: queue.Queue = queue.Queue()
    for entry in sorted(files, key=lambda e: -e.size):  # the big files first: the streams end together
        for offset, length in entry.segments(segment):
            work.put((entry, offset, length))
    small: list[tuple[Entry, int, int, str]] = []
    progress = Progress(total, log, progress_every)
    amount, unit = size_unit(total)
    log(f"copying {amount(total)} {unit} in {len(files)} files over {len(sources)} streams")
    errors: list[BaseException] = []
    lock = threading.Lock()

    def stream(source) -> None:
        while not errors:
            try:
                entry, offset, length = work.get_nowait()
            except queue.Empty:
                return
            path = root / entry.path
            try:
                if entry.path in present:
                    expected = source.digest(entry.path, offset, length)
                    # Kept only as the device holds it (not as an earlier run left it in the page cache).
                    if device_digest(path, offset, length) == expected:
                        progress.add(length, sent=False)
                        continue
                write = _Writer(path, offset)
                try:
                    expected = source.fetch(entry.path, offset, length, write)
                finally:
                    write.close()
                if entry.size < SMALL:
                    with lock:
                        small.append((entry, offset, length, expected))
                elif device_digest(path, offset, length) != expected:
                    raise Mismatch(f"{entry.path}: bytes {offset}-{offset + length} differ from the source after writing")
                progress.add(length, sent=True)
            except BaseException as err:
                errors.append(err)

    stop = threading.Event()
    reporter = threading.Thread(target=progress.report_until, args=(stop,), daemon=True)
    reporter.start()
    threads = [threading.Thread(target=stream, args=(source,)) for source in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    if errors:
        raise errors[0]
    os.sync()
    for entry, offset, length, expected in small:
        if device_digest(root / entry.path, offset, length, synced=True) != expected:
            raise Mismatch(f"{entry.path}: bytes {offset}-{offset + length} differ from the source after writing")
    finish(root, entries)
    mismatch = compare_shape(root, entries)
    if mismatch:
        raise Mismatch(mismatch)
    log(progress.line())
    return {
        "files": len(files),
        "bytes": total,
        "bytesSent": progress.sent,
        "bytesKept": progress.kept,
        "seconds": round(time.monotonic() - started, 3),
        "verified": True,
    }


def finish(root: Path, entries: list[Entry]) -> None:
    """Modes and mtimes as in SRC, directories last and deepest first (a read-only directory is
    finished only once nothing more goes into it)."""
    for entry in entries:
        path = root / entry.path
        if entry.type == "file":
            path.chmod(entry.mode)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        elif entry.type == "link":
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    for entry in sorted((e for e in entries if e.type == "dir"), key=lambda e: -e.path.count("/")):
        (root / entry.path).chmod(entry.mode)


def compare_shape(root: Path, entries: list[Entry]) -> str | None:
    """The first difference between DST's entries (types, modes, sizes, link targets) and the manifest's."""
    try:
        here = {e.path: e for e in scan(root)}
    except CopyError as err:
        return str(err)
    for entry in entries:
        found = here.pop(entry.path, None)
        if found is None:
            return f"{entry.path}: missing"
        if found.shape() != entry.shape():
            here_is = f"{found.type} mode {found.mode:o} size {found.size}"
            return f"{entry.path}: is {here_is}, the source has {entry.type} mode {entry.mode:o} size {entry.size}"
    if here:
        return f"{sorted(here)[0]}: not in the source"
    return None


def verify_tree(source, root: Path, log: Callable[[str], None], segment: int = SEGMENT) -> dict:
    """Check DST against the source without changing it: shape, then every segment's sha256 as read
    back from the device."""
    started = time.monotonic()
    entries = source.manifest()
    mismatch = compare_shape(root, entries)
    if mismatch:
        raise Mismatch(mismatch)
    files = [e for e in entries if e.type == "file"]
    for entry in files:
        for offset, length in entry.segments(segment):
            if device_digest(root / entry.path, offset, length) != source.digest(entry.path, offset, length):
                raise Mismatch(f"{entry.path}: bytes {offset}-{offset + length} differ from the source")
    log(f"verified {len(files)} files")
    return {
        "files": len(files),
        "bytes": sum(e.size for e in files),
        "seconds": round(time.monotonic() - started, 3),
        "verified": True,
    }


# --- the durable copy


DURABLE_TREE = "tree"
DURABLE_RECORD = "refreshed.json"
DURABLE_LOCK = ".lock"
MARKER_SUFFIX = ".done"
HF_REPOSITORY_PREFIXES = ("models--", "datasets--", "spaces--")
RESTORING = ".mlcache/restoring"  # where a restore stages each model until it is verified


def model_dir(recorded: str, cache: Path) -> str:
    """The directory, relative to the cache, that holds the model a warm-up marker names: a Hugging
    Face repository (models--org--name: blobs, refs, snapshots) or a ModelScope model directory."""
    path = PurePosixPath(recorded)
    try:
        relative = path.relative_to(PurePosixPath(cache.as_posix()))
    except ValueError:
        raise CopyError(f"the model at {recorded} is outside the cache {cache}: the durable copy cannot hold it") from None
    parts = relative.parts
    for index in range(1, len(parts) - 1):
        # .../models--org--name/snapshots/<revision>: the repository (blobs, refs) holds the model
        if parts[index] == "snapshots" and parts[index - 1].startswith(HF_REPOSITORY_PREFIXES):
            parts = parts[:index]
            break
    if not parts or ".." in parts or not (cache / PurePosixPath(*parts)).is_dir():
        raise CopyError(f"the model at {recorded} is not a directory inside the cache {cache}")
    return PurePosixPath(*parts).as_posix()


def warmed_models(cache: Path, markers: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The model directories the warm-up's markers name, the markers themselves (name -> text), and
    the model directory each model marker names (name -> directory)."""
    texts = {p.name: p.read_text() for p in sorted(markers.iterdir()) if p.is_file() and not p.name.endswith(".tmp")}
    named = {}
    for name, text in texts.items():
        if name.endswith(MARKER_SUFFIX):
            try:
                recorded = json.loads(text)["path"]
            except (ValueError, KeyError, TypeError):
                raise CopyError(f"{markers / name}: not a warm-up marker (no path)") from None
            named[name] = model_dir(str(recorded), cache)
    # A directory inside another one is copied with it.
    outer = [m for m in sorted(set(named.values())) if not any(m.startswith(o + "/") for o in named.values())]
    owners = {name: next(o for o in outer if overlaps(model, o)) for name, model in named.items()}
    return outer, texts, owners


def overlaps(one: str, other: str) -> bool:
    """One directory is the other or inside it (either way round)."""
    return one == other or one.startswith(other + "/") or other.startswith(one + "/")


def read_record(durable: Path) -> dict | None:
    """The last verified refresh (None: none, or a record this version cannot trust)."""
    try:
        record = json.loads((durable / DURABLE_RECORD).read_text())
        parts, markers, owners, shapes = record["parts"], record["markers"], record["owners"], record["shapes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(parts, list) or not all(isinstance(p, str) and _is_part(p) for p in parts):
        return None
    if any(overlaps(p, o) for i, p in enumerate(parts) for o in parts[i + 1 :]):
        return None
    if not (isinstance(markers, dict) and isinstance(owners, dict) and isinstance(shapes, dict)):
        return None
    named = all(isinstance(n, str) and isinstance(t, str) and _is_marker_name(n) for n, t in markers.items())
    owned = all(owners.get(n) in parts for n in markers if n.endswith(MARKER_SUFFIX))
    return record if named and owned and all(isinstance(shapes.get(p), str) for p in parts) else None


def _is_marker_name(name: str) -> bool:
    return name not in ("", ".", "..") and name == PurePosixPath(name).name and not name.endswith(".tmp")


def shape(root: Path) -> str:
    """A fingerprint of a copied tree's shape (paths, types, modes, sizes, link targets): restore
    compares a model's copy with the one the refresh recorded, so a durable copy changed or damaged
    after its record was written is never restored as verified."""
    entries = [(e.path, *e.shape()) for e in scan(root)]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        prepare(path, [])  # empties it, read-only directories included
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def prune(tree: Path, parts: list[str]) -> None:
    """Remove from the durable tree everything outside the parts (models no warm-up lists any more)."""
    keep = {PurePosixPath(p) for p in parts}
    ancestors = {a for p in keep for a in p.parents}

    def walk(directory: Path, relative: PurePosixPath) -> None:
        for item in sorted(directory.iterdir()):
            path = relative / item.name
            if path in keep:
                continue
            if path in ancestors and item.is_dir() and not item.is_symlink():
                walk(item, path)
            else:
                remove_tree(item)

    if tree.is_dir():
        walk(tree, PurePosixPath())


def wait_for_warmup(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    started = waited_since = time.monotonic()
    while not (args.ready.is_file() and args.ready.read_text().strip() == args.warmup):
        if time.monotonic() - started >= args.wait_limit:
            raise WaitedTooLong(f"the warm-up {args.warmup} did not finish within {args.wait_limit:g} s ({args.ready})")
        if time.monotonic() - waited_since >= args.progress_every:
            log(f"waiting for the warm-up {args.warmup} to finish ({args.ready})")
            waited_since = time.monotonic()
        time.sleep(min(args.wait_every, args.progress_every))


COPY_TOTALS = ("files", "bytes", "bytesSent", "bytesKept")


def add_totals(totals: dict[str, int], result: dict) -> None:
    for key in COPY_TOTALS:
        totals[key] = totals.get(key, 0) + result[key]


def withdraw(durable: Path, record: dict, part: str, ready: str, log: Callable[[str], None]) -> dict:
    """The record without one model and the markers that name it (and without the warm-up's own
    marker, so a restore from it lets the warm-up download that model): written before the model's
    copy in the durable tree is touched."""
    owners = {n: o for n, o in record["owners"].items() if o != part}
    markers = {n: t for n, t in record["markers"].items() if n != ready and (not n.endswith(MARKER_SUFFIX) or n in owners)}
    left = {**record, "parts": [p for p in record["parts"] if p != part], "markers": markers, "owners": owners}
    write_atomically(durable / DURABLE_RECORD, json.dumps(left) + "\n")
    log(f"{part}: withdrawn from the record until this refresh has copied and verified it")
    return left


def refresh(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """The durable copy made a verified copy of the models the finished warm-up's markers name. Until
    then the last record stays valid: a model it lists is withdrawn from it (alone) before its copy
    is rewritten. The new record is written once every model is verified; directories no marker
    names any more are removed after that."""
    started = time.monotonic()
    wait_for_warmup(args, log)
    # One refresh at a time: a replaced Job's pod may still be stopping when the next one starts.
    lock = open(args.durable / DURABLE_LOCK, "a")  # noqa: SIM115  (held until the process ends)
    fcntl.flock(lock, fcntl.LOCK_EX)
    parts, markers, owners = warmed_models(args.cache, args.ready.parent)
    record = read_record(args.durable)
    tree = args.durable / DURABLE_TREE
    totals = dict.fromkeys(COPY_TOTALS, 0)
    # New models first: until a model the record lists changes, the record still describes the tree.
    for part in sorted(parts, key=lambda p: record is not None and p in record["parts"]):
        origin, copy = args.cache / part, tree / part
        result = None
        if record is not None and part in record["parts"]:
            try:
                checked = verify_tree(LocalSource(origin), copy, log)
                result = {**checked, "bytesSent": 0, "bytesKept": checked["bytes"]}
            except Mismatch as err:
                log(f"{part} changed since the last refresh ({err})")
        if result is None:
            if record is not None:  # the copy writes into these recorded models: out of the record first
                for recorded in [p for p in record["parts"] if overlaps(part, p)]:
                    record = withdraw(args.durable, record, recorded, args.ready.name, log)
            log(f"{part}: {origin} -> {copy}")
            result = copy_tree([LocalSource(origin) for _ in range(args.streams)], copy, log, args.progress_every)
        add_totals(totals, result)
    if warmed_models(args.cache, args.ready.parent) != (parts, markers, owners):
        raise CopyError("the warm-up's markers changed while the refresh copied: nothing recorded; the Job's retry copies again")
    shapes = {part: shape(tree / part) for part in parts}
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = {"warmup": args.warmup, "finished": finished, "parts": parts, **totals}
    record_text = json.dumps({**summary, "markers": markers, "owners": owners, "shapes": shapes}) + "\n"
    write_atomically(args.durable / DURABLE_RECORD, record_text)
    prune(tree, parts)
    return {**summary, "seconds": round(time.monotonic() - started, 3), "verified": True}


def restore(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Into a cache with nothing of the warm-up in it (a claim re-created after node loss), the
    durable copy's models, verified, then the warm-up's markers. Never fails the pod: a cache that
    holds anything the copy would touch is left alone, and a restore that fails removes what it
    wrote; either way the warm-up then downloads what is missing."""
    try:
        return _restore(args, log)
    except Exception as err:  # reading the cache or the durable copy failed before anything was written
        log(f"restore skipped ({type(err).__name__}: {err}): the warm-up downloads")
        return {"restored": False, "reason": f"failed: {err}"}


def _restore(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    markers_dir, staging = args.ready.parent, args.cache / RESTORING
    if staging.exists():  # a restore cut short (pod killed): only a restore writes there
        log(f"removing {staging}, left by a restore that was cut short")
        remove_tree(staging)
    if args.ready.exists():
        log(f"the cache is warm ({args.ready}): nothing to restore")
        return {"restored": False, "reason": "warm"}
    lock_file = args.durable / DURABLE_LOCK
    if lock_file.exists():  # the durable copy is mounted read-only here: lock only what a refresh made
        lock = open(lock_file)  # noqa: SIM115  (held until the process ends)
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            log("a refresh is writing the durable copy: nothing restored; the warm-up downloads")
            return {"restored": False, "reason": "durable copy busy"}
    record = read_record(args.durable)
    if record is None:
        log(f"no refreshed durable copy in {args.durable}: the warm-up downloads")
        return {"restored": False, "reason": "no durable copy"}
    targets = [args.cache / part for part in record["parts"]] + [markers_dir]
    occupied = next((t for t in targets if t.is_symlink() or (t.exists() and (not t.is_dir() or any(t.iterdir())))), None)
    if occupied is not None:
        log(f"the cache already holds {occupied} (an interrupted warm-up): nothing restored; the warm-up resumes from it")
        return {"restored": False, "reason": "not empty"}
    # What the restore may create: the targets and the directories above them inside the cache.
    created = sorted({d for t in targets for d in (t, *t.parents) if args.cache in d.parents}, key=lambda d: -len(d.parts))
    existed = {d for d in created if d.is_dir()}
    log(f"restoring the durable copy of warm-up {record.get('warmup')} ({record.get('finished')}) into {args.cache}")
    totals = dict.fromkeys(COPY_TOTALS, 0)
    try:
        # Each model is copied into the staging directory, verified there, then renamed into place:
        # a restore killed halfway never leaves a partly written model where the warm-up would trust it.
        for part in record["parts"]:
            staged, final = staging / part, args.cache / part
            result = copy_tree(
                [LocalSource(args.durable / DURABLE_TREE / part) for _ in range(args.streams)], staged, log, args.progress_every
            )
            if shape(staged) != record["shapes"][part]:
                raise Mismatch(f"{part}: the durable copy is not the one its refresh recorded (changed or damaged since)")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_dir():
                final.rmdir()  # empty (checked above)
            staged.rename(final)
            add_totals(totals, result)
        remove_tree(staging)
        # The markers last, the warm-up's own last of all: a cache counts as warm only once its models are back.
        markers_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(record["markers"], key=lambda n: n == args.ready.name):
            write_atomically(markers_dir / name, record["markers"][name])
    except Exception as err:  # any failure: the warm-up downloads instead
        log(f"restore failed ({type(err).__name__}: {err}); removing what it wrote: the warm-up downloads")
        with contextlib.suppress(Exception):
            remove_tree(staging)
        for directory in created:  # deepest first
            with contextlib.suppress(Exception):
                if directory in existed:
                    if directory in targets:
                        prepare(directory, [])
                elif directory in targets:
                    remove_tree(directory)
                else:
                    directory.rmdir()  # only if empty: it may hold what the restore did not write
        return {"restored": False, "reason": f"failed: {err}"}
    return {"restored": True, "warmup": record.get("warmup"), **totals, "verified": True}


# --- the command line


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), int(port)


def _streams(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 64")
    return int(text)


def _is_part(text: str) -> bool:
    path = PurePosixPath(text)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts and str(path) == text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds above 0")
    return value


def _token(path: Path) -> bytes:
    try:
        token = path.read_bytes().strip()
    except OSError as err:
        raise CopyError(f"--token-file {path}: cannot read it ({err.strerror or err})") from None
    if len(token) < 16:
        raise CopyError(f"--token-file {path}: the token has {len(token)} bytes; at least 16 are needed")
    return token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cache_copy.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="serve SRC to one receiver")
    send.add_argument("--root", type=Path, required=True)
    send.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    send.add_argument("--token-file", type=Path, required=True)
    receive = commands.add_parser("receive", help="copy from a sender into DST and verify")
    receive.add_argument("--root", type=Path, required=True)
    receive.add_argument("--source", type=_address, required=True, metavar="HOST:PORT")
    receive.add_argument("--token-file", type=Path, required=True)
    receive.add_argument("--streams", type=_streams, default=4)
    local = commands.add_parser("local", help="copy SRC into DST on this machine and verify")
    local.add_argument("--from", dest="source_root", type=Path, required=True)
    local.add_argument("--to", dest="root", type=Path, required=True)
    local.add_argument("--streams", type=_streams, default=4)
    verify = commands.add_parser("verify", help="check DST against a sender or SRC, changing nothing")
    verify.add_argument("--root", type=Path, required=True)
    origin = verify.add_mutually_exclusive_group(required=True)
    origin.add_argument("--source", type=_address, metavar="HOST:PORT")
    origin.add_argument("--from", dest="source_root", type=Path)
    verify.add_argument("--token-file", type=Path)
    durable = commands.add_parser("refresh", help="after the warm-up, copy the cache's parts into the durable copy")
    durable.add_argument("--warmup", required=True, help="the warm-up the marker must name")
    durable.add_argument("--wait-every", type=_seconds, default=10.0, metavar="SECONDS", help="poll interval")
    durable.add_argument(
        "--wait-limit", type=_seconds, default=86400.0, metavar="SECONDS", help="fail when the warm-up has not finished by then"
    )
    back = commands.add_parser("restore", help="copy the durable copy into a cache that is not warm")
    for sub in (durable, back):
        sub.add_argument("--cache", type=Path, required=True)
        sub.add_argument("--durable", type=Path, required=True)
        sub.add_argument("--ready", type=Path, required=True, help="the warm-up's marker file")
        sub.add_argument("--streams", type=_streams, default=4)
    for sub in (receive, local, verify, send, durable, back):
        sub.add_argument("--progress-every", type=float, default=5.0, metavar="SECONDS", help="progress line interval")
    for sub in (receive, local, verify):
        sub.add_argument("--segment-mib", type=_streams, default=SEGMENT >> 20, help="unit of transfer and resume (MiB)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"cache_copy: {message}", file=sys.stderr, flush=True)

    # As a pod's first process, python ignores SIGTERM unless told: stop at once when the pod is deleted.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sources: list = []
    try:
        if args.command == "send":
            result = serve(args.root, args.listen, _token(args.token_file), log)
        elif args.command == "refresh":
            result = refresh(args, log)
        elif args.command == "restore":
            result = restore(args, log)
        elif args.command == "local":
            if args.source_root.resolve() == args.root.resolve():
                raise CopyError("--from and --to are the same directory")
            scan(args.source_root)  # refused before DST is touched
            sources = [LocalSource(args.source_root) for _ in range(args.streams)]
            result = copy_tree(sources, args.root, log, args.progress_every, args.segment_mib << 20)
        elif args.command == "receive":
            token = _token(args.token_file)
            sources = [RemoteSource(args.source, token) for _ in range(args.streams)]
            result = copy_tree(sources, args.root, log, args.progress_every, args.segment_mib << 20)
            sources.pop(0).close(done=True)
        else:
            if args.source is not None and args.token_file is None:
                raise CopyError("verify --source needs --token-file")
            source = LocalSource(args.source_root) if args.source is None else RemoteSource(args.source, _token(args.token_file))
            sources = [source]
            result = verify_tree(source, args.root, log, args.segment_mib << 20)
            if args.source is not None:
                sources.pop(0).close(done=True)
    except CopyError as err:
        log(f"error: {err}")
        return EXIT_USAGE
    except PeerError as err:
        log(f"error: {err}")
        return EXIT_PEER
    except WaitedTooLong as err:
        log(f"error: {err}")
        return EXIT_WAITED
    except Mismatch as err:
        log(f"verification failed: {err}")
        return EXIT_MISMATCH
    except OSError as err:
        log(f"error: {err.filename or ''}: {err.strerror or err}")
        return EXIT_USAGE
    finally:
        for source in sources:
            source.close()
    print(json.dumps(result), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
