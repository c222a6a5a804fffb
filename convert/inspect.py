"""Human views of a converted model: the node table and a drawing of the graph."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from medqk.convert.graph import Graph
from medqk.convert.serialize import ConvertedModel
from medqk.errors import InputError


def node_rows(model: ConvertedModel) -> list[dict]:
    """One row per node of the integer graph, with its float twin's parameter count."""
    rows = []
    for node in model.int_graph.nodes():
        in_shapes = [model.int_graph[i].tensor.shape for i in node.inputs]
        op = node.op
        params = sum(int(a.size) for k, a in model.float_graph[node.name].op.arrays().items()) if node.name in model.float_graph else 0
        quant = ""
        if op.type == "conv2d":
            quant = f"w 8b*2^{op.weight_exponent} >>{op.shift}"
        elif op.type == "nisf" and op.threshold is not None:
            quant = f"x >= {op.threshold_int}"
        elif op.type == "nisf":
            quant = f"x*{op.multiplier} >>{op.shift} clip 0..{op.levels}"
        elif op.type == "affine":
            quant = f"16b >>{op.shift}"
        elif node.tensor.frac_bits is not None:
            quant = f"Q.{node.tensor.frac_bits}"
        rows.append({
            "name": node.name, "op": op.type, "inputs": node.inputs, "in_shapes": [list(s) for s in in_shapes],
            "shape": list(node.tensor.shape), "kind": node.tensor.kind, "depth": node.depth, "params": params,
            "macs": op.dense_macs(in_shapes[0]) if op.synaptic else 0, "quantization": quant,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("#", "name", "op", "shape", "kind", "params", "MACs", "quantization")
    body = [(str(i), r["name"], r["op"], "x".join(map(str, r["shape"])), r["kind"], f"{r['params']:,}",
             f"{r['macs']:,}" if r["macs"] else "", r["quantization"]) for i, r in enumerate(rows)]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(model: ConvertedModel) -> dict:
    g = model.int_graph
    ops = Counter(n.op.type for n in g.nodes())
    kinds = Counter(n.tensor.kind for n in g.nodes())
    params = sum(int(a.size) for n in model.float_graph.nodes() for a in n.op.arrays().values())
    return {"nodes": len(g), "ops": dict(sorted(ops.items())), "tensor_kinds": dict(kinds),
            "parameters": params, "depth": max(n.depth for n in g.nodes()),
            "image_size": list(model.image_size)}


def lava_rows(model: ConvertedModel) -> list[dict]:
    """One row per process of the model's Lava library graph (``deploy.lava_graph``): name, class,
    library ("lava" or "medqk"), shape (W, H, C), weight_bits, weight_exp, message_bits, delay,
    valid_step (the step at which its output is valid), the IR node it computes and its inputs."""
    from medqk.deploy.lava_graph import lower

    return [spec.row() for spec in lower(model.int_graph).processes]


def format_lava_table(rows: list[dict]) -> str:
    header = ("#", "name", "class", "library", "shape", "weight bits", "weight exp", "message bits", "delay", "valid at")
    show = lambda v: "" if v is None else str(v)  # noqa: E731
    body = [(str(i), r["name"], r["class"], r["library"], "x".join(map(str, r["shape"])), show(r["weight_bits"]),
             show(r["weight_exp"]), show(r["message_bits"]), str(r["delay"]) if r["delay"] else "", str(r["valid_step"]))
            for i, r in enumerate(rows)]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lava = sum(r["library"] == "lava" for r in rows)
    lines.append(f"\n{len(rows)} processes ({lava} of Lava's library, {len(rows) - lava} medqk's), "
                 f"{max(r['valid_step'] for r in rows)} time steps")
    return "\n".join(lines)


#: file types ``draw`` writes
DRAW_SUFFIXES = (".svg", ".png")


def draw(graph: Graph, path: Path) -> Path:
    """Draw ``graph`` layered by depth to an SVG or PNG file (spike tensors orange, real blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    path = Path(path)
    if path.suffix.lower() not in DRAW_SUFFIXES:
        raise InputError(f"--draw {path}: use a .svg or .png file name")
    g = nx.DiGraph()
    for node in graph.nodes():
        g.add_node(node.name, layer=node.depth)
        for i in node.inputs:
            g.add_edge(i, node.name)
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal", scale=1.0)
    pos = {k: (x, -y) for k, (x, y) in pos.items()}  # input on top
    depth = max(n.depth for n in graph.nodes()) + 1
    fig, ax = plt.subplots(figsize=(14, max(8, depth * 0.35)))
    colors = ["#f28e2b" if graph[n].tensor.kind == "spike" else "#4e79a7" for n in g.nodes]
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=False, width=0.4, alpha=0.5)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=40, node_color=colors)
    labels = {n: graph[n].op.type for n in g.nodes}
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=5)
    ax.set_title(f"spike-graph IR: {len(graph)} nodes, depth {depth} (orange: integer spike maps, blue: real values)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
