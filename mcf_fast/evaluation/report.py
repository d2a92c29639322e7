"""The Markdown report of an evaluation: our numbers beside the paper's."""

from __future__ import annotations

import json
from typing import Any

from mcf_fast.evaluation.paper import PAPER
from mcf_fast.evaluation.provenance import machine_line as _machine_line

__all__ = ["results_markdown"]


_SEG_KEYS = ("PA", "MPA", "IoU", "FWIoU", "Dice")
_MAIN_KEYS = (
    "PA",
    "MPA",
    "IoU",
    "FWIoU",
    "Dice",
    "P@6",
    "R@6",
    "F1@6",
    "P@12",
    "R@12",
    "F1@12",
    "AJI",
    "PQ",
)
_LABELS = {
    "mcf": "MCF (ours)",
    "watershed": "watershed baseline (ours)",
    "supervised": "supervised U-Net (ours)",
    "detector": "detection branch (ours)",
}


def _pct(v: Any) -> str:
    return "" if v is None else f"{100.0 * float(v):.2f}"


def _paper(v: Any) -> str:
    return "" if v is None else f"*{float(v):.2f}*"


def results_markdown(report: dict[str, Any]) -> str:
    """The ``results.md`` text of a results dict (our numbers beside the paper's)."""
    lines = ["# mcf_fast evaluation", ""]
    n_test = report.get("n_test")
    lines += [
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}",
        f"- Machine: {_machine_line(report['machine'])}",
        f"- mcf_fast: {report.get('mcf_fast', '')}",
        f"- Wall time: {report.get('wall_s', 0):.0f} s"
        + ("" if report.get("complete") else " (incomplete: still running or interrupted)"),
        f"- Data: `{report['data']}` (train {report['n_train']} images, test {n_test} images"
        + (", LIMITED subset" if report.get("limited") else "")
        + ")",
        f"- Templates: {report['n_templates']} from the train split, seed {report['seed']} "
        f"(`{report['templates_file']}`); preset `{report['preset']}`, device "
        f"`{report['device']}`",
    ]
    for mode, d in report.get("stain", {}).items():
        lines.append(f"- Stain `{mode}`: {d['method']} fitted on train image `{d['reference']}`")
    lines += [
        "",
        "All numbers are percentages, aggregated over the test split (sums of counts, then the",
        "formulas of `mcf_fast.metrics`). Paper rows (*italic*) are MICCAI18 = MoNuSeg, "
        "Tables 1-2;",
        "the paper does not state its detection matching radius: its P/R/F sit under @12.",
        "",
    ]
    runs = report.get("runs", [])
    main = [r for r in runs if r["section"] == "main"]
    head = "| method | stain | " + " | ".join(_MAIN_KEYS) + " | fit s | wall s |"
    sep = "|---|---|" + "---:|" * (len(_MAIN_KEYS) + 2)
    lines += ["## Main results", "", head, sep]
    for r in main:
        a = r["aggregate"]
        vals = " | ".join(_pct(a.get(k)) for k in _MAIN_KEYS)
        lines.append(
            f"| {_LABELS.get(r['method'], r['method'])} | {r['stain']} | {vals} | "
            f"{r.get('fit_s', '')} | {r['wall_s']} |"
        )
    t1, t2 = PAPER["table1"], PAPER["table2"]
    for name, det in (("MCF", t2["MCF"]), ("U-Net (supervised)", None), ("Detection", None)):
        seg = t1[name]
        cells = [_paper(seg.get(k)) for k in _SEG_KEYS] + ["", "", ""]
        cells += [_paper(det["P"]), _paper(det["R"]), _paper(det["F"])] if det else ["", "", ""]
        cells += ["", ""]
        lines.append(f"| *paper: {name}* | Vahadane | " + " | ".join(cells) + " | | |")
    lines.append("")
    with_det = [r for r in runs if "detector_centres" in r]
    if with_det:
        keys = ("P@6", "R@6", "F1@6", "P@12", "R@12", "F1@12")
        lines += [
            "Detection scored on the detector's own centres (the rows above use the "
            "centroids of the predicted instances):",
            "",
            "| run | stain | " + " | ".join(keys) + " |",
            "|---|---|" + "---:|" * 6,
        ]
        for r in with_det:
            d = r["detector_centres"]
            name = " ".join(x for x in (_LABELS.get(r["method"], r["method"]), r["variant"]) if x)
            lines.append(
                f"| {name} | {r['stain']} | " + " | ".join(_pct(d.get(k)) for k in keys) + " |"
            )
        lines.append("")

    det_rows = [r for r in runs if r["section"] == "ablation-detection"]
    if det_rows:
        lines += [
            "## Ablation: detection branch (Table 3)",
            "",
            "Detection branch alone (initial templates, no loop); paper values in italics.",
            "",
            "| switch | P@6 | R@6 | F1@6 | P@12 | R@12 | F1@12 | paper P | paper R | "
            "paper F | wall s |",
            "|---|" + "---:|" * 10,
        ]
        for r in det_rows:
            a = r["aggregate"]
            p = PAPER["table3_detection"].get(r["variant"], {})
            vals = " | ".join(
                _pct(a.get(k)) for k in ("P@6", "R@6", "F1@6", "P@12", "R@12", "F1@12")
            )
            pv = " | ".join(_paper(p.get(k)) for k in ("P", "R", "F"))
            lines.append(f"| {r['variant']} | {vals} | {pv} | {r['wall_s']} |")
        lines.append("")
    seg_rows = [r for r in runs if r["section"] == "ablation-segmentation"]
    if seg_rows:
        ref = [r for r in main if r["method"] == "mcf" and r["stain"] == seg_rows[0]["stain"]]
        keys = _SEG_KEYS + ("AJI", "PQ", "F1@12")
        lines += [
            "## Ablation: segmentation branch (Table 3)",
            "",
            "| switch | " + " | ".join(keys) + " | paper PA | paper MPA | paper IoU | "
            "paper FWIoU | paper Dice | wall s |",
            "|---|" + "---:|" * (len(keys) + 6),
        ]
        for r in ref[:1] + seg_rows:
            variant = r["variant"] or "MCF"
            a = r["aggregate"]
            p = PAPER["table3_segmentation"].get(variant, {})
            vals = " | ".join(_pct(a.get(k)) for k in keys)
            pv = " | ".join(_paper(p.get(k)) for k in _SEG_KEYS)
            wall = "= MCF row" if r.get("same_as_main") else r["wall_s"]
            lines.append(f"| {variant} | {vals} | {pv} | {wall} |")
        if any(r.get("same_as_main") for r in seg_rows):
            lines += [
                "",
                "`= MCF row`: the switch is already off in this preset, so the "
                "run is the MCF row's (not fitted twice).",
            ]
        lines.append("")
    sweep = [r for r in runs if r["section"] == "sweep"]
    if sweep:
        keys = ("P@12", "R@12", "F1@12", "IoU", "Dice", "AJI", "PQ")
        lines += [
            "## Number of templates (Fig. 5)",
            "",
            "The paper shows this sweep only as a figure (no numbers in its text).",
            "",
            "| templates | final templates | " + " | ".join(keys) + " | wall s |",
            "|---:|---:|" + "---:|" * (len(keys) + 1),
        ]
        for r in sweep:
            a = r["aggregate"]
            vals = " | ".join(_pct(a.get(k)) for k in keys)
            wall = "= main run" if r.get("same_as_main") else r["wall_s"]
            lines.append(
                f"| {r['n_templates']} | {r.get('n_templates_final', '')} | {vals} | {wall} |"
            )
        lines.append("")
    ws = [r for r in main if r["method"] == "watershed"]
    if ws:
        lines += ["## Watershed parameters", ""]
        for r in ws:
            tun = r.get("tuning")
            how = (
                (
                    f"tuned on the train split ({tun['n_evaluated']} settings, objective "
                    f"{tun['objective']}, central {tun['crop']} px crops, score "
                    f"{tun['train_score']:.4f})"
                )
                if tun
                else "given"
            )
            lines.append(f"- stain `{r['stain']}`: `{json.dumps(r['params'])}`, {how}")
        lines.append("")
    lines += [
        "Predictions: `<folder>/<image>.png` (instance labels) and `<image>.csv` "
        "(centres), re-scorable with `mcf score --data ROOT/test --pred OUT/<folder>`:",
        "",
    ]
    for r in runs:
        lines.append(f"- `{r['pred_dir']}`: {r['method']} {r['variant']} [{r['stain']}]")
    lines.append("")
    return "\n".join(lines)
