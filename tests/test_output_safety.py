"""Nothing of the user's is lost: what --force may replace, concurrent converts, output paths
checked before the work, outputs written all together or not at all (docs/reliability.md, "Your files")."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from medqk.cli import main
from medqk.convert.serialize import load_model, save_model
from medqk.errors import InputError
from medqk.outputs import write_files

MEDQK = [sys.executable, "-m", "medqk.cli"]
#: the embedded default model at a small size: a conversion takes a few seconds
SMALL = ["--image-size", "32", "32", "--calibration-count", "1"]


def medqk(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDQK, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def user_files(folder) -> dict:
    """Put a file and a subfolder of the user's into ``folder``; returns what it holds."""
    (folder / "notes.txt").write_text("mine")
    (folder / "data").mkdir()
    (folder / "data" / "scan.png").write_bytes(b"\x89PNG user data")
    return snapshot(folder)


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "model"
    assert main(["-q", "convert", "-o", str(out), *SMALL]) == 0
    return out


# -- what --force may replace ---------------------------------------------------------------------

@pytest.mark.parametrize("target", [".", ".."])
def test_force_never_replaces_the_current_folder_or_one_above_it(tmp_path, target):
    work = tmp_path / "work"
    work.mkdir()
    user_files(work)
    (tmp_path / "parent-notes.txt").write_text("also mine")
    before = snapshot(tmp_path)
    done = medqk("convert", "-o", target, "--force", *SMALL, cwd=work)
    assert done.returncode == 2
    assert "current folder" in one_line_error(done.stderr)
    assert snapshot(tmp_path) == before


def test_force_never_replaces_a_model_directory_that_holds_the_working_folder(model_dir, tmp_path):
    inside = model_dir / "work"
    inside.mkdir()
    try:
        done = medqk("convert", "-o", model_dir, "--force", *SMALL, cwd=inside)
        assert done.returncode == 2 and "current folder" in one_line_error(done.stderr)
        assert inside.is_dir() and load_model(model_dir)
    finally:
        inside.rmdir()


def test_force_replaces_only_a_medqk_model_directory(tmp_path, capsys):
    target = tmp_path / "other-tool"
    target.mkdir()
    before = user_files(target)
    (target / "model.json").write_text(json.dumps({"format": "another tool's model"}))
    before["model.json"] = (target / "model.json").read_bytes()
    assert main(["convert", "-o", str(target), "--force", *SMALL]) == 2
    assert "not a medqk model directory" in one_line_error(capsys.readouterr().err)
    assert snapshot(target) == before


def test_an_output_that_names_a_file_is_refused_even_with_force(tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    assert main(["convert", "-o", str(target), "--force", *SMALL]) == 2
    assert f"{target} is a file" in one_line_error(capsys.readouterr().err)
    assert target.read_text() == "a,b\n1,2\n"


def test_force_never_replaces_a_model_directory_holding_the_checkpoint(model_dir, tmp_path, capsys):
    from medqk.defaults import default_checkpoint_path

    checkpoint = model_dir / "mine.pt"
    checkpoint.write_bytes(default_checkpoint_path().read_bytes())
    try:
        assert main(["convert", str(checkpoint), "-o", str(model_dir), "--force", *SMALL]) == 2
        assert "holds the input" in one_line_error(capsys.readouterr().err) and checkpoint.is_file()
    finally:
        checkpoint.unlink()


def test_the_old_model_survives_a_failed_replacement(model_dir, tmp_path):
    before = snapshot(model_dir)
    converted = load_model(model_dir)

    def failing_writer(directory, model):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(converted, model_dir, force=True, extra_writers=[failing_writer])
    assert snapshot(model_dir) == before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]  # no temporary folder, no lock file


