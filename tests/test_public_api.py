"""``actorq.__all__`` is exactly the API documented in docs/api.md, and every name resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import actorq

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented_names() -> list[str]:
    """The names docs/api.md lists, one per ``- `name`: ...`` line, in the document's order."""
    names = re.findall(r"^- `(\w+)`:", API_DOC.read_text(), flags=re.MULTILINE)
    assert names, f"no names found in {API_DOC}"
    return names


def test_all_is_exactly_the_documented_api() -> None:
    documented = documented_names()
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert len(actorq.__all__) == len(set(actorq.__all__)), "a name is in __all__ twice"
    assert sorted(actorq.__all__) == sorted(documented)


@pytest.mark.parametrize("name", actorq.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(actorq, name)
    assert value is not None
    # the lazy loader caches what it loaded: a second lookup is the same object
    assert getattr(actorq, name) is value


def test_dir_shows_every_public_name() -> None:
    assert set(actorq.__all__) <= set(dir(actorq))


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from actorq import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(actorq.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'QueueState'"):
        _ = actorq.QueueState  # type: ignore[attr-defined]
    assert not hasattr(actorq, "nothing_by_this_name")
    with pytest.raises(ImportError):
        exec("from actorq import QueueState", {})


def test_the_record_types_are_the_stores() -> None:
    from actorq._core._records import Changes, JobRecord, WorkerRecord

    assert (actorq.JobRecord, actorq.WorkerRecord, actorq.Changes) == (
        JobRecord,
        WorkerRecord,
        Changes,
    )
