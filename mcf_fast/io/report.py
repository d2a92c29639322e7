"""A self-contained HTML report: pictures embedded as PNG, a summary and a nucleus table."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mcf_fast.io.images import atomic_path

__all__ = ["html_report"]

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 480px; border: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
dt { font-weight: bold; } dd { margin: 0 0 0.5em 1em; }
"""


def _png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    return "" if not math.isfinite(f) else f"{f:.4g}"


def html_report(
    path: str | os.PathLike,
    *,
    title: str,
    summary: Sequence[tuple[str, str]],
    pictures: Sequence[tuple[str, np.ndarray]],
    table: dict[str, np.ndarray] | None = None,
    columns: Sequence[str] = (),
    max_rows: int = 500,
) -> Path:
    """Write one HTML file holding everything (no side files), atomically.

    Parameters
    ----------
    path : path-like
    title : str
    summary : sequence of (name, value)
        Shown as a definition list.
    pictures : sequence of (caption, ndarray (H, W, 3) uint8)
        Embedded as PNG.
    table : dict of ndarray, optional
        Columns of equal length (e.g. a nucleus table); ``columns`` says which, in order.
    max_rows : int
        Rows shown; the rest are counted in a note.

    Returns
    -------
    Path
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<dl>",
    ]
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in summary]
    parts.append("</dl>")
    for caption, img in pictures:
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{_png_base64(img)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if table is not None and columns:
        n = len(table[columns[0]])
        parts.append(f"<h2>Nuclei ({n})</h2><table><thead><tr>")
        parts += [f"<th>{html.escape(c)}</th>" for c in columns]
        parts.append("</tr></thead><tbody>")
        for j in range(min(n, max_rows)):
            cells = "".join(f"<td>{_cell(table[c][j])}</td>" for c in columns)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
        if n > max_rows:
            parts.append(f"<p>{n - max_rows} more rows in the CSV.</p>")
    parts.append("</body></html>\n")
    final = Path(path)
    with atomic_path(final) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return final