def test_force_replaces_a_model_directory_whole(model_dir, tmp_path):
    converted, target = load_model(model_dir), tmp_path / "m"
    save_model(converted, target)
    (target / "graph.svg").write_text("<svg/>")  # files added to a model directory go with it
    save_model(converted, target, force=True)
    assert not (target / "graph.svg").exists() and load_model(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder, no lock file


# -- concurrent writers ---------------------------------------------------------------------------

def test_two_concurrent_converts_to_one_directory_do_not_both_succeed(tmp_path):
    target = tmp_path / "m"
    runs = [subprocess.Popen([*MEDQK, "-q", "convert", "-o", str(target), *SMALL], stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    codes = sorted(run.wait(timeout=600) for run in runs)
    errors = [run.stderr.read() for run in runs]
    assert codes == [0, 2], errors
    assert any("not empty" in e for e in errors)
    assert load_model(target) and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_file_put_into_the_output_while_converting_is_never_deleted(tmp_path):
    target = tmp_path / "m"
    run = subprocess.Popen([*MEDQK, "-q", "convert", "-o", str(target), *SMALL], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 500
    while not any(p.is_dir() and p.name.startswith(".m.") for p in tmp_path.iterdir()):  # medqk writes its files now
        assert run.poll() is None and time.monotonic() < deadline, "the conversion ended before it wrote anything"
        time.sleep(0.005)
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert run.wait(timeout=600) == 2
    assert "not empty" in one_line_error(run.stderr.read())
    assert snapshot(target) == {"notes.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# -- output paths are checked before the work -----------------------------------------------------

#: (option, command line, the path its error must name): every output option given a path under a
#: regular file ({file}), so that nothing can be created there (not even by root, as the tests run)
UNWRITABLE = [
    ("convert -o", ["convert", "-o", "{file}/m", *SMALL], "{file}/m"),
    ("convert --json", ["convert", "-o", "{tmp}/m", "--json", "{file}/s.json", *SMALL], "{file}/s.json"),
    ("inspect --draw", ["inspect", "{model}", "--draw", "{file}/g.svg"], "{file}/g.svg"),
    ("inspect --json", ["inspect", "{model}", "--json", "{file}/n.json"], "{file}/n.json"),
    ("run --out", ["run", "{model}", "--out", "{file}/mask.png"], "{file}/mask.png"),
    ("run --save-probs", ["run", "{model}", "--save-probs", "{file}/p.npy"], "{file}/p.npy"),
    ("run --json", ["run", "{model}", "--json", "{file}/r.json"], "{file}/r.json"),
    ("run --activity", ["run", "{model}", "--backend", "lava", "--activity", "{file}/a.json"], "{file}/a.json"),
    ("compare --json", ["compare", "{model}", "--count", "1", "--backends", "ir-int", "--json", "{file}/c.json"], "{file}/c.json"),
    ("energy --json", ["energy", "report", "{model}", "--json", "{file}/e.json"], "{file}/e.json"),
    ("energy --markdown", ["energy", "report", "{model}", "--markdown", "{file}/e.md"], "{file}/e.md"),
    ("energy --plot", ["energy", "report", "{model}", "--plot", "{file}/e.png"], "{file}/e.png"),
    ("energy --html", ["energy", "report", "{model}", "--html", "{file}/e.html"], "{file}/e.html"),
    ("eval --json", ["eval", "--count", "1", "--json", "{file}/v.json"], "{file}/v.json"),
    ("eval --masks-dir", ["eval", "--count", "1", "--masks-dir", "{file}/masks"], "{file}/masks"),
    ("train --out", ["train", "--epochs", "1", "--synthetic-count", "16", "--image-size", "32", "--out", "{file}/run"],
     "{file}/run"),
    ("demo -o", ["demo", "-o", "{file}", "--skip", "lava"], "{file}"),
    ("demo --json", ["demo", "-o", "{tmp}/demo", "--skip", "lava", "--json", "{file}/d.json"], "{file}/d.json"),
]


@pytest.mark.parametrize("command,path", [case[1:] for case in UNWRITABLE], ids=[case[0] for case in UNWRITABLE])
def test_an_unwritable_output_path_is_refused_before_the_work(model_dir, tmp_path, capsys, command, path):
    places = {"file": tmp_path / "file", "tmp": tmp_path, "model": model_dir}
    places["file"].write_text("a regular file")
    start = time.perf_counter()
    assert main([str(a).format(**places) for a in command]) == 2
    assert path.format(**places) in one_line_error(capsys.readouterr().err)
    assert time.perf_counter() - start < 5  # refused up front, not after converting or running
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_run_writes_all_its_outputs_or_none(model_dir, tmp_path, capsys):
    mask, probs = tmp_path / "mask.png", tmp_path / "probs.npy"
    (tmp_path / "file").write_text("blocks")
    assert main(["run", str(model_dir), "--out", str(mask), "--save-probs", str(probs),
                 "--json", str(tmp_path / "file" / "r.json")]) == 2
    assert "r.json" in one_line_error(capsys.readouterr().err)
    assert not mask.exists() and not probs.exists()
    record = tmp_path / "new" / "r.json"  # missing folders are created
    assert main(["-q", "run", str(model_dir), "--out", str(mask), "--save-probs", str(tmp_path / "probs"),
                 "--json", str(record)]) == 0
    assert np.load(tmp_path / "probs").shape == (32, 32)  # written under exactly the name given
    assert mask.is_file() and json.loads(record.read_text())["shape"] == [32, 32]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mask.png", "new", "probs"]


def test_convert_writes_the_model_and_its_json_both_or_neither(tmp_path, capsys):
    assert main(["convert", "-o", str(tmp_path / "m"), "--json", str(tmp_path), *SMALL]) == 2
    assert "is a folder" in one_line_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option,name,message", [("--out", "mask.txt", "use a file name ending in"),
                                                 ("--json", "same.json", "names the same file")])
def test_run_refuses_unusable_output_names(model_dir, tmp_path, capsys, option, name, message):
    extra = ["--save-probs", str(tmp_path / name)] if option == "--json" else []
    assert main(["run", str(model_dir), option, str(tmp_path / name), *extra]) == 2
    assert message in one_line_error(capsys.readouterr().err) and list(tmp_path.iterdir()) == []


def test_a_failed_file_set_leaves_every_target_as_it_was(tmp_path):
    kept = tmp_path / "report.json"
    kept.write_text("old")

    def failing(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match="bad.json.*No space left"):
        write_files({kept: lambda path: path.write_text("new"), tmp_path / "bad.json": failing})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"] and kept.read_text() == "old"


# -- modes and damaged model directories ----------------------------------------------------------

def test_model_directories_and_files_follow_the_umask(model_dir, tmp_path):
    converted = load_model(model_dir)
    old = os.umask(0o027)
    try:
        save_model(converted, tmp_path / "m")
        write_files({tmp_path / "r.json": lambda path: path.write_text("{}")})
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("file,damage", [
    ("model.json", lambda p: p.write_text("[1, 2]")),
    ("model.json", lambda p: p.write_text(p.read_text()[:-40])),
    ("model.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "model_config": [4]}))),
    ("graph-int.json", lambda p: p.write_text(json.dumps({"format": "medqk-spike-graph", "version": 1,
                                                          "nodes": [{"name": "x"}]}))),
    ("graph-float.json", lambda p: p.write_text('{"nodes": 3}')),
    ("tensors.npz", lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])),
])
def test_a_damaged_model_directory_is_refused_naming_the_file(model_dir, tmp_path, file, damage):
    copy = tmp_path / "m"
    copy.mkdir()
    for p in model_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    damage(copy / file)
    with pytest.raises(InputError, match=re.escape(str(copy / file))):
        load_model(copy)


def test_a_missing_onnx_file_is_called_missing(model_dir, tmp_path, capsys):
    copy = tmp_path / "m"
    copy.mkdir()
    for p in model_dir.iterdir():
        if p.name != "model.onnx":
            (copy / p.name).write_bytes(p.read_bytes())
    assert main(["run", str(copy), "--backend", "onnx"]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "model.onnx" in error and "incomplete" in error and "without ONNX" not in error
