"""A picture of one pruned attribution graph from circuit-tracer's graph file (`<slug>.json`), drawn offline.

Token positions run across (labelled with the prompt's tokens), rows go up from the embeddings
through the model's layers to the top logits (labelled with their `clerp`). Within a cell of one
position and one row, features sit to the left and the error node, a grey diamond, to the right.
An edge's width and opacity grow with |weight| (relative to the graph's largest); its colour gives the sign.
"""

import json
import warnings
from pathlib import Path

from pipeline.atomic import write_atomic

_POSITIVE, _NEGATIVE = "tab:blue", "tab:red"
_EMBEDDING, _LOGIT, _ERROR = "embedding", "logit", "mlp reconstruction error"
_MAX_WIDTH = 3.0  # points: the width of the graph's strongest edge
_DPI = 110


def draw(graph_json: Path, out: Path) -> None:
    """Writes the picture of the graph in `graph_json` to the PNG `out`, whole or not at all."""
    fig = figure(graph_json)
    with warnings.catch_warnings():  # a token the font has no glyph for is drawn as a box, not worth a warning
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        write_atomic(Path(out), lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png"))


def figure(graph_json: Path):
    """The matplotlib Figure (on an Agg canvas) of the graph in `graph_json`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    graph = json.loads(Path(graph_json).read_text())
    tokens = graph["metadata"]["prompt_tokens"]
    places = _places(graph["nodes"])
    top_row = max((y for _, y in places.values()), default=1.0)
    fig = Figure(figsize=(max(6.0, 1.1 * len(tokens)), max(4.0, 0.55 * top_row + 2)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _draw_links(ax, graph["links"], places)
    _draw_nodes(ax, graph["nodes"], places)
    ax.set_xticks(range(len(tokens)), [repr(token)[1:-1] for token in tokens], rotation=45, ha="right")
    rows = sorted({y for _, y in places.values()})
    ax.set_yticks(rows, [_row_name(y, top_row) for y in rows])
    ax.set_xlim(-0.7, len(tokens) - 0.3)
    ax.set_ylim(-0.6, top_row + 1.2)
    ax.set_title(graph["metadata"]["prompt"][:80])
    ax.set_xlabel("token position")
    fig.tight_layout()
    return fig


def _row(node: dict) -> float:
    """Embeddings at 0, layer l at l + 1, logits (layer n_layers + 1) at n_layers + 1."""
    return 0.0 if node["layer"] == "E" else float(int(node["layer"]) + (node["feature_type"] != _LOGIT))


def _row_name(y: float, top_row: float) -> str:
    return "embeddings" if y == 0 else "logits" if y == top_row else f"layer {int(y) - 1}"


def _places(nodes: list[dict]) -> dict[str, tuple[float, float]]:
    """{node id: (x, y)}: features spread over the left of their cell, the error node to its right; logits, all
    at the last position, spread across the whole top row."""
    cells: dict[tuple, list[dict]] = {}
    for node in nodes:
        kind = node["feature_type"]
        cells.setdefault((_row(node), node["ctx_idx"], kind == _ERROR, kind == _LOGIT), []).append(node)
    logits = sorted((n for n in nodes if n["feature_type"] == _LOGIT), key=lambda n: -n.get("token_prob", 0.0))
    n_pos = 1 + max((n["ctx_idx"] for n in nodes), default=0)
    places = {n["node_id"]: (_spread(i, len(logits), -0.4, n_pos - 0.6), _row(n)) for i, n in enumerate(logits)}
    for (y, x, error, logit), members in cells.items():
        if logit:
            continue
        left, right = (x + 0.15, x + 0.3) if error else (x, x) if y == 0 else (x - 0.3, x + 0.05)
        ranked = sorted(members, key=lambda n: -abs(n.get("influence") or 0.0))
        places |= {n["node_id"]: (_spread(i, len(ranked), left, right), y) for i, n in enumerate(ranked)}
    return places


def _spread(i: int, n: int, left: float, right: float) -> float:
    return (left + right) / 2 if n == 1 else left + (right - left) * i / (n - 1)


def _draw_links(ax, links: list[dict], places: dict[str, tuple[float, float]]) -> None:
    """Each edge as a line, wider and more opaque as its |weight| nears the graph's largest."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    drawn = [link for link in links if link["source"] in places and link["target"] in places]
    strongest = max((abs(link["weight"]) for link in drawn), default=0.0) or 1.0
    shares = [abs(link["weight"]) / strongest for link in drawn]
    ax.add_collection(
        LineCollection(
            [(places[link["source"]], places[link["target"]]) for link in drawn],
            linewidths=[0.2 + _MAX_WIDTH * share for share in shares],
            colors=[
                to_rgba(_POSITIVE if link["weight"] > 0 else _NEGATIVE, 0.15 + 0.6 * share)
                for link, share in zip(drawn, shares, strict=True)
            ],
            zorder=1,
        )
    )


def _draw_nodes(ax, nodes: list[dict], places: dict[str, tuple[float, float]]) -> None:
    styles = {  # feature type: (marker, colour, label in the legend)
        _EMBEDDING: ("s", "tab:green", "token"),
        _ERROR: ("D", "tab:gray", "error node"),
        _LOGIT: ("^", "tab:purple", "logit"),
    }
    by_style: dict[tuple, list[tuple[float, float]]] = {}
    for node in nodes:
        by_style.setdefault(styles.get(node["feature_type"], ("o", "tab:orange", "feature")), []).append(
            places[node["node_id"]]
        )
    for (marker, colour, label), points in by_style.items():
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, marker=marker, c=colour, s=30, zorder=2, label=label, edgecolors="black", linewidths=0.3)
    for node in nodes:
        if node["feature_type"] == _LOGIT:
            x, y = places[node["node_id"]]
            ax.annotate(node.get("clerp") or node["node_id"], (x, y), (0, 7), textcoords="offset points",
                        ha="center", fontsize=7, rotation=20)  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
