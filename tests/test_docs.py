"""The commands in README.md and docs/*.md against the real command line.

Every ``mcf ...`` and ``python benchmarks/...`` command line shown in the docs (fenced and
indented blocks, and inline code) is parsed by the real parser: unknown options, missing
required options or arguments fail here, so the docs cannot drift from the CLI.  A synopsis
(a block with ``[--option]`` brackets) must also list every option of its command.  Blocks
fenced as ```` ```bash runnable ```` are run for real, line by line, in a fresh folder.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from mcf_fast.cli import cli, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line
    text: str  # one command line (continuations joined)
    kind: str  # "fenced", "runnable", "synopsis", "indented" or "inline"


def _lines_of(block: str) -> list[str]:
    """Command lines of a shell block: comments dropped, continuations and && split."""
    out: list[str] = []
    joined = re.sub(r"\\\n\s*", " ", block)
    lines: list[str] = []
    for line in joined.splitlines():
        if line[:1].isspace() and lines:  # an indented line continues a synopsis
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    for line in lines:
        if not line or line.startswith("#"):
            continue
        out.extend(part.strip() for part in line.split("&&") if part.strip())
    return out


def snippets() -> list[Snippet]:
    found: list[Snippet] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        fence = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)
        for m in fence.finditer(text):
            info = m.group(1).strip().split()
            lang = info[0] if info else ""
            if lang not in SHELL:
                continue
            line_no = text[: m.start()].count("\n") + 2
            kind = "runnable" if "runnable" in info[1:] else "fenced"
            for cmd in _lines_of(m.group(2)):
                if "[" in cmd and cmd.startswith("mcf "):
                    found.append(Snippet(f"{name}:{line_no}", cmd, "synopsis"))
                else:
                    found.append(Snippet(f"{name}:{line_no}", cmd, kind))
        outside = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for i, line in enumerate(outside.splitlines(), start=1):
            if line.startswith("    ") and re.match(r"\s+(nice -n \d+ )?(mcf|python) ", line):
                found.append(Snippet(f"{name}:{i}", line.strip(), "indented"))
        for m in re.finditer(r"`((?:mcf |python benchmarks/|benchmarks/\S+\.py )[^`]*)`", outside):
            cmd = " ".join(m.group(1).split())
            if cmd.startswith("benchmarks/"):
                cmd = "python " + cmd
            line_no = outside[: m.start()].count("\n") + 1
            found.append(Snippet(f"{name}:{line_no}", cmd, "inline"))
    return found


def _tokens(snippet: Snippet) -> list[str]:
    text = snippet.text
    if snippet.kind == "synopsis":
        text = text.replace("[", " ").replace("]", " ")
    tokens = shlex.split(text, comments=True)
    if tokens[:2] == ["nice", "-n"]:
        tokens = tokens[3:]
    # `a|b` is prose for "a or b": take the first
    return [t.split("|")[0] if "|" in t and not t.startswith("|") else t for t in tokens]


def _resolve(tokens: list[str]) -> tuple[click.Command, list[str], click.Context]:
    """The click command a token list names, the remaining tokens and a context."""
    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="mcf")
    rest = tokens[1:]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"no command {rest[0]!r} under {ctx.command_path}"
        ctx = click.Context(sub, info_name=rest[0], parent=ctx)
        cmd, rest = sub, rest[1:]
    return cmd, rest, ctx


def _check_mcf(snippet: Snippet) -> None:
    tokens = _tokens(snippet)
    if len(tokens) > 1 and "/" in tokens[1]:  # `mcf fit/predict` in prose: each of them
        for name in tokens[1].split("/"):
            _check_mcf(Snippet(snippet.where, " ".join(["mcf", name, *tokens[2:]]), "inline"))
        return
    cmd, rest, ctx = _resolve(tokens)
    if any(t in ("--help", "-h", "--version") for t in rest):
        return
    if snippet.kind == "inline":  # prose names a command and some of its options
        known = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
        unknown = [t for t in rest if t.startswith("--") and t.split("=")[0] not in known]
        assert not unknown, f"{snippet.where}: `{snippet.text}`: no such option {unknown}"
        return
    parser = cmd.make_parser(ctx)
    try:
        opts, _, _ = parser.parse_args(args=list(rest))
    except click.UsageError as exc:
        pytest.fail(f"{snippet.where}: `{snippet.text}`: {exc}")
    missing = [
        p.opts[-1] if isinstance(p, click.Option) else p.human_readable_name
        for p in cmd.params
        if p.required and opts.get(p.name) in (None, ())
    ]
    assert not missing, f"{snippet.where}: `{snippet.text}` lacks required {missing}"
    if snippet.kind == "synopsis":
        listed = set(rest)
        absent = [
            p.opts[-1]
            for p in cmd.params
            if isinstance(p, click.Option)
            and not p.hidden
            and p.opts[-1] != "--help"
            and not (set(p.opts) | set(p.secondary_opts)) & listed
        ]
        assert not absent, f"{snippet.where}: the synopsis of `{ctx.command_path}` lacks {absent}"


class _Parsed(Exception):
    pass


def _check_script(snippet: Snippet, monkeypatch) -> None:
    tokens = _tokens(snippet)
    script = ROOT / tokens[1]
    assert script.is_file(), f"{snippet.where}: no script {tokens[1]}"
    if "argparse" not in script.read_text(encoding="utf-8"):
        return  # reads sys.argv itself: only its existence can be checked without running it
    real = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    def no_exit(self, status=0, message=None):
        raise AssertionError(f"{snippet.where}: `{snippet.text}`: {message}")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(argparse.ArgumentParser, "exit", no_exit)
    monkeypatch.setattr(sys, "argv", [str(script), *tokens[2:]])
    with pytest.raises(_Parsed):
        runpy.run_path(str(script), run_name="__main__")


SNIPPETS = snippets()
CHECKED = [s for s in SNIPPETS if s.text.startswith(("mcf ", "python benchmarks/", "nice "))]


def test_the_docs_show_commands():
    kinds = {s.kind for s in CHECKED}
    assert {"fenced", "synopsis", "inline", "indented", "runnable"} <= kinds, kinds
    assert len(CHECKED) > 30


@pytest.mark.parametrize("snippet", CHECKED, ids=[f"{s.where} {s.text[:40]}" for s in CHECKED])
def test_documented_command_parses(snippet, monkeypatch):
    if _tokens(snippet)[0] == "mcf":
        _check_mcf(snippet)
    else:
        _check_script(snippet, monkeypatch)


def test_the_checker_catches_drift():
    with pytest.raises(pytest.fail.Exception, match="No such option"):
        _check_mcf(Snippet("x", "mcf slide s.svs --model m --out o --bogus 1", "fenced"))
    with pytest.raises(AssertionError, match="lacks required"):
        _check_mcf(Snippet("x", "mcf slide s.svs --out o", "fenced"))
    with pytest.raises(AssertionError, match="no such option"):
        _check_mcf(Snippet("x", "mcf predict --bogus", "inline"))
    with pytest.raises(AssertionError, match="synopsis"):
        _check_mcf(Snippet("x", "mcf slide SLIDE --model M --out DIR [--tile 1]", "synopsis"))


def test_the_script_checker_catches_a_missing_required_option(monkeypatch):
    bad = Snippet("x", "python benchmarks/eval_instances.py --model m.mcf --split test", "inline")
    with pytest.raises(AssertionError, match="--data"):
        _check_script(bad, monkeypatch)


RUNNABLE = [s for s in SNIPPETS if s.kind == "runnable"]


def test_runnable_blocks_run(tmp_path, monkeypatch, capsys):
    """Each ```bash runnable block, in order, in one fresh folder (as a newcomer would)."""
    assert RUNNABLE, "no runnable block in the docs"
    monkeypatch.chdir(tmp_path)
    for snippet in RUNNABLE:
        tokens = _tokens(snippet)
        assert tokens[0] == "mcf", f"{snippet.where}: runnable blocks hold mcf commands only"
        code = main(tokens[1:])
        assert code == 0, (
            f"{snippet.where}: `{snippet.text}` exited {code}: " + (capsys.readouterr().err[-2000:])
        )
