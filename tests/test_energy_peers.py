"""`medqk energy peers`: the real SpikingJelly 2.0 and NeuroBench 2.3 on a small MedQKFormer, its ANN
twin and a narrow U-Net, against medqk's figures under each tool's rule."""
import json
import subprocess
import sys

import pytest

from medqk.cli import main
from medqk.energy import peers
from support import random_images, small_model

pytest.importorskip("spikingjelly", reason="medqk[peers] is not installed")
pytest.importorskip("neurobench", reason="medqk[peers] is not installed")

SIZE = 16


@pytest.fixture(scope="module")
def rows():
    return peers.peers_rows(small_model(), random_images(1, SIZE)[0], unet_width=8)[0]


def test_every_network_and_tool_has_its_rows(rows):
    assert {(r["network"], r["tool"]) for r in rows} == {(n, t) for n in peers.NETWORKS for t in peers.TOOLS}
    for r in rows:
        assert {"network", "tool", "metric", "value", "medqk_value", "agree", "why"} <= r.keys() and r["why"]
    json.dumps({"rows": rows})


def test_all_mac_baselines_agree_exactly(rows):
    """The U-Net and the ANN twin are all MACs: every tool figure equals medqk's under its rule."""
    for r in rows:
        if r["network"] in ("unet", "ann-twin"):
            assert r["agree"] and r["value"] == r["medqk_value"], r


def test_the_snn_figures_and_their_explanations(rows):
    snn = {(r["tool"], r["metric"].split(" ")[0]): r for r in rows if r["network"] == "snn"}
    # the graded NISF maps (0..D) are not binary: both tools count the spike-fed layers as MACs
    assert snn["spikingjelly", "SynOps"]["value"] == 0 and snn["neurobench", "Effective_ACs"]["value"] == 0
    assert "not binary" in snn["spikingjelly", "MACs"]["why"] and "graded spikes counted as MACs" in \
        snn["neurobench", "Effective_MACs"]["why"]
    for r in snn.values():
        assert r["agree"], r
    # NeuroBench's Dense is medqk's exact taps minus what it does not hook (the upsamplings)
    assert "not hooked: upsampling" in snn["neurobench", "Dense"]["why"]


def test_a_tool_that_cannot_count_a_network_is_a_row_not_a_crash():
    class Broken(Exception):
        pass

    run = peers.record(small_model(), random_images(1, 16)[0])
    rows = peers.network_rows("snn", run, Broken("no rule for NISF"), None, {"macs": 1, "acs": 0, "events": 0, "taps": 1})
    assert rows == [{"network": "snn", "tool": "spikingjelly", "metric": "(all)", "value": None, "medqk_value": None,
                     "agree": False, "why": "spikingjelly cannot count this network: Broken: no rule for NISF"}]


def test_the_command_writes_json_and_markdown(tmp_path):
    from medqk.checkpoint import save_checkpoint
    from medqk.data.preprocess import Preprocessing

    ckpt = save_checkpoint(tmp_path / "small.pt", small_model(), Preprocessing(size=(SIZE, SIZE)))
    out, md = tmp_path / "peers.json", tmp_path / "peers.md"
    assert main(["-q", "energy", "peers", str(ckpt), "--json", str(out), "--markdown", str(md)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 3 * 8 and all(r["agree"] for r in doc["rows"]) and doc["seconds"]["neurobench"] > 0
    assert md.read_text().startswith("# medqk energy peers") and "| snn | neurobench | Dense |" in md.read_text()


def test_a_missing_tool_says_how_to_install_the_extra(tmp_path):
    """With the tools hidden from the import system, one line naming the extra, exit 2."""
    script = ("import sys; sys.modules['spikingjelly'] = None; sys.modules['neurobench'] = None\n"
              "import importlib.util; importlib.util.find_spec = lambda name, *a: None\n"
              "from medqk.cli import main; sys.exit(main(['energy', 'peers']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "spikingjelly and neurobench not installed" in line and "medqk[peers]" in line
