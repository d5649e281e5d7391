"""The ready index and the waiter index of :class:`~actorq._core._state.QueueState`.

Both delete lazily: an entry is valid only while the job's ``ready_key`` (or
the waiter's ``active`` flag) still matches, and a heap or deque that fills
up with dead entries is compacted once dead entries outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING

from ._entities import (
    ANY_CHANNEL,
    COMPACT_SLACK,
    JobEntry,
    ReadyHeap,
    StateAttributes,
    TypeKey,
    Waiter,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from uuid import UUID

__all__ = ["ReadyIndex"]


class ReadyIndex(StateAttributes):
    """Lookups in, and removals from, the ready and waiter indexes."""

    def _unready(self, job: JobEntry) -> None:
        if job.ready_key == 0:
            return
        job.ready_key = 0
        ready = self._ready
        for heap_key in ((job.type, job.channel), (job.type, ANY_CHANNEL)):
            heap = ready[heap_key]
            heap.live -= 1
            if not heap.live:
                # Every entry left is dead: a name no job uses any more must not
                # keep its entry. (A busy key that empties and refills on every
                # job pays a dict delete and insert for it, which costs less
                # than popping the dead entry it drops would.)
                del ready[heap_key]
            elif len(heap.entries) > 2 * heap.live + COMPACT_SLACK:
                heap.entries = [e for e in heap.entries if self._live_entry(e)]
                heapq.heapify(heap.entries)

    def _live_entry(self, entry: tuple[int, int, int, UUID]) -> bool:
        job = self._jobs.get(entry[3])
        return job is not None and job.ready_key == entry[2]

    def _head(self, heap: ReadyHeap) -> tuple[int, int, int, UUID] | None:
        entries = heap.entries
        while entries:
            if self._live_entry(entries[0]):
                return entries[0]
            heapq.heappop(entries)
        return None

    def _oldest_ready(
        self, job_types: tuple[str, ...], channels: tuple[str, ...] | None
    ) -> JobEntry | None:
        best: tuple[int, int, int, UUID] | None = None
        ready = self._ready
        for job_type in job_types:
            if channels is not None and len(channels) > 1:
                # the type's any-channel heap holds every ready job of the type:
                # with none ready, none of its channels needs a look
                every = ready.get((job_type, ANY_CHANNEL))
                if every is None or not every.live:
                    continue
            for channel in (ANY_CHANNEL,) if channels is None else channels:
                heap = ready.get((job_type, channel))
                if heap is None or not heap.live:
                    continue
                head = self._head(heap)
                if head is not None and (best is None or head < best):
                    best = head
        return None if best is None else self._jobs[best[3]]

    @staticmethod
    def _waiter_keys(waiter: Waiter) -> Iterator[TypeKey]:
        for job_type in waiter.types:
            if waiter.channels is None:
                yield (job_type, ANY_CHANNEL)
            else:
                for channel in waiter.channels:
                    yield (job_type, channel)

    def _retire_waiter(self, waiter: Waiter) -> None:
        waiter.active = False
        for key in self._waiter_keys(waiter):
            queue = self._waiters[key]
            queue.live -= 1
            if not queue.live:
                # every entry left is dead: keys of departed waiters must not pile up
                del self._waiters[key]
            elif len(queue.waiters) > 2 * queue.live + COMPACT_SLACK:
                queue.waiters = deque(w for w in queue.waiters if w.active)

    def _oldest_waiter(self, job: JobEntry) -> Waiter | None:
        best: Waiter | None = None
        for key in ((job.type, job.channel), (job.type, ANY_CHANNEL)):
            queue = self._waiters.get(key)
            if queue is None:
                continue
            waiters = queue.waiters
            while waiters and not waiters[0].active:
                waiters.popleft()
            if waiters and (best is None or waiters[0].id < best.id):
                best = waiters[0]
        return best
