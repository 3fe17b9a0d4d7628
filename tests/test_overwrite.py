"""``--overwrite`` replaces only a model dir this tool wrote, never the folders around it, and a failure keeps the old one.

Every test runs with HOME, TINYSAM_EDGE_HOME, XDG_CACHE_HOME and the working folder pointed at
temporary folders: the code these tests were written against deleted them.
"""

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tinysam_edge.cli import main
from tinysam_edge.errors import TinySamError
from tinysam_edge.files import check_replaceable, replaced_dir
from tinysam_edge.manifest import Manifest


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch) -> Path:
    """A working folder of its own (holding a file), with HOME and both cache variables in temporary folders."""
    for name, variable in (("home", "HOME"), ("tsh", "TINYSAM_EDGE_HOME"), ("xdg", "XDG_CACHE_HOME")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text(name)
        monkeypatch.setenv(variable, str(tmp_path / name))
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("work")
    monkeypatch.chdir(work)
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file contents, None for folders."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def foreign_folder(path: Path) -> Path:
    """A folder that is not a model dir: ``notes.txt`` and ``sub/d.bin``."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "d.bin").write_bytes(b"\0data")
    return path


def write_model_dir(path: Path, source: str) -> Manifest:
    """A small model dir as ``export`` writes one (empty IR files, a real manifest naming ``source``)."""
    files = {"encoder": "encoder.xml", "decoder": "decoder.xml"}
    for xml in files.values():
        (path / xml).write_text(source)
        (path / xml).with_suffix(".bin").write_bytes(source.encode())
    manifest = Manifest("vit_t", "tinysam", "fp32", None, {"name": source, "sha256": "0" * 64}, {}, files)
    manifest.write(path)
    return manifest


def cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, stderr)."""
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def assert_refused(status: int, stderr: str, fragment: str, progress: bool = False) -> None:
    """Exit 2 with one error line holding ``fragment`` (after the progress lines, with ``progress``)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2 and (progress or len(lines) == 1) and "Traceback" not in stderr, f"status {status}: {stderr}"
    assert fragment in lines[-1] and lines[-1].startswith("tinysam-edge: error:"), lines[-1]


@pytest.fixture
def calib(sandbox) -> Path:
    folder = sandbox / "calib"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((60, 80, 3), 128, np.uint8))
    return folder


# --- the files.py rule ---


def test_foreign_folder_is_refused_naming_its_first_entry(sandbox):
    folder = foreign_folder(sandbox / "notes")
    before = snapshot(folder)
    for overwrite in (False, True):
        with pytest.raises(TinySamError, match="holds notes.txt, which is not part of a tinysam-edge model dir"):
            check_replaceable(folder, [], overwrite)
        with pytest.raises(TinySamError, match="notes.txt"), replaced_dir(folder, [], overwrite):
            pytest.fail("a foreign folder was staged for replacement")
    (folder / "manifest.json").write_text("{}")  # a manifest that is not ours does not make the folder a model dir
    with pytest.raises(TinySamError, match="holds manifest.json"):
        check_replaceable(folder, [], True)
    (folder / "manifest.json").unlink()
    assert snapshot(folder) == before and sorted(p.name for p in sandbox.iterdir()) == ["home", "notes", "tsh", "work", "xdg"]


def test_model_dir_with_an_extra_file_is_refused(sandbox):
    folder = sandbox / "md"
    folder.mkdir()
    write_model_dir(folder, "old")
    (folder / "zz_my_results.csv").write_text("1,2\n")
    with pytest.raises(TinySamError, match="holds zz_my_results.csv"):
        check_replaceable(folder, [], True)


@pytest.mark.parametrize(
    "where, fragment",
    [
        (lambda s: Path("."), "the working folder"),
        (lambda s: s / "work", "the working folder"),
        (lambda s: s, "the working folder"),  # a parent of it
        (lambda s: s / "home", "the home folder"),
        (lambda s: s / "tsh", "the weights cache"),
    ],
    ids=["dot", "cwd", "parent", "home", "cache"],
)
def test_protected_folders_are_never_replaced(sandbox, where, fragment):
    before = snapshot(sandbox)
    for overwrite in (False, True):
        with pytest.raises(TinySamError, match=fragment):
            check_replaceable(where(sandbox), [], overwrite)
    assert snapshot(sandbox) == before


def test_xdg_cache_root_is_protected(sandbox, monkeypatch):
    monkeypatch.delenv("TINYSAM_EDGE_HOME")
    with pytest.raises(TinySamError, match="the weights cache"):
        check_replaceable(sandbox / "xdg", [], True)  # holds XDG_CACHE_HOME/tinysam-edge
    check_replaceable(sandbox / "xdg" / "tinysam-edge" / "ir" / "model", [], True)  # the cache's own model dirs may be rebuilt


def test_folder_holding_an_input_is_refused(sandbox):
    folder = sandbox / "data"
    folder.mkdir()
    (folder / "weights.pth").write_bytes(b"w")
    with pytest.raises(TinySamError, match="is or holds the input"):
        check_replaceable(folder, [folder / "weights.pth"], True)


def test_model_dir_is_replaced_only_with_overwrite(sandbox):
    target = sandbox / "md"
    target.mkdir()
    write_model_dir(target, "old")
    with pytest.raises(TinySamError, match="not empty; pass --overwrite"):
        check_replaceable(target, [], False)
    with replaced_dir(target, [], True) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".md.")
        write_model_dir(staging, "new")
    assert Manifest.read(target).source["name"] == "new" and (target / "encoder.bin").read_bytes() == b"new"
    assert sorted(p.name for p in sandbox.iterdir()) == ["home", "md", "tsh", "work", "xdg"]  # no staged or old folder left


def test_failure_while_writing_keeps_the_previous_model_dir(sandbox):
    target = sandbox / "md"
    target.mkdir()
    write_model_dir(target, "old")
    before = snapshot(target)
    with pytest.raises(RuntimeError, match="disk full"), replaced_dir(target, [], True) as staging:
        (staging / "encoder.xml").write_text("half")
        raise RuntimeError("disk full")
    assert snapshot(target) == before
    assert sorted(p.name for p in sandbox.iterdir()) == ["home", "md", "tsh", "work", "xdg"]


def _failing_swap(monkeypatch, target: Path) -> None:
    """Make renaming a staged folder onto ``target`` fail (the last step of a replacement)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target and Path(src).name.startswith(f".{target.name}.") and ".old." not in Path(src).name:
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_failure_at_the_swap_keeps_the_previous_model_dir(sandbox, monkeypatch):
    target = sandbox / "md"
    target.mkdir()
    write_model_dir(target, "old")
    before = snapshot(target)
    _failing_swap(monkeypatch, target)
    with pytest.raises(TinySamError, match="No space left"), replaced_dir(target, [], True) as staging:
        write_model_dir(staging, "new")
    assert snapshot(target) == before
    assert sorted(p.name for p in sandbox.iterdir()) == ["home", "md", "tsh", "work", "xdg"]


# --- the commands ---


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_cli_refuses_foreign_folder_dot_and_home(capsys, sandbox, calib, random_checkpoint, random_model_dir, command):
    args, an_input = {
        "export": (["export", "--checkpoint", random_checkpoint], random_checkpoint.parent),
        "quantize": (["quantize", "--model-dir", random_model_dir, "--calib", calib], calib),
    }[command]
    notes = foreign_folder(sandbox / "notes")
    before = snapshot(sandbox)
    for out, fragment in (
        (notes, "holds notes.txt"),
        (".", "the working folder"),
        (sandbox / "home", "the home folder"),
        (an_input, "is or holds the input"),
    ):
        assert_refused(*cli(capsys, *args, "--out", out, "--overwrite"), fragment)
    assert snapshot(sandbox) == before


def _fake_export_ir(sam, out_dir, source_name, source_sha256, log=print, fail=False, **_options) -> Manifest:
    manifest = write_model_dir(Path(out_dir), "new")
    if fail:
        raise TinySamError("OpenVINO export failed (injected)")
    return manifest


def test_cli_export_replaces_a_model_dir_and_keeps_it_on_failure(capsys, sandbox, random_checkpoint, random_model_dir, monkeypatch):
    """The IR conversion is replaced by a quick writer: what is tested is how the result replaces the old dir."""
    from tinysam_edge.quantize import export

    target = sandbox / "md"
    shutil.copytree(random_model_dir, target)
    before = snapshot(target)
    monkeypatch.setattr(export, "export_ir", lambda *a, **k: _fake_export_ir(*a, **k, fail=True))
    assert_refused(*cli(capsys, "export", "--checkpoint", random_checkpoint, "--out", target, "--overwrite"), "injected", True)
    assert snapshot(target) == before
    with monkeypatch.context() as patch:
        _failing_swap(patch, target.resolve())
        monkeypatch.setattr(export, "export_ir", _fake_export_ir)
        assert_refused(*cli(capsys, "export", "--checkpoint", random_checkpoint, "--out", target, "--overwrite"), "No space left", True)
    assert snapshot(target) == before
    assert cli(capsys, "export", "--checkpoint", random_checkpoint, "--out", target, "--overwrite")[0] == 0
    assert Manifest.read(target).source["name"] == "new" and sorted(p.name for p in target.iterdir()) == sorted(
        ["manifest.json", "encoder.xml", "encoder.bin", "decoder.xml", "decoder.bin"]
    )
    assert sorted(p.name for p in sandbox.iterdir()) == ["home", "md", "tsh", "work", "xdg"]
    assert [(sandbox / name / "keep.txt").read_text() for name in ("home", "tsh", "work", "xdg")] == ["home", "tsh", "work", "xdg"]
