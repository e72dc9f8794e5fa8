"""Pictures and pages for people: an explanation as a bar chart, a scored batch as HTML.

``explanation_chart`` draws what
[`ScrubbingDetector.explain`][causalmad.ScrubbingDetector.explain] returns: the explanations
whose scrub moved the output most (standardised against trusted inputs) and each hypothesis
variable's share. ``html_report`` writes one self-contained page (images embedded as data
URIs, no scripts, no network) for a scored batch: the score histogram with the flag
threshold beside held-out trusted scores, the top flagged inputs with their explanations,
and the alignment's IIA table.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def explanation_chart(why: dict[str, Any], path: str | Path | None = None) -> bytes:
    """A PNG bar chart of one explanation; written to ``path`` if given, and returned."""
    plt = _pyplot()
    broken = why.get("broken", [])
    variables = why.get("variables", [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(broken), len(variables), 3) + 1.6))
    ax = axes[0]
    names = [b["explanation"] for b in broken][::-1]
    zs = [b["z"] if b["z"] is not None else 0.0 for b in broken][::-1]
    ax.barh(range(len(zs)), zs, color=["#c0392b" if z > 0 else "#7f8c8d" for z in zs])
    ax.set_yticks(range(len(names)), [n if len(n) < 48 else n[:45] + "…" for n in names], fontsize=8)
    ax.set_xlabel("z: divergence vs trusted (std units)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_title("explanations that broke most")
    ax = axes[1]
    vnames = [v["variable"] for v in variables][::-1]
    shares = [v["share"] for v in variables][::-1]
    ax.barh(range(len(shares)), shares, color="#2c7fb8")
    ax.set_yticks(range(len(vnames)), vnames)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of excess divergence when scrubbed alone")
    ax.set_title("each variable's scrub")
    flag = "FLAGGED" if why.get("flagged") else "not flagged"
    fig.suptitle(
        f"score {why.get('score', float('nan')):.3g} (threshold {why.get('threshold', float('nan')):.3g}"
        f" at FPR {why.get('fpr')}) — {flag}",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    png = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png


def _histogram(scores: np.ndarray, trusted: np.ndarray, threshold: float, fpr: float) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    finite = scores[np.isfinite(scores)]
    both = np.concatenate([finite, trusted[np.isfinite(trusted)]])
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    spread = max(abs(lo), abs(hi), 1.0)
    symlog = spread > 50  # scrubbing z-scores span orders of magnitude
    if symlog:
        edges = np.unique(
            np.concatenate(
                [
                    -np.geomspace(1, max(-lo, 1) + 1, 20)[::-1],
                    np.linspace(-1, 1, 5),
                    np.geomspace(1, max(hi, 1) + 1, 40),
                ]
            )
        )
        ax.set_xscale("symlog", linthresh=1.0)
    else:
        edges = np.linspace(lo, hi + 1e-9, 50)
    # fractions, not densities: on a log axis wide bins would flatten the anomalies' bars
    ax.hist(
        trusted,
        bins=edges,
        alpha=0.6,
        label=f"held-out trusted (n={len(trusted)})",
        color="#7f8c8d",
        weights=np.full(len(trusted), 1 / max(len(trusted), 1)),
    )
    ax.hist(
        finite,
        bins=edges,
        alpha=0.6,
        label=f"this batch (n={len(scores)})",
        color="#2c7fb8",
        weights=np.full(len(finite), 1 / max(len(finite), 1)),
    )
    ax.axvline(threshold, color="#c0392b", lw=2, label=f"threshold at FPR {fpr}")
    ax.set_xlabel("score (higher = more anomalous)")
    ax.set_ylabel("fraction of inputs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}"
    return html.escape(str(x))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.num{text-align:right}
.bar{display:inline-block;height:.8em;background:#2c7fb8;vertical-align:middle}
.flag{color:#c0392b;font-weight:bold}code{font-size:.85em}.small{color:#666;font-size:.85em}
"""


