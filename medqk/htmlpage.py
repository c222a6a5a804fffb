"""Self-contained HTML reports: one file, pictures embedded as PNG data URIs, no scripts."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right} th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:1rem} figure{margin:0;text-align:center} figcaption{font-size:.85rem;color:#444;max-width:220px}
img.tile{width:200px;height:200px;image-rendering:pixelated;border:1px solid #ccc} img.chart{max-width:100%}
.ok{color:#1a7f37;font-weight:600} .bad{color:#b42318;font-weight:600} .note{font-size:.85rem;color:#555}
"""


@dataclass
class Section:
    title: str
    body: list[str] = field(default_factory=list)

    def add(self, fragment: str) -> "Section":
        self.body.append(fragment)
        return self


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_png(array: np.ndarray) -> bytes:
    """PNG bytes of an H x W (grey, or bool mask) or H x W x 3 RGB array; floats are taken in [0, 1]."""
    from PIL import Image

    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def tile(array: np.ndarray, caption: str) -> str:
    return (f'<figure><img class="tile" alt="{html.escape(caption)}" src="{png_uri(image_png(array))}">'
            f"<figcaption>{caption}</figcaption></figure>")


def chart(png: bytes, alt: str) -> str:
    return f'<img class="chart" alt="{html.escape(alt)}" src="{png_uri(png)}">'


def table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p class=\"sub\">{subtitle}</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>" + "".join(s.body))
    parts.append("</body></html>")
    return "".join(parts)
