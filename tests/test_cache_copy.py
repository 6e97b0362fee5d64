"""workloads/cache_copy.py as the copy pods run it: real processes, real files, the loopback network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mlcache.bench.copy import start_sender
from mlcache.program.settings import parse_settings
from tests.conftest import ROOT

SCRIPT = ROOT / "workloads" / "cache_copy.py"
BIG = 24 << 20  # two files of 6 segments each at --segment-mib 4


def tree(root: Path) -> Path:
    """A Hugging Face style cache: incompressible blobs, relative snapshot links, a thousand small
    files, an empty file, an empty read-only directory, a read-only file."""
    blobs = root / "hub" / "models--org--name" / "blobs"
    snapshot = root / "hub" / "models--org--name" / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    (snapshot / "nested" / "deeper").mkdir(parents=True)
    for name in ("a" * 64, "b" * 64):
        with open(blobs / name, "wb") as file:
            file.write(os.urandom(BIG))
        (snapshot / f"model-{name[0]}.safetensors").symlink_to(f"../../blobs/{name}")
    for index in range(1000):
        (snapshot / "nested" / "deeper" / f"part-{index:04d}.json").write_text(json.dumps({"index": index}))
    (snapshot / "empty.txt").touch()
    (root / "read-only-dir").mkdir(mode=0o555)
    (blobs / ("a" * 64)).chmod(0o444)
    return root


def listing(root: Path) -> dict[str, tuple]:
    """Every entry: type, mode, size, link target and content digest (links not followed)."""
    import hashlib  # noqa: PLC0415

    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            found[str(path.relative_to(root))] = ("link", os.readlink(path))
        elif path.is_dir():
            found[str(path.relative_to(root))] = ("dir", oct(info.st_mode & 0o7777))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = ("file", oct(info.st_mode & 0o7777), info.st_size, digest)
    return found


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tree(tmp_path_factory.mktemp("copy") / "src")


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, **kwargs)


def receiving(destination: Path, address: str, token: Path, *extra: str) -> list[str]:
    """The arguments of `cache_copy.py receive` into `destination` from the sender at `address`."""
    return ["receive", "--root", str(destination), "--source", address, "--token-file", str(token), *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def token(tmp_path) -> Path:
    path = tmp_path / "token"
    path.write_text(os.urandom(24).hex() + "\n")
    return path


def test_local_copy_is_exact_and_verified(source, tmp_path):
    destination = tmp_path / "dst"
    done = run("local", "--from", str(source), "--to", str(destination), "--segment-mib", "4", "--progress-every", "0.01")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["verified"] is True and summary["files"] == 2 + 1000 + 1
    assert (
        summary["bytes"]
        == summary["bytesSent"]
        == sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    )
    assert listing(destination) == listing(source)
    link = destination / "hub" / "models--org--name" / "snapshots" / "0123abcd" / "model-a.safetensors"
    assert os.readlink(link) == "../../blobs/" + "a" * 64 and link.resolve().is_relative_to(destination)
    # Progress lines, in the unit the tree's size reads best in (50 MB here: never `0.05 of 0.05 GB`).
    assert f"of {summary['bytes'] / 1e6:.2f} MB (" in done.stderr and "MB/s, ETA" in done.stderr


def test_send_receive_over_the_network_leaves_nothing_extra_and_a_rerun_sends_nothing(source, tmp_path, token):
    destination = tmp_path / "dst"
    (destination / "stale" / "dir").mkdir(parents=True)
    (destination / "stale" / "dir" / "old-model.bin").write_bytes(b"x" * 1000)
    (destination / "read-only-dir").mkdir()
    (destination / "read-only-dir" / "leftover").write_text("gone after the copy")
    (destination / "read-only-dir").chmod(0o555)
    sender, address = start_sender(source, token)
    received = run(*receiving(destination, address, token, "--streams", "3", "--segment-mib", "4"))
    assert received.returncode == 0, received.stderr
    out, err = sender.communicate(timeout=30)
    assert sender.returncode == 0, err
    assert json.loads(out)["bytesSent"] == json.loads(received.stdout)["bytesSent"] == json.loads(received.stdout)["bytes"]
    assert json.loads(out)["connections"] == 3
    assert listing(destination) == listing(source)

    sender, address = start_sender(source, token)
    again = run(*receiving(destination, address, token, "--segment-mib", "4"))
    sender.communicate(timeout=30)
    summary = json.loads(again.stdout)
    assert again.returncode == 0 and summary["bytesSent"] == 0 and summary["bytesKept"] == summary["bytes"]


# An interpreter the pods' user can run (this venv's lives under /root, mode 0700).
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a volume root owned by another user needs root")
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3 for the pods' user to run")
def test_into_a_volume_root_the_pods_user_does_not_own_past_the_file_systems_lost_found():
    """As in a copy pod: the pods' user, in a volume root owned by root and shared through fsGroup
    (mode 2775), on ext4 volumes (Rook-Ceph's) with mkfs's root-only lost+found on both sides."""
    user = parse_settings({}).job.run_as_user
    base = Path(tempfile.mkdtemp(prefix="mlcache-volumes-"))  # outside pytest's 0700 directories
    base.chmod(0o755)
    try:
        copy_as_the_pods_user(base, user)
    finally:
        shutil.rmtree(base)


def copy_as_the_pods_user(base: Path, user: int) -> None:
    volumes = {}
    for name in ("src", "dst"):
        root = volumes[name] = base / name
        (root / "lost+found").mkdir(parents=True, mode=0o700)
        os.chown(root, 0, user)
        root.chmod(0o2775)
    snapshot = volumes["src"] / "hub" / "models--org--name" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "blobs").mkdir()
    (snapshot.parent.parent / "blobs" / "c").write_bytes(os.urandom(3 << 20))
    (snapshot / "model.safetensors").symlink_to("../../blobs/c")
    (snapshot / "empty.txt").touch()
    for path in (volumes["src"] / "hub", *(volumes["src"] / "hub").rglob("*")):
        os.chown(path, user, user, follow_symlinks=False)  # written by the training pod
    (volumes["dst"] / "left-by-an-earlier-attempt").write_text("removed by the copy")
    os.chown(volumes["dst"] / "left-by-an-earlier-attempt", user, user)

    script = base / SCRIPT.name  # as the pod has it: a file of the scripts ConfigMap
    script.write_bytes(SCRIPT.read_bytes())
    done = subprocess.run(
        [str(SYSTEM_PYTHON), str(script), "local", "--from", str(volumes["src"]), "--to", str(volumes["dst"])],
        capture_output=True,
        text=True,
        timeout=120,
        user=user,
        group=user,
        extra_groups=[],
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verified"] is True
    without_lost_found = {k: v for k, v in listing(volumes["dst"]).items() if not k.startswith("lost+found")}
    assert without_lost_found == {k: v for k, v in listing(volumes["src"]).items() if not k.startswith("lost+found")}
    lost_found = (volumes["dst"] / "lost+found").stat()
    assert (lost_found.st_uid, oct(lost_found.st_mode & 0o7777)) == (0, "0o700")
    assert (volumes["dst"].stat().st_uid, oct(volumes["dst"].stat().st_mode & 0o7777)) == (0, "0o2775")


def test_a_wrong_token_is_refused_before_the_destination_is_touched(source, tmp_path, token):
    sender, address = start_sender(source, token)
    wrong = tmp_path / "wrong"
    wrong.write_text(os.urandom(24).hex())
    refused = run("receive", "--root", str(tmp_path / "dst"), "--source", address, "--token-file", str(wrong))
    assert refused.returncode == 3 and refused.stdout == ""
    assert refused.stderr == "cache_copy: error: the sender refused the connection: wrong token\n"
    assert not (tmp_path / "dst").exists()
    sender.send_signal(signal.SIGTERM)
    _, err = sender.communicate(timeout=30)
    assert "refused a connection from 127.0.0.1: wrong token" in err and token.read_text().strip() not in err


def test_killed_half_way_a_rerun_resends_under_15_percent(source, tmp_path, token):
    destination = tmp_path / "dst"
    sender, address = start_sender(source, token)
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            *receiving(destination, address, token, "--streams", "2", "--segment-mib", "1", "--progress-every", "0.005"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in receiver.stderr:
        if "%)" in line and int(line.split("(")[1].split("%")[0]) >= 45:
            receiver.kill()
            break
    receiver.wait(timeout=30)
    assert receiver.returncode == -signal.SIGKILL, "the copy ended before it could be killed half-way"
    resumed = run(*receiving(destination, address, token, "--segment-mib", "1"))
    out, _ = sender.communicate(timeout=30)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["bytesKept"] > 0.4 * summary["bytes"]  # what the killed run had written stays
    sent_twice = json.loads(out)["bytesSent"] - summary["bytes"]  # the sender served both runs
    assert 0 <= sent_twice < 0.15 * summary["bytes"]
    assert listing(destination) == listing(source)


def test_one_flipped_byte_fails_verification_and_a_rerun_repairs_only_its_segment(source, tmp_path):
    destination = tmp_path / "dst"
    assert run("local", "--from", str(source), "--to", str(destination), "--segment-mib", "4").returncode == 0
    blob = destination / "hub" / "models--org--name" / "blobs" / ("b" * 64)
    with open(blob, "r+b") as file:
        file.seek(5 << 20)
        byte = file.read(1)
        file.seek(5 << 20)
        file.write(bytes([byte[0] ^ 1]))
    checked = run("verify", "--root", str(destination), "--from", str(source), "--segment-mib", "4")
    assert checked.returncode == 1 and checked.stdout == ""
    assert checked.stderr.endswith(
        f"verification failed: hub/models--org--name/blobs/{'b' * 64}: bytes 4194304-8388608 differ from the source\n"
    )
    repaired = run("local", "--from", str(source), "--to", str(destination), "--segment-mib", "4")
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["bytesSent"] == 4 << 20
    assert run("verify", "--root", str(destination), "--from", str(source)).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["receive", "--root", "D", "--source", "nohost", "--token-file", "T"], "expected HOST:PORT"),
        (["local", "--from", "S", "--to", "D", "--streams", "0"], "expected a whole number from 1 to 64"),
    ],
)
def test_bad_usage_is_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_short_token_or_missing_source_is_one_line(tmp_path):
    short = tmp_path / "short"
    short.write_text("abc")
    result = run("receive", "--root", str(tmp_path / "d"), "--source", "127.0.0.1:1", "--token-file", str(short))
    assert (
        result.returncode == 2
        and result.stderr == f"cache_copy: error: --token-file {short}: the token has 3 bytes; at least 16 are needed\n"
    )
    missing = run("local", "--from", str(tmp_path / "none"), "--to", str(tmp_path / "d"))
    assert missing.returncode == 2 and missing.stderr == f"cache_copy: error: {tmp_path / 'none'}: not a directory\n"
    assert not (tmp_path / "d").exists()
    unreachable = run(
        "receive", "--root", str(tmp_path / "d"), "--source", f"127.0.0.1:{free_port()}", "--token-file", str(tmp_path / "short")
    )
    assert unreachable.returncode == 2  # the token is checked first


def test_the_copy_benchmark_prints_each_side_against_the_slower_fio_figure(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcache",
            "bench",
            "copy",
            "--dir",
            str(tmp_path),
            "--files",
            "1",
            "--size",
            "32M",
            "--rounds",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = {line[:14].strip(): line[14:].split() for line in result.stdout.splitlines()[2:6]}  # side: GB/s, ratio, rounds
    assert set(rows) == {"fio read", "fio write", "local", "send|receive"}
    ratios = {side: float(row[1].rstrip("x")) for side, row in rows.items()}
    assert min(ratios["fio read"], ratios["fio write"]) == 1.0  # the limit is the slower fio figure
    assert all(float(row[0]) > 0 for row in rows.values())  # GB/s, measured for every side
    assert "limit = the slower fio figure" in result.stdout
    # The verification's cost: two reads and one write one after another, at fio's median rates.
    serial = result.stdout.splitlines()[-1]
    assert serial.startswith("a verified copy reads each byte twice and writes it once: one after another at fio's rates ")
    rates = {side: float(row[0]) for side, row in rows.items()}
    expected = 1 / (2 / rates["fio read"] + 1 / rates["fio write"])
    assert abs(float(serial.split("rates ")[1].split(" GB/s")[0]) - expected) <= 0.011 + 0.02 * expected
    assert result.stderr.count("bench copy: round 1/1:") == 4  # progress, one line per side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "token"]  # the copies are removed


def test_a_source_file_that_changes_or_goes_under_the_copy_is_one_line_on_both_ends(tmp_path, token):
    """Shrunk, grown, rewritten at the same size, or gone after the sender took its manifest: the
    receiver says which file and why and exits 3, and the sender's log says the same in one line
    (no traceback). The copy cannot finish until the source is left alone."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    weights = source / "weights.bin"
    cases = [
        (lambda: weights.write_bytes(b"truncated"), "it changed under the copy (9 bytes now, 6291456 when the copy began)"),
        (
            lambda: weights.write_bytes(os.urandom(7 << 20)),
            "it changed under the copy (7340032 bytes now, 6291456 when the copy began)",
        ),
        (lambda: os.utime(weights, ns=(1, 1)), "it changed under the copy (modified since the copy began, same size)"),
        (weights.unlink, "No such file or directory"),
    ]
    for change, why in cases:
        weights.write_bytes(os.urandom(6 << 20))
        sender, address = start_sender(source, token)  # its manifest is taken now
        change()
        received = run(*receiving(tmp_path / "dst", address, token, "--segment-mib", "4"))
        sender.kill()
        _, log = sender.communicate(timeout=30)
        assert received.returncode == 3, received.stderr
        assert received.stderr.splitlines()[-1] == f"cache_copy: error: the sender: cannot read weights.bin: {why}"
        assert f"cache_copy: cannot serve weights.bin: {why}" in log and "Traceback" not in log
    # A resume asks for the digest of what DST already holds; `verify --source` asks the same way.
    assert (tmp_path / "dst" / "weights.bin").stat().st_size == 6 << 20
    (tmp_path / "dst" / "config.json").write_text("{}")  # whether a failed run above got to it is a race
    weights.write_bytes(os.urandom(6 << 20))
    sender, address = start_sender(source, token)
    weights.write_bytes(b"truncated")
    checked = run("verify", "--root", str(tmp_path / "dst"), "--source", address, "--token-file", str(token))
    sender.kill()
    sender.communicate(timeout=30)
    assert checked.returncode == 3
    assert checked.stderr.splitlines()[-1].endswith(
        "cannot read weights.bin: it changed under the copy (9 bytes now, 6291456 when the copy began)"
    )


def test_a_file_written_to_while_its_segment_is_sent_fails_the_copy_not_verified(tmp_path, token, monkeypatch):
    """The sender's check after reading: a file modified while its segment was being read (both
    checks before the first byte passed) is refused after the bytes, instead of their digest. The
    sender runs in this process so that the write can happen exactly then."""
    import importlib.util  # noqa: PLC0415
    import threading  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("cache_copy_sender", SCRIPT)
    assert spec and spec.loader
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)  # its dataclasses look their module up
    spec.loader.exec_module(copy)
    secret = copy._token(token)
    source = tmp_path / "src"
    source.mkdir()
    weights = source / "weights.bin"
    weights.write_bytes(os.urandom(6 << 20))
    read_whole = copy.read_range
    sent_before_the_write = []

    def read_then_written_to(path, offset, length, sink=None):
        digest = read_whole(path, offset, length, sink)
        if sink is not None:  # a fetch: its bytes are on their way; now the file is written to
            sent_before_the_write.append(length)
            os.utime(path, ns=(1, 1))
        return digest

    monkeypatch.setattr(copy, "read_range", read_then_written_to)
    port = free_port()
    log: list[str] = []
    sender = threading.Thread(target=copy.serve, args=(source, ("127.0.0.1", port), secret, log.append), daemon=True)
    sender.start()
    deadline = time.monotonic() + 10
    while not any(line.startswith("serving") for line in log) and time.monotonic() < deadline:
        time.sleep(0.01)
    received = run(*receiving(tmp_path / "dst", f"127.0.0.1:{port}", token, "--segment-mib", "4"))
    why = "it changed under the copy (modified since the copy began, same size)"
    assert received.returncode == 3, received.stderr
    assert received.stderr.splitlines()[-1] == f"cache_copy: error: the sender: cannot read weights.bin: {why}"
    assert sent_before_the_write and f"cannot serve weights.bin: {why}" in log
    assert '"verified": true' not in received.stdout
    copy.RemoteSource(("127.0.0.1", port), secret).close(done=True)  # the sender ends
    sender.join(timeout=10)
    assert not sender.is_alive()
