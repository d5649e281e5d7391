"""A job's dependency graph, laid out in columns and drawn as SVG on the server.

Each job stands in the column one past its deepest dependency in the graph,
so every edge runs left to right, from a dependency to the job that needs it.
Nodes are links to their job's page, coloured by state (``state-<name>``
classes in ``dashboard.css``) and carry ``data-job`` and ``data-state``
attributes. No JavaScript is involved.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping
    from uuid import UUID

__all__ = ["Node", "render_svg"]

NODE_W, NODE_H = 150, 40
GAP_X, GAP_Y = 60, 16
PAD = 10


class Node(NamedTuple):
    """One job of the graph: what the drawing shows of it."""

    id: UUID
    type: str
    state: str  # a JobState value
    dependencies: tuple[UUID, ...]  # those inside the graph


def _columns(nodes: Mapping[UUID, Node]) -> dict[UUID, int]:
    column: dict[UUID, int] = {}

    def depth(job_id: UUID) -> int:
        # iterative: a chain of thousands must not hit the recursion limit
        stack = [job_id]
        while stack:
            current = stack[-1]
            if current in column:
                stack.pop()
                continue
            missing = [d for d in nodes[current].dependencies if d not in column]
            if missing:
                stack.extend(missing)
                continue
            deps = nodes[current].dependencies
            column[current] = 1 + max((column[d] for d in deps), default=-1)
            stack.pop()
        return column[job_id]

    for job_id in nodes:
        depth(job_id)
    return column


def render_svg(nodes: Mapping[UUID, Node], current: UUID, href: str = "/jobs/") -> str:
    """The graph of ``nodes`` as an ``<svg>`` element; ``current`` is outlined."""
    column = _columns(nodes)
    rows: dict[int, list[UUID]] = {}
    for job_id in nodes:  # the caller's order (enqueue order) within a column
        rows.setdefault(column[job_id], []).append(job_id)
    place: dict[UUID, tuple[int, int]] = {}
    for col, ids in rows.items():
        for row, job_id in enumerate(ids):
            place[job_id] = (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    width = PAD * 2 + (max(rows, default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max((len(ids) for ids in rows.values()), default=1) * (NODE_H + GAP_Y)
    parts = [
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height - GAP_Y}" viewBox="0 0 {width} {height - GAP_Y}" role="img" '
        'aria-label="dependency graph">'
    ]
    for job_id, node in nodes.items():
        x2, y2 = place[job_id]
        for dep in node.dependencies:
            x1, y1 = place[dep]
            parts.append(
                f'<line class="edge" x1="{x1 + NODE_W}" y1="{y1 + NODE_H // 2}" '
                f'x2="{x2}" y2="{y2 + NODE_H // 2}"/>'
            )
    for job_id, node in nodes.items():
        x, y = place[job_id]
        short = str(job_id)[:8]
        label = node.type if len(node.type) <= 18 else node.type[:17] + "…"
        outline = " current" if job_id == current else ""
        parts.append(
            f'<a href="{href}{job_id}" data-job="{job_id}" data-state="{escape(node.state)}">'
            f"<title>{escape(node.type)} {job_id} ({escape(node.state)})</title>"
            f'<rect class="node state-{escape(node.state)}{outline}" x="{x}" y="{y}" '
            f'width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 16}">{escape(label)}</text>'
            f'<text class="sub" x="{x + 8}" y="{y + 32}">{short} · {escape(node.state)}</text>'
            "</a>"
        )
    parts.append("</svg>")
    return "".join(parts)
