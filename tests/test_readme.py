"""The README's quick start, run as written (on a small network and two small images), so the
README cannot drift from the code."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from support import small_model

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(heading: str) -> list[str]:
    """The command lines of the first bash block under ``heading``."""
    section = README.read_text().split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_quick_start_runs_as_written(tmp_path):
    # what a user brings: a bare state_dict from the paper's training script, and a folder of images
    torch.save(small_model().state_dict(), tmp_path / "my_checkpoint.pt")
    (tmp_path / "my_images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("case1.png", "case2.png"):
        Image.fromarray(rng.integers(0, 255, (300, 280, 3), dtype=np.uint8)).save(tmp_path / "my_images" / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    commands = readme_commands("## Quick start")
    assert any(c.startswith("medqk convert") for c in commands) and any("--backend lava" in c for c in commands)
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for produced in ("my-model/model.json", "my-model/graph.svg", "case1-mask.png", "case1-activity.json",
                     "energy.html", "energy.json"):
        assert (tmp_path / produced).is_file(), produced


def test_converting_your_own_network_runs_as_written(tmp_path):
    commands = readme_commands("## Converting your own network")
    assert commands[0].startswith("medqk convert --model")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:  # the example file is named relative to the checkout: run from there, write to tmp
        command = command.replace("examples/", f"{README.parent / 'examples'}/")
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "yolo-model" / "model.json").is_file()
    assert np.load(tmp_path / "yolo-logits.npy").dtype == np.float32
    assert (tmp_path / "yolo-energy.json").is_file()

