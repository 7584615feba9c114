"""The store on a full disk (a real tmpfs filled up): a failed write raises StorageFull and
nothing of its batch is stored; close() never hides that error behind a second one; reads go
on; the store writes again after reopen() once there is room, also when opened on a full disk."""
from __future__ import annotations

import os

import pytest
from smallfs import fill, free, small_fs

from nodes.storage.store import StorageFull, Store


@pytest.fixture
def disk(tmp_path):
    with small_fs(str(tmp_path / "disk"), 8) as path:
        yield path


def write_until_full(store: Store, limit: int = 10_000) -> int:
    """Write batches of 16 KiB until the disk refuses one; the number of the failed batch."""
    for n in range(limit):
        for i in range(16):
            store.put(b"k%06d-%02d" % (n, i), os.urandom(1024))
        try:
            store.flush()
        except StorageFull:
            return n
    raise AssertionError("the disk never filled up")


def test_a_failed_write_is_not_stored_and_close_does_not_hide_it(disk):
    store = Store(os.path.join(disk, "db"))
    store.put(b"before", b"1")
    store.flush()
    fill(disk)
    with pytest.raises(StorageFull) as caught:
        try:
            failed_at = write_until_full(store)
            store.put(b"after", b"x")
            store.flush()                 # the store is failed now: refused at once
        finally:
            store.close()                 # what Node.run's finally does: must not mask the cause
    assert "No space left on device" in str(caught.value)
    assert "consumed" not in str(caught.value)
    store = Store(os.path.join(disk, "db"))          # read-only: the disk is still full
    assert store.full and store.get(b"before") == b"1"
    assert store.get(b"k%06d-00" % failed_at) is None  # the failed batch: nothing of it
    assert store.get(b"after") is None
    store.close()


def test_writes_resume_after_reopen_once_there_is_room(disk):
    store = Store(os.path.join(disk, "db"))
    store.put(b"before", b"1")
    store.flush()
    fill(disk)
    write_until_full(store)
    assert store.failed is not None and store.write_failures == 1
    assert store.get(b"before") == b"1"                # reads go on
    assert store.reopen() is False                   # still full: stays failed
    store.put(b"x", b"1")
    with pytest.raises(StorageFull):
        store.flush()
    free(disk)
    assert store.reopen() is True and store.failed is None
    store.put(b"resumed", b"1")
    assert store.flush() == 1
    assert store.get(b"resumed") == b"1" and store.get(b"x") is None
    store.close()


def test_a_store_opened_on_a_full_disk_serves_reads_and_writes_once_freed(disk):
    path = os.path.join(disk, "db")
    store = Store(path)
    store.put(b"kept", b"1")
    store.flush()
    store.close()
    fill(disk)
    store = Store(path)
    assert store.full and store.get(b"kept") == b"1"
    assert list(store.scan(b"k")) == [(b"kept", b"1")]
    store.put(b"new", b"1")
    with pytest.raises(StorageFull):
        store.flush()
    free(disk)
    assert store.reopen()
    store.put(b"new", b"2")
    store.flush()
    assert store.get(b"new") == b"2" and store.get(b"kept") == b"1"
    store.close()
