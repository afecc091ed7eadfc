"""The store's lock (m3rcr_xr/locks.py): of reruns taking over a stale marker, one wins;
the lock of a file a run writes.

Writers refused or let through by the lock end to end (:func:`m3rcr_xr.to_zarr`,
:func:`m3rcr_xr.train.train`) are tested in tests/test_store.py, tests/test_s3.py and
tests/test_train_state.py.
"""

import contextlib
import json
import os
import subprocess
import sys

import pytest

import m3rcr_xr
from m3rcr_xr import locks
from m3rcr_xr.exceptions import CheckpointError
from m3rcr_xr.location import Target, read_json
from tests.conftest import killed_writer, left_marker


def test_of_two_reruns_taking_over_one_stale_marker_one_wins():
    dead = killed_writer()
    url, _ = left_marker(dead)
    target = Target.of(url)
    first, second = locks._owner(), {**locks._owner(), "since": "a moment later"}
    assert locks._take_over(target, dead, first) is None
    # the second finds the first's marker, of a live writer, in the stale one's place
    assert locks._take_over(target, dead, second) == first
    assert read_json(target, locks.LOCK) == first


def test_a_rerun_cannot_take_over_a_marker_while_another_rerun_is_removing_it(monkeypatch):
    """Rerun B reads the stale marker again before it removes it; rerun A takes it over
    then, whole. Deletes are unconditional: B removed A's marker and wrote its own, and
    both wrote the store. A is refused now: B holds the takeover's object."""
    dead = killed_writer()
    url, _ = left_marker(dead)
    target = Target.of(url)
    mine = locks._owner()
    owners = iter([{**mine, "since": "B"}, {**mine, "since": "A"}])
    monkeypatch.setattr(locks, "_owner", lambda: next(owners))
    reads, held, won, refused = [], contextlib.ExitStack(), [], []

    def a_takes_over_after_bs_read_again(target_: Target, name: str) -> dict | None:
        doc = read_json(target_, name)
        reads.append(name)
        if reads.count(locks.LOCK) == 2:  # B's first read found it stale, this is again
            try:
                held.enter_context(locks._marker(target))
            except m3rcr_xr.StoreError as err:
                refused.append(str(err))
            else:
                won.append("A")
        return doc

    monkeypatch.setattr(locks, "read_json", a_takes_over_after_bs_read_again)
    with held, locks._marker(target):
        won.append("B")
        assert won == ["B"]
        assert read_json(target, locks.LOCK)["since"] == "B"
    claim = target.fs.unstrip_protocol(target.key(locks.TAKEOVER))
    assert len(refused) == 1 and f"holds {claim} from" in refused[0]
    assert not any(target.fs.exists(target.key(n)) for n in (locks.LOCK, locks.TAKEOVER))


def test_a_pid_is_free_only_when_no_process_has_it():
    """What tells a killed writer's leftovers (a GeoTIFF's partial file) from a live one's."""
    assert locks.pid_free(killed_writer()["pid"])
    assert not locks.pid_free(os.getpid()) and not locks.pid_free(1)
    assert not locks.pid_free(0) and not locks.pid_free(-1)  # process groups: no answer


def test_the_machine_token_tells_boots_and_pid_namespaces_apart(monkeypatch):
    """What names the hidden files of a write (m3rcr_xr.files): a pid says whether the
    writer runs only where the token is this one."""
    here, machine = locks.machine_token(), locks._machine()
    if machine is None:
        pytest.skip("needs Linux's /proc")
    for other in ({"boot_id": "another boot"}, {"pid_namespace": 1}):
        monkeypatch.setattr(locks, "_machine", lambda other=other: {**machine, **other})
        locks.machine_token.cache_clear()
        try:
            assert locks.machine_token() != here
        finally:
            locks.machine_token.cache_clear()


#: holds an OS lock on the file argv[1] (as a run in another process does) until its
#: stdin closes, then ends without removing the file (as a killed run leaves it)
HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.mark.skipif(sys.platform == "win32", reason="the holder uses fcntl")
def test_a_file_lock_refuses_a_writer_while_another_process_holds_it(tmp_path):
    """The lock of a file a run writes (a checkpoint): beside it, hidden; held by another
    process, a second writer is refused, naming the file; once that process is gone (the
    lock file left behind), the next writer takes it and removes it at its end."""
    out = tmp_path / "run.pth"
    lock = tmp_path / ".run.pth.m3rcr-lock"
    assert locks.lock_file(out) == lock
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        with (
            pytest.raises(CheckpointError) as caught,
            locks.locked_file(out, "out", CheckpointError),
        ):
            pass
        assert str(caught.value) == (
            f"out={str(out)!r}: another run is writing this file (it holds {lock}); wait for "
            "it to end or choose another out"
        )
    finally:
        holder.communicate()
    assert os.listdir(tmp_path) == [lock.name]  # the holder's, left
    with locks.locked_file(out, "out", CheckpointError):
        out.write_text("written")
    assert os.listdir(tmp_path) == ["run.pth"]


