"""The web dashboard of ``actorq serve --dashboard-port`` (the ``dashboard`` extra).

See ``docs/dashboard.md``. :func:`~._app.serve_dashboard` serves a
:class:`~._app.Dashboard` with Hypercorn on trio, in the server's own process.
"""
