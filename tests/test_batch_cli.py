"""Batches and output folders: bad files, name clashes, locks, file-system errors, resume."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import mcf_fast.io.images as images_mod
import mcf_fast.io.outputs as outputs_mod
from mcf_fast.cli import main
from mcf_fast.config import MCFConfig
from mcf_fast.detection.detector import Detector
from mcf_fast.framework.model import MCFModel
from mcf_fast.io.images import write_image
from mcf_fast.io.outputs import lock_folder
from mcf_fast.io.templates import TemplateSet
from tests.test_detector import CENTRES, synthetic

DETECT_FILES = (".csv", "_response.png", "_pseudo.png", "_overlay.png")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    img = synthetic(64, 70)
    tset = TemplateSet.from_points(img, [CENTRES[0], CENTRES[2]], size=17, image_name="a")
    tset.save(d / "t.json")
    MCFModel(MCFConfig(), tset, Detector(tset), None).save(d / "m.mcf")
    return d, img


def _folder(tmp_path, img, names=("a", "c")):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in names:
        write_image(folder / f"{n}.png", img)
    (folder / "b.png").write_bytes(b"not an image at all")  # sorts between a and c
    (folder / "._a.png").write_bytes(b"\0\5\0macOS resource fork")
    return folder


def _detect(job, *args):
    d, _ = job
    return main(["detect", *map(str, args), "--templates", str(d / "t.json"), "--quiet"])


def _predict(job, *args):
    d, _ = job
    return main(["predict", *map(str, args), "--model", str(d / "m.mcf"), "--quiet"])


@pytest.mark.parametrize("run", [_detect, _predict])
def test_bad_image_does_not_stop_the_batch(job, tmp_path, capsys, run):
    folder = _folder(tmp_path, job[1])
    out = tmp_path / "out"
    assert run(job, folder, "--out", out) == 1
    err = capsys.readouterr().err
    assert "1 of 3 image(s) could not be processed" in err
    assert f"{folder / 'b.png'}: not a readable image" in err
    assert "._a.png" not in err
    assert (out / "a.csv").is_file() and (out / "c.csv").is_file()
    assert not list(out.glob("b*")) and "Traceback" not in err


def test_fit_names_every_bad_image_up_front(job, tmp_path, capsys):
    folder = _folder(tmp_path, job[1])
    (folder / "d.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rc = main(
        ["fit", str(folder), "--templates", str(job[0] / "t.json"), "--out", str(tmp_path / "m")]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "2 of 4 input image(s) cannot be used" in err
    assert "b.png" in err and "d.jpg" in err and "._a.png" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.ckpt").exists()


@pytest.mark.parametrize("run", [_detect, _predict])
def test_two_inputs_with_one_name_are_refused(job, tmp_path, capsys, run):
    write_image(tmp_path / "x.png", job[1])
    write_image(tmp_path / "x.tif", job[1])
    out = tmp_path / "out"
    assert run(job, tmp_path / "x.png", tmp_path / "x.tif", "--out", out) == 1
    err = capsys.readouterr().err
    assert "'x'" in err and "x.png" in err and "x.tif" in err
    assert not out.exists()


@pytest.mark.parametrize("run", [_detect, _predict])
def test_out_below_a_file_is_refused_before_computing(job, tmp_path, capsys, monkeypatch, run):
    write_image(tmp_path / "a.png", job[1])
    (tmp_path / "file.txt").write_text("x")
    monkeypatch.setattr(Detector, "detect", lambda *a: pytest.fail("computed"))
    assert run(job, tmp_path / "a.png", "--out", tmp_path / "file.txt" / "sub") == 1
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'file.txt' / 'sub'}: {tmp_path / 'file.txt'} is a file" in err


def test_fit_out_below_a_file_is_refused(job, tmp_path, capsys):
    write_image(tmp_path / "a.png", job[1])
    (tmp_path / "file.txt").write_text("x")
    rc = main(
        [
            "fit",
            str(tmp_path / "a.png"),
            "--templates",
            str(job[0] / "t.json"),
            "--out",
            str(tmp_path / "file.txt" / "m.mcf"),
        ]
    )
    assert rc == 1 and "is a file, not a folder" in capsys.readouterr().err


def test_read_only_out_is_refused_before_computing(job, tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "a.png", job[1])

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "out"))

    monkeypatch.setattr(outputs_mod.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(Detector, "detect", lambda *a: pytest.fail("computed"))
    assert _detect(job, tmp_path / "a.png", "--out", tmp_path / "out") == 1
    assert "cannot write there (Read-only file system)" in capsys.readouterr().err


@pytest.mark.parametrize("run", [_detect, _predict])
def test_disk_full_is_one_line_and_leaves_no_partial_set(job, tmp_path, capsys, monkeypatch, run):
    write_image(tmp_path / "a.png", job[1])
    real = images_mod.write_image
    calls = []

    def fill_up(path, array):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, array)

    monkeypatch.setattr(images_mod, "write_image", fill_up)
    import mcf_fast.cli.seg as seg_mod

    monkeypatch.setattr(seg_mod, "write_image", fill_up)
    out = tmp_path / "out"
    assert run(job, tmp_path / "a.png", "--out", out) == 1
    err = capsys.readouterr().err
    assert "No space left on device (the disk is full)" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".mcf"]  # nothing of the set
    assert [p.name for p in (out / ".mcf").rglob("*") if p.is_file()] == ["lock"]


def test_interrupted_set_is_absent_and_resume_finishes(job, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in ("a", "b", "c"):
        write_image(folder / f"{n}.png", job[1])
    real = images_mod.write_image
    calls = []

    def interrupt(path, array):
        calls.append(path)
        if len(calls) == 5:  # the third file of the second image (b)
            raise KeyboardInterrupt
        return real(path, array)

    monkeypatch.setattr(images_mod, "write_image", interrupt)
    out = tmp_path / "out"
    assert _detect(job, folder, "--out", out) == 130
    assert list((out / ".mcf" / "staging").iterdir()) == []  # the half-written set is gone
    assert sorted(p.name for p in out.iterdir() if p.name != ".mcf") == sorted(
        f"a{s}" for s in DETECT_FILES
    )
    monkeypatch.setattr(images_mod, "write_image", real)
    capsys.readouterr()
    assert _detect(job, folder, "--out", out, "--resume") == 0
    assert "1 already done" in capsys.readouterr().err
    for n in ("a", "b", "c"):
        for s in DETECT_FILES:
            assert (out / f"{n}{s}").is_file()
    # a changed input is redone, not skipped
    os.utime(folder / "a.png", ns=(1, 1))
    assert _detect(job, folder, "--out", out, "--resume") == 0
    assert "in 1 image(s), 2 already done" in capsys.readouterr().err
    # other templates: nothing is skipped
    other = TemplateSet.from_points(job[1], [CENTRES[1]], size=17, image_name="a")
    other.save(tmp_path / "t2.json")
    rc = main(
        ["detect", str(folder), "--templates", str(tmp_path / "t2.json"), "--out", str(out)]
        + ["--resume", "--quiet"]
    )
    assert rc == 0 and "already done" not in capsys.readouterr().err


@pytest.mark.parametrize("run", [_detect, _predict])
def test_second_run_into_a_folder_in_use_is_refused(job, tmp_path, capsys, run):
    write_image(tmp_path / "a.png", job[1])
    out = tmp_path / "out"
    out.mkdir()
    with lock_folder(out):
        assert run(job, tmp_path / "a.png", "--out", out) == 1
    assert "in use by another mcf run" in capsys.readouterr().err
    assert not (out / "a.csv").exists()
    assert run(job, tmp_path / "a.png", "--out", out) == 0  # free again


def test_lock_is_held_across_processes(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys; from mcf_fast.io.outputs import lock_folder\n"
        "try:\n    with lock_folder(sys.argv[1]): pass\n"
        "except Exception as e:\n    print(type(e).__name__); sys.exit(3)\n"
    )
    with lock_folder(out):
        r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert r.returncode == 3 and "InputError" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert r.returncode == 0


def test_labels_of_an_earlier_run_do_not_linger(job, tmp_path):
    out = tmp_path / "out"
    src = tmp_path / "a.png"
    write_image(src, job[1])
    with outputs_mod.OutputFolder(out, settings={}) as folder:
        folder.write_set("a", src, lambda d: [write_image(d / "a.tif", np.zeros((2, 2), "u2"))])
        folder.write_set("a", src, lambda d: [write_image(d / "a.png", np.zeros((2, 2), "u2"))])
        assert folder.is_done("a", src)
    assert (out / "a.png").is_file() and not (out / "a.tif").exists()


def _score_args(tmp_path, out):
    from tests.test_score_cli import make_data

    data, _ = make_data(tmp_path, n=1)
    return ["score", "--data", str(data), "--pred", str(data / "masks"), "--out", str(out)]


@pytest.mark.parametrize("command", ["score", "templates", "slide"])
def test_every_writing_command_reports_a_full_disk_in_one_line(
    job, tmp_path, capsys, monkeypatch, command
):
    d, img = job
    write_image(tmp_path / "a.png", img)
    score = _score_args(tmp_path, tmp_path / "r.json") + ["--quiet"]  # makes tmp_path/data
    args = {
        "score": score,
        "templates": ["templates", "select", "--data", str(tmp_path / "data"), "--n", "2"]
        + ["--out", str(tmp_path / "t.json")],
        "slide": ["slide", str(tmp_path / "a.png"), "--model", "blob", "--out"]
        + [str(tmp_path / "s"), "--workers", "0", "--quiet"],
    }[command]
    real = os.replace

    def full(src, dst, *a, **k):
        if str(tmp_path) in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device (the disk is full)" in err and "Traceback" not in err


def test_score_out_below_a_file_is_refused_before_scoring(tmp_path, capsys, monkeypatch):
    import mcf_fast.metrics as metrics_mod

    (tmp_path / "f").write_text("x")
    monkeypatch.setattr(metrics_mod, "score_folder", lambda *a, **k: pytest.fail("scored"))
    assert main(_score_args(tmp_path, tmp_path / "f" / "r.json")) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