def test_a_file_lock_makes_its_folder_for_the_run_and_refuses_a_url(tmp_path):
    out = tmp_path / "runs" / "run.pth"
    with locks.locked_file(out, "out", CheckpointError):
        assert os.listdir(out.parent) == [".run.pth.m3rcr-lock"]
    assert os.listdir(tmp_path) == []  # nothing was written there: removed again
    with (
        pytest.raises(CheckpointError, match=r"^out='s3://b/run.pth': a URL; this file is"),
        locks.locked_file("s3://b/run.pth", "out", CheckpointError),
    ):
        pass
    assert os.listdir(tmp_path) == []


def test_a_file_lock_refuses_a_folder_and_a_place_it_cannot_write(tmp_path, monkeypatch):
    """A folder, or a path under a file, is refused in the caller's error, not a bare
    ValueError or OSError, and leaves nothing behind."""
    monkeypatch.chdir(tmp_path)
    for folder in (".", "..", "/", str(tmp_path)):
        with (
            pytest.raises(CheckpointError, match=r": a folder; give the path of a file$"),
            locks.locked_file(folder, "out", CheckpointError),
        ):
            pass
    (tmp_path / "plain").write_text("a file, not a folder")
    with (
        pytest.raises(CheckpointError, match=r"^out='plain/run.pth': cannot write there \("),
        locks.locked_file("plain/run.pth", "out", CheckpointError),
    ):
        pass
    assert os.listdir(tmp_path) == ["plain"]


def test_a_lock_file_removed_while_held_is_not_removed_from_its_next_holder(tmp_path):
    """Someone removed the lock file of a writer that holds it: the writer ended with
    FileNotFoundError, or, when another writer had made its own lock file meanwhile,
    removed that one, and a third writer ran beside the second."""
    target = Target.of(tmp_path / "s.zarr")
    lock = tmp_path / "s.zarr" / locks.LOCK
    with locks.locked(target):
        lock.unlink()
    with contextlib.ExitStack() as second:
        with locks.locked(target):
            lock.unlink()
            second.enter_context(locks.locked(target))
        assert lock.exists()  # the second writer's, held
        with pytest.raises(m3rcr_xr.StoreError, match="another writer is writing this store"):
            second.enter_context(locks.locked(target))
    assert not lock.exists()


def test_a_file_of_a_lock_files_name_that_holds_data_is_refused_and_kept(tmp_path):
    """A user's file named as a lock file (``.run.pth.m3rcr-lock``) was taken as the
    lock and removed at the end; lock files are empty (or an object store's marker,
    copied with its store), so one that holds anything else is refused and kept."""
    out = tmp_path / "run.pth"
    lock = locks.lock_file(out)
    lock.write_text("my notes")
    with (
        pytest.raises(CheckpointError, match=r"m3rcr-lock: the lock file of out='.*run\.pth' is"),
        locks.locked_file(out, "out", CheckpointError),
    ):
        pass
    assert lock.read_text() == "my notes"
    lock.write_text(json.dumps(locks._owner()))  # a marker copied from an object store
    with locks.locked_file(out, "out", CheckpointError):
        pass
    assert not lock.exists()
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / locks.LOCK).write_bytes(b"\x00\x01binary")
    with (
        pytest.raises(m3rcr_xr.StoreError, match="the store's lock file is a file that holds"),
        locks.locked(Target.of(store)),
    ):
        pass
    assert (store / locks.LOCK).read_bytes() == b"\x00\x01binary"


FORKS_THEN_DIES = """
import os, sys, time
from m3rcr_xr import locks
from m3rcr_xr.exceptions import CheckpointError

with locks.locked_file(sys.argv[1], "out", CheckpointError):
    child = os.fork()
    if child == 0:  # a DataLoader worker: it outlives its killed parent a while
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)  # not the test's pipe, which it would keep open
        os.dup2(quiet, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os._exit(9)  # killed while it holds the lock
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_by_a_writer_does_not_hold_its_lock_after_it(tmp_path):
    """flock's lock belongs to the open file, which a forked child shares: a DataLoader
    worker alive after its training run was killed held that run's lock, and the rerun
    was refused as if the run went on. A forked child closes its copies at once."""
    out = tmp_path / "run.pth"
    done = subprocess.run(
        [sys.executable, "-c", FORKS_THEN_DIES, str(out)], capture_output=True, text=True
    )
    assert done.returncode == 9, done.stderr
    child = int(done.stdout)
    try:
        os.kill(child, 0)  # still alive
        with locks.locked_file(out, "out", CheckpointError):
            pass
    finally:
        os.kill(child, 9)
