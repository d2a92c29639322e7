"""``mcf evaluate``: the paper's evaluation protocol on a dataset with train/test splits."""

from __future__ import annotations

import shlex

import click
from click.core import ParameterSource

from mcf_fast.cli.common import device_option


def _command_line(ctx: click.Context) -> str:
    """The invocation as typed: the options given on the command line, in declared order."""
    parts = [ctx.command_path]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        flag = param.opts[0]
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            parts.append(flag)
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


@click.command("evaluate")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Dataset root holding train/ and test/ (images/ + masks/ each).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder: results.md, results.json, templates.json, predictions.",
)
@click.option(
    "--n-templates",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Templates chosen from the train split.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the template selection (and of training).",
)
@click.option(
    "--preset", default="quick", show_default=True, help="Configuration preset: quick or paper."
)
@click.option(
    "--method",
    "methods",
    default="mcf,watershed",
    show_default=True,
    help="Comma-separated methods: mcf, watershed, supervised.",
)
@click.option(
    "--supervised", is_flag=True, help="Also train the U-Net on the train masks (the upper bound)."
)
@click.option(
    "--ablation",
    is_flag=True,
    help="Run the Table 3 switches (detection: -CFF, -MFF, H=1, mean, -GDBP; "
    "segmentation: -seg., -self., -syn., CE, +weig.).",
)
@click.option(
    "--templates-sweep",
    default="",
    metavar="N1,N2,...",
    help="Template counts for the Fig. 5 sweep, e.g. 1,2,4,8,10,16.",
)
@click.option(
    "--stain",
    default="none",
    show_default=True,
    metavar="MODE1,MODE2",
    help="Stain normalisation modes to report: none, auto, macenko, vahadane "
    "(e.g. none,auto for with and without).",
)
@device_option("Device of the U-Net: cpu or cuda[:N].")
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=1),
    help="Use only the first N images of each split (a quick check; the results say so).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue interrupted MCF fits from their checkpoints in OUT/checkpoints.",
)
@click.option(
    "--seeds",
    default="0,1,2",
    show_default=True,
    metavar="S1,S2,...",
    help="Template seeds of the multi-dataset protocol (DATA holding several datasets).",
)
@click.option(
    "--datasets",
    default="",
    metavar="NAME1,NAME2",
    help="Multi-dataset protocol: fit only these datasets (all are used for transfer).",
)
@click.option(
    "--reference",
    default="monuseg",
    show_default=True,
    help="Multi-dataset protocol: the dataset whose train split tunes the reference watershed.",
)
@click.option("--no-transfer", is_flag=True, help="Multi-dataset protocol: skip transfer rows.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def evaluate(
    data: str,
    out: str,
    n_templates: int,
    seed: int,
    preset: str,
    methods: str,
    supervised: bool,
    ablation: bool,
    templates_sweep: str,
    stain: str,
    device: str,
    limit: int | None,
    resume: bool,
    seeds: str,
    datasets: str,
    reference: str,
    no_transfer: bool,
    no_progress: bool,
) -> None:
    """Fit on ROOT/train (templates from its masks, images without them), score ROOT/test.

    Writes OUT/results.md (our numbers beside the paper's Tables 1-3, with the machine,
    date, command and wall time), OUT/results.json, OUT/templates.json and the predictions
    of each method under OUT/<method>/, which
    `mcf score --data ROOT/test --pred OUT/<method>` re-scores.
    The watershed baseline's parameters are tuned on the train masks only.

    When DATA holds several datasets instead (folders with train/ and test/, or images/
    and masks/), the multi-dataset protocol runs: every dataset, every seed of --seeds,
    MCF beside a watershed tuned on the --reference dataset and one set from the templates
    alone, pseudo-label quality, and transfer between datasets; OUT/protocol.md holds the
    table (see mcf_fast.evaluation.protocol).  Finished (dataset, seed) runs are kept.
    """
    from pathlib import Path

    from mcf_fast.evaluation.harness import _parse_list, run_evaluation

    command = _command_line(click.get_current_context())
    if not (Path(data) / "train").is_dir():
        from mcf_fast.evaluation.protocol import run_protocol

        doc = run_protocol(
            data,
            out=out,
            seeds=_parse_list(seeds, name="--seeds", kind=int),
            n_templates=n_templates,
            preset=preset,
            datasets=_parse_list(datasets, name="--datasets") or None,
            reference=reference,
            transfer=not no_transfer,
            device=device,
            progress=not no_progress,
            command=command,
        )
        for name, d in doc["datasets"].items():
            for seed, r in sorted(d["seeds"].items()):
                a = r["mcf"]
                click.echo(
                    f"{name:10s} seed {seed}: MCF Dice {a['Dice']:.4f}  AJI {a['AJI']:.4f}  "
                    f"F1@12 {a['F1@12']:.4f}"
                )
        click.echo(f"results: {out}/protocol.md")
        return
    report = run_evaluation(
        data,
        out=out,
        n_templates=n_templates,
        seed=seed,
        preset=preset,
        methods=methods,
        supervised=supervised,
        ablation=ablation,
        templates_sweep=templates_sweep,
        stain=stain,
        device=device,
        limit=limit,
        progress=not no_progress,
        resume=resume,
        command=command,
    )
    for r in report["runs"]:
        a = r["aggregate"]
        name = " ".join(x for x in (r["method"], r["variant"], f"[{r['stain']}]") if x)
        click.echo(
            f"{name:32s} Dice {a['Dice']:.4f}  IoU {a['IoU']:.4f}  "
            f"F1@12 {a['F1@12']:.4f}  AJI {a['AJI']:.4f}  PQ {a['PQ']:.4f}  "
            f"({r['wall_s']:.0f} s)"
        )
    click.echo(f"results: {out}/results.md")