def html_report(
    detector: Any,
    inputs: torch.Tensor,
    scores: np.ndarray,
    ids: Sequence[Any] | None = None,
    fpr: float = 0.01,
    top: int = 10,
    title: str = "causalmad report",
) -> str:
    """A self-contained HTML page about a scored batch (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    ids = list(ids) if ids is not None else list(range(len(scores)))
    threshold = detector.threshold(fpr)
    flagged = scores > threshold
    trusted = np.asarray(detector.heldout_scores_, dtype=np.float64)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    parts.append(
        _table(
            ["detector", "inputs", "flagged", "false-positive rate", "threshold"],
            [
                [
                    html.escape(detector.name),
                    len(scores),
                    f"<span class='flag'>{int(flagged.sum())}</span>",
                    fpr,
                    f"{threshold:.4g}",
                ]
            ],
            "summary",
        )
    )
    parts.append(
        "<h2 id='histogram'>Scores</h2><p class='small'>The threshold is the (1 − FPR) quantile of "
        "scores of trusted inputs held out of fitting; never set on this batch.</p>"
    )
    parts.append(_img(_histogram(scores, trusted, threshold, fpr), "score histogram with threshold"))

    order = [int(i) for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf)) if flagged[i]][:top]
    parts.append(f"<h2 id='flagged'>Top flagged inputs ({len(order)} of {int(flagged.sum())})</h2>")
    if not order:
        parts.append("<p>No input scored above the threshold.</p>")
    for rank, i in enumerate(order, 1):
        row = inputs[i].tolist()
        parts.append(
            f"<h3>#{rank}: input {i} (id {html.escape(str(ids[i]))}) — score {scores[i]:.4g}</h3>"
            f"<p><code>{html.escape(str(row))}</code></p>"
        )
        why = detector.explain(inputs[i], top=5, fpr=fpr).to_dict()
        if why.get("sites"):
            parts.append(
                _table(
                    ["site", "z"],
                    [[html.escape(str(s_["site"])), _fmt(s_["z"])] for s_ in why["sites"]],
                    "sites",
                )
            )
        if "broken" not in why:
            continue
        parts.append(
            _table(
                ["explanation that broke", "family", "divergence (nats)", "trusted mean", "z"],
                [
                    [
                        html.escape(b["explanation"]),
                        b["family"],
                        _fmt(b["divergence"]),
                        _fmt(b["trusted_mean"]),
                        _fmt(b["z"]),
                    ]
                    for b in why["broken"]
                ],
                "broken",
            )
        )
        if why["variables"]:
            parts.append(
                _table(
                    ["variable scrubbed alone", "divergence (nats)", "trusted mean", "z", "share"],
                    [
                        [
                            html.escape(v["variable"]),
                            _fmt(v["divergence"]),
                            _fmt(v["trusted_mean"]),
                            _fmt(v["z"]),
                            f"<span class='bar' style='width:{100 * v['share']:.0f}px'></span> "
                            f"{v['share']:.0%}",
                        ]
                        for v in why["variables"]
                    ],
                    "variables",
                )
            )
        values = ", ".join(f"{html.escape(k)}={html.escape(str(v))}" for k, v in why["values"].items())
        unseen = why["values_unseen_in_trusted"]
        parts.append(
            f"<p class='small'>hypothesis values: {values or 'n/a'}"
            + (
                f"; <span class='flag'>never seen in trusted data: {html.escape(', '.join(unseen))}</span>"
                if unseen
                else ""
            )
            + "</p>"
        )

    alignment = getattr(detector, "alignment_", None)
    parts.append("<h2 id='alignment'>Alignment</h2>")
    if alignment is not None:
        rows = []
        for var in alignment.variables:
            for rank, c in enumerate(alignment.candidates[var][:3]):
                rows.append(
                    [
                        html.escape(var) if rank == 0 else "",
                        html.escape(c.key),
                        f"{c.iia:.3f}",
                        "n/a" if c.heldout_iia is None or np.isnan(c.heldout_iia) else f"{c.heldout_iia:.3f}",
                    ]
                )
        parts.append(
            "<p class='small'>Each inner variable's best candidate sites by interchange-intervention "
            "accuracy on the alignment split, and held-out IIA of the best.</p>"
        )
        parts.append(_table(["variable", "site", "IIA (alignment split)", "held-out IIA"], rows, "iia"))
    else:
        parts.append("<p>This detector has no aligned hypothesis.</p>")
    if hasattr(detector, "summary"):
        summary = detector.summary()
        parts.append("<h2 id='explanations'>Explanations</h2>")
        parts.append(
            _table(
                ["family", "searched", "valid"],
                [[html.escape(k), v["searched"], v["valid"]] for k, v in summary["by_family"].items()]
                + [["<b>all</b>", summary["searched"], summary["valid"]]],
                "families",
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)
