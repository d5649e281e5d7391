"""Job ids and tokens: random version 4 UUIDs, from a pool of random bits read in bulk."""

from __future__ import annotations

import os
import uuid

import pytest

from actorq._core import _records
from actorq._core._records import new_uuid4


def test_new_ids_are_random_version_4_uuids() -> None:
    ids = [new_uuid4() for _ in range(3 * _records._POOL_SIZE)]  # across refills
    assert len(set(ids)) == len(ids)
    for made in ids:
        assert type(made) is uuid.UUID
        assert made.version == 4
        assert made.variant == uuid.RFC_4122
        assert uuid.UUID(str(made)) == made
        assert hash(uuid.UUID(str(made))) == hash(made)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running
def test_a_forked_child_does_not_hand_out_its_parents_ids() -> None:
    new_uuid4()  # the pool holds unused ids now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, b"".join(new_uuid4().bytes for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    try:
        data = b""
        while chunk := os.read(read, 4096):
            data += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    child = {uuid.UUID(bytes=data[i : i + 16]) for i in range(0, len(data), 16)}
    assert len(child) == 8
    parent = {new_uuid4() for _ in range(_records._POOL_SIZE)}
    assert not child & parent
