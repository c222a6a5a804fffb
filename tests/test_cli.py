"""The medqk command as a user meets it: help, one-line errors, and the demo's HTML report."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from medqk.cli import build_parser, main

MEDQK = [sys.executable, "-m", "medqk.cli"]


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "eval", "convert", "inspect", "run", "energy", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
    assert "usage: medqk demo" in capsys.readouterr().out


def test_user_mistakes_end_with_one_line_and_exit_code_2(tmp_path):
    out = subprocess.run([*MEDQK, "convert", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medqk convert: error:") and "missing.pt" in lines[0]
    assert not (tmp_path / "m").exists()


def test_verbose_shows_the_traceback(tmp_path):
    out = subprocess.run([*MEDQK, "-v", "run", str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    done = subprocess.run([*MEDQK, "demo", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"report written: {(out / 'report.html').resolve()}" in done.stdout
    return out


def test_demo_runs_every_backend_and_they_agree(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    backends = results["backends"]
    assert set(backends) == {"torch", "ir", "ir-int", "onnx", "onnx-int", "lava"}
    assert results["all_agree"]
    assert backends["onnx-int"]["bit_exact_with_ir_int"] and backends["lava"]["bit_exact_with_ir_int"]
    for name, row in backends.items():
        assert row["dice"] >= (0.9 if name in ("ir-int", "onnx-int", "lava") else 0.999), name
        assert (demo_dir / f"mask-{name}.png").is_file()
    assert results["loihi2"]["cores"] >= 1
    energy = json.loads((demo_dir / "energy.json").read_text())
    assert {b["name"] for b in energy["baselines"]} >= {"unet", "ann-twin"}
    assert (demo_dir / "model" / "model.onnx").is_file()


CHECK_IMAGES = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-check', `images:${imgs.length} broken:${broken}`);
});
</script></body>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_demo_report_renders_in_headless_chromium_with_every_picture(demo_dir, tmp_path):
    html = (demo_dir / "report.html").read_text()
    assert "<script" not in html  # the report itself is static
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_IMAGES))
    out = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'data-check="images:(\d+) broken:(\d+)"', out.stdout)
    assert found, out.stderr[-2000:]
    images, broken = map(int, found.groups())
    expected = html.count("<img ")
    assert images == expected >= 8 and broken == 0
    assert "Uncaught" not in out.stderr
