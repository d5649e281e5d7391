"""Prometheus metrics of an actorq queue.

::

    metrics = actorq.metrics.QueueMetrics()
    async with actorq.open_queue("sqlite:///q.db", metrics=metrics) as queue:
        actorq.metrics.start_http_server(9108, metrics.registry)
        ...

See :class:`QueueMetrics` for the list of metrics. They follow the queue's
state-change events, counted after each committed batch; a scrape from any
thread reads an immutable snapshot the queue published, never the queue.
"""

from ._actor._metrics import QueueMetrics, exposition, is_error_result, start_http_server

__all__ = ["QueueMetrics", "exposition", "is_error_result", "start_http_server"]
