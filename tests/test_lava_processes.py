"""The Lava process library: each op, a fused DAG, the timing rule, counters and runtime hygiene.

Every Lava result is compared with a plain numpy evaluation of the op's integer formula (loops of
int64 slices, no torch), on random integer inputs, under Loihi2SimCfg(select_tag="fixed_pt").
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from medqk.convert.elementwise import Add, Affine, Complement, Concat, GroupBroadcast, GroupSum, Mul
from medqk.convert.fixed_point import saturate, shift_round, shift_round_half_even
from medqk.convert.graph import Node
from medqk.convert.neurons import NISF, ReLU, Sigmoid
from medqk.convert.synapses import Conv2d, Upsample, interp_matrix_int
from medqk.deploy.lava_plan import LayerPlan, fire_steps
from medqk.errors import MedqkError

pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")

from medqk.deploy.lava_runtime import build_network, lava_run, require_lava, run_network  # noqa: E402

D = 4
rng = np.random.default_rng(7)
SPIKES = rng.integers(0, D + 1, (1, 8, 12, 12))
SPIKES2 = rng.integers(0, D + 1, (1, 8, 12, 12))
REALS = rng.integers(-(2**23), 2**23, (1, 8, 12, 12))
SMALL = rng.integers(-(2**12), 2**12, (1, 8, 12, 12))
TIES = rng.integers(-8, 24, (1, 8, 12, 12))  # x / 4 hits every .5 tie of the NISF rounding


def mostly(value, other_high, shape, p=0.9):
    return np.where(rng.random(shape) < p, value, rng.integers(0, other_high, shape))


# Spikes of 4 into 3600 (4200) channels of weights near 127: partial sums just below (above) 2**24,
# the limit of exact float32 sums.
WIDE_BELOW = mostly(D, D, (1, 3600, 6, 6), 0.95)
WIDE_ABOVE = mostly(D, D, (1, 4200, 6, 6), 0.95)
W_BELOW = mostly(127, 127, (2, 3600, 3, 3))
W_ABOVE = mostly(127, 127, (2, 4200, 3, 3))
INPUTS = {"spikes": SPIKES, "spikes2": SPIKES2, "reals": REALS, "small": SMALL, "ties": TIES,
          "wide_below": WIDE_BELOW, "wide_above": WIDE_ABOVE}


# -- numpy reference formulas ------------------------------------------------------------------

def ref_conv(x, w, stride=(1, 1), padding=(0, 0), groups=1):
    """Cross-correlation by explicit int64 slices: out[o] += w[o, c, a, b] * x_padded[c, a + s*i, b + s*j]."""
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    o, cg, kh, kw = w.shape
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], o, ho, wo), np.int64)
    for oc in range(o):
        group = oc // (o // groups)
        for c in range(cg):
            for a in range(kh):
                for b in range(kw):
                    out[:, oc] += w[oc, c, a, b] * xp[:, group * cg + c, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
    return out


def conv_op(w, shift, bias=None, **geometry):
    bias = np.zeros(w.shape[0], np.int64) if bias is None else bias
    return Conv2d(weight=w.astype(float), weight_mantissa=w, weight_exponent=0, bias_acc=bias, shift=shift, **geometry)


def ref_conv_op(op, x):
    acc = ref_conv(x, op.weight_mantissa, op.stride, op.padding, op.groups) + op.bias_acc[None, :, None, None]
    return saturate(shift_round(acc, op.shift))


def ref_upsample(op, x):
    h, w = x.shape[2:]
    uh, uw = interp_matrix_int(h, 2 * h, op.frac_bits), interp_matrix_int(w, 2 * w, op.frac_bits)
    return shift_round(np.einsum("ph,nchw,qw->ncpq", uh, x, uw), 2 * op.frac_bits)


def ref_nisf(op, x):
    return np.clip(shift_round_half_even(x * op.multiplier, op.shift), 0, op.levels)


def ref_add(op, *xs):
    return saturate(sum(shift_round(x * m, k) for x, m, k in zip(xs, op.multipliers, op.shifts)))


def ref_affine(op, x):
    return saturate(shift_round(x * op.multiplier[None, :, None, None] + op.offset_int[None, :, None, None], op.shift))


W3 = rng.integers(-127, 128, (6, 8, 3, 3))
W_GROUPED = rng.integers(-127, 128, (4, 2, 3, 3))  # SDQK's q/k convs: d -> d/2, each output sees two inputs
W_POOL = rng.integers(-127, 128, (8, 8, 2, 2))
W_1X1 = rng.integers(-127, 128, (3, 8, 1, 1))
C8 = 8

#: name -> (op, input names, numpy reference(op, *inputs))
CASES = {
    "conv3x3_spikes": (conv_op(W3, 5, rng.integers(-3000, 3000, 6), padding=1), ["spikes"], ref_conv_op),
    "conv_grouped_reals": (conv_op(W_GROUPED, 9, rng.integers(-2**30, 2**30, 4), padding=1, groups=4), ["reals"], ref_conv_op),
    "conv2x2_stride2_left_shift": (conv_op(W_POOL, -3, stride=2), ["small"], ref_conv_op),
    "conv1x1": (conv_op(W_1X1, 0), ["spikes"], ref_conv_op),
    "conv_sums_below_2^24": (conv_op(W_BELOW, 2, padding=1), ["wide_below"], ref_conv_op),
    "conv_sums_above_2^24": (conv_op(W_ABOVE, 2, padding=1), ["wide_above"], ref_conv_op),
    "upsample_reals": (Upsample(factor=2, frac_bits=12), ["reals"], ref_upsample),
    "upsample_spikes": (Upsample(factor=2, frac_bits=12), ["spikes"], ref_upsample),
    "nisf_ties": (NISF(levels=D, multiplier=1, shift=2), ["ties"], ref_nisf),
    "nisf_scaled": (NISF(levels=D, multiplier=5, shift=20), ["reals"], ref_nisf),
    "add_saturating": (Add(multipliers=(5, 1), shifts=(2, -1)), ["reals", "small"], ref_add),
    "mul_spikes": (Mul(), ["spikes", "spikes2"], lambda op, a, b: a * b),
    "affine": (Affine(scale=np.ones(C8), offset=np.zeros(C8), multiplier=rng.integers(-2**15, 2**15, C8),
                      offset_int=rng.integers(-2**30, 2**30, C8), shift=9), ["reals"], ref_affine),
    "complement": (Complement(one=float(D)), ["spikes"], lambda op, x: D - x),
    "group_sum": (GroupSum(groups=4), ["spikes"], lambda op, x: x.reshape(1, 4, 2, 12, 12).sum(axis=2)),
    "group_broadcast": (GroupBroadcast(repeats=3), ["spikes"], lambda op, x: np.repeat(x, 3, axis=1)),
    "concat": (Concat(), ["spikes", "reals"], lambda op, a, b: np.concatenate([a, b], axis=1)),
    "sigmoid_logits": (Sigmoid(), ["reals"], lambda op, x: x),
}


def single_op_network(name, op, inputs):
    plan = LayerPlan(name, tuple((i, INPUTS[i].shape[1:]) for i in dict.fromkeys(inputs)), (Node(name, op, inputs),), (name,))
    return build_network({i: INPUTS[i] for i in dict.fromkeys(inputs)}, [plan], [name])


@pytest.fixture(scope="module")
def op_runs():
    """Each single-op case as its own Lava graph: source(s) -> layer -> sink."""
    return {name: run_network(single_op_network(name, op, inputs)) for name, (op, inputs, _) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_op_equals_numpy(op_runs, case):
    op, inputs, ref = CASES[case]
    expected = ref(op, *(INPUTS[i] for i in inputs))
    got = op_runs[case].outputs[case]
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_cases_exercise_their_edges():
    """The inputs really contain what the cases claim to test."""
    assert SPIKES.max() == D and (SPIKES == D).sum() > 10
    assert np.any(ref_conv_op(CASES["conv2x2_stride2_left_shift"][0], SMALL) == 2**23 - 1)  # saturates
    below, above = ref_conv(WIDE_BELOW, W_BELOW, padding=(1, 1)), ref_conv(WIDE_ABOVE, W_ABOVE, padding=(1, 1))
    assert 2**23 < below.max() < 2**24 < above.max()
    # above 2**24 a float32 convolution is no longer exact: the case would catch a wrong kernel choice
    import torch

    as_float32 = torch.nn.functional.conv2d(torch.tensor(WIDE_ABOVE, dtype=torch.float32),
                                            torch.tensor(W_ABOVE, dtype=torch.float32), padding=1)
    assert not np.array_equal(as_float32.to(torch.int64).numpy(), above)
    add_pre = sum(shift_round(x * m, k) for x, m, k in zip((REALS, SMALL), (5, 1), (2, -1)))
    assert np.any(add_pre != saturate(add_pre))
    assert np.any((TIES * 1) % 4 == 2)  # exact halves for the half-even rule


def test_spike_of_four_arrives_as_four(op_runs):
    received = op_runs["concat"].outputs["concat"][:, :8]
    assert np.array_equal(received, SPIKES) and received.max() == D


def test_counters_match_unit_weight_layers(op_runs):
    """A synapse's ACs (events) = the layer run with all-ones weights on the spikes (on spikes > 0), summed."""
    activity = {k: v for result in op_runs.values() for k, v in result.activity.items()}
    for case in ("conv3x3_spikes", "conv2x2_stride2_left_shift", "conv_grouped_reals"):
        op, (name,), _ = CASES[case]
        ones = np.ones_like(op.weight_mantissa)
        x = INPUTS[name]
        acs = ref_conv(x, ones, op.stride, op.padding, op.groups).sum()
        events = ref_conv((x != 0).astype(np.int64), ones, op.stride, op.padding, op.groups).sum()
        assert activity[case] == {"acs": acs, "events": events}
    op = CASES["upsample_spikes"][0]
    uh, uw = interp_matrix_int(12, 24, op.frac_bits), interp_matrix_int(12, 24, op.frac_bits)
    unit = np.einsum("ph,nchw,qw->", *(np.asarray(m != 0, np.int64) for m in (uh, SPIKES, uw)))
    assert activity["upsample_spikes"]["events"] == unit
    for case in ("nisf_ties", "nisf_scaled"):
        op, (name,), ref = CASES[case]
        s = ref(op, INPUTS[name])
        assert activity[case] == {"nonzero": np.count_nonzero(s), "spike_sum": s.sum()}
    assert "mul_spikes" not in activity  # neither a population nor a synapse


def test_single_op_graph_takes_three_steps(op_runs):
    for case, result in op_runs.items():
        assert result.steps == 3  # source, layer, sink
        assert set(result.busy_s) == {case}


# -- a fused DAG with branches of different depth ------------------------------------------------

WA = rng.integers(-127, 128, (8, 8, 3, 3))
WB = rng.integers(-127, 128, (8, 8, 3, 3))
WC = rng.integers(-127, 128, (8, 8, 3, 3))


def test_residual_dag_equals_numpy_in_depth_plus_one_steps():
    """x -> A (conv, NISF; sends spikes and its conv) -> B (conv, NISF) -> C (conv + add of A's conv and
    of x itself) -> sink: C's three inputs were ready at steps 1, 2 and 3."""
    x = SMALL
    conv_a, nisf_a = conv_op(WA, 4, padding=1), NISF(levels=D, multiplier=1, shift=8)
    conv_b, nisf_b = conv_op(WB, 2, padding=1), NISF(levels=D, multiplier=3, shift=10)
    conv_c, add_c = conv_op(WC, 1, padding=1), Add(multipliers=(1, 1, 2), shifts=(0, 1, 0))
    shape = x.shape[1:]
    plans = [
        LayerPlan("A", (("x", shape),), (Node("ca", conv_a, ["x"]), Node("sa", nisf_a, ["ca"])), ("sa", "ca")),
        LayerPlan("B", (("sa", shape),), (Node("cb", conv_b, ["sa"]), Node("sb", nisf_b, ["cb"])), ("sb",)),
        LayerPlan("C", (("sb", shape), ("ca", shape), ("x", shape)),
                  (Node("cc", conv_c, ["sb"]), Node("y", add_c, ["cc", "ca", "x"])), ("y",)),
    ]
    network = build_network({"x": x}, plans, ["y"])
    ca = ref_conv_op(conv_a, x)
    sb = ref_nisf(nisf_b, ref_conv_op(conv_b, ref_nisf(nisf_a, ca)))
    expected = ref_add(add_c, ref_conv_op(conv_c, sb), ca, x)
    assert network.steps == 5  # depth of input -> A -> B -> C -> sink (4 hops), plus one
    assert [layer.proc_params["fire_step"] for layer in network.layers] == [2, 3, 4]
    result = run_network(network, chunk_steps=2)
    assert np.array_equal(result.outputs["y"], expected)
    assert result.activity["sb"] == {"nonzero": np.count_nonzero(sb), "spike_sum": sb.sum()}


# -- the timing rule and plan checks (no Lava run) ----------------------------------------------

def test_fire_steps_follow_the_latest_producer():
    steps = fire_steps({"in": [], "a": ["in"], "b": ["a"], "c": ["in", "b"], "out": ["c"]})
    assert steps == {"in": 1, "a": 2, "b": 3, "c": 4, "out": 5}


@pytest.mark.parametrize("graph, message", [
    ({"a": ["b"], "b": ["a"]}, "cycle"),
    ({"a": ["ghost"]}, "ghost"),
])
def test_fire_steps_rejects_bad_graphs(graph, message):
    with pytest.raises(MedqkError, match=message):
        fire_steps(graph)


def test_plan_names_an_op_the_backend_lacks():
    with pytest.raises(MedqkError, match=r"'relu' \(node act1\)"):
        LayerPlan("L", (("x", (8, 12, 12)),), (Node("act1", ReLU(), ["x"]),), ("act1",))


def test_plan_refuses_float_ops_and_bad_wiring():
    with pytest.raises(MedqkError, match="not quantized"):
        LayerPlan("L", (("x", (8, 12, 12)),), (Node("n", NISF(levels=D), ["x"]),), ("n",))
    with pytest.raises(MedqkError, match="reads"):
        LayerPlan("L", (("x", (8, 12, 12)),), (Node("n", Mul(), ["x", "y"]),), ("n",))


def test_network_refuses_values_nobody_produces():
    plan = LayerPlan("c", (("spikes", SPIKES.shape[1:]),), (Node("c", Complement(one=4.0), ["spikes"]),), ("c",))
    with pytest.raises(MedqkError, match="no input or layer produces"):
        build_network({"x": SPIKES}, [plan], ["c"])


# -- runtime hygiene ---------------------------------------------------------------------------

def no_lava_children():
    return not multiprocessing.active_children()


def small_network():
    return single_op_network("c", Complement(one=4.0), ["spikes"])


def test_runs_leave_no_child_processes(op_runs):
    assert no_lava_children()


def test_a_disconnected_graph_is_refused():
    a, b = small_network(), single_op_network("m", Mul(), ["spikes", "spikes2"])
    with pytest.raises(MedqkError, match="not connected"):
        with lava_run(a.processes + b.processes, a.steps):
            pass
    assert no_lava_children()


def test_error_in_a_process_model_is_named_and_cleaned_up():
    big = np.full((1, 2, 4, 4), 2**20)
    plan = LayerPlan("squares", (("big", big.shape[1:]),), (Node("sq", Mul(), ["big", "big"]),), ("sq",))
    with pytest.raises(MedqkError, match=r"layer squares: value sq exceeds the 24-bit"):
        run_network(build_network({"big": big}, [plan], ["sq"]))
    assert no_lava_children()


def test_interrupt_during_the_run_stops_the_runtime():
    def interrupt(done, total):
        raise KeyboardInterrupt

    network = small_network()
    with pytest.raises(KeyboardInterrupt):
        run_network(network, progress=interrupt, chunk_steps=1)
    assert no_lava_children()


def test_exception_in_the_with_block_stops_the_runtime():
    network = small_network()
    with pytest.raises(ValueError, match="caller"):
        with lava_run(network.processes, network.steps):
            assert not no_lava_children()
            raise ValueError("caller failed")
    assert no_lava_children()


@pytest.mark.filterwarnings("ignore:Cannot import module")  # other modules of deploy/ that Lava's search execs
def test_lava_finds_the_models_by_tag():
    """Lava's own model search (no model map) selects the fixed_pt models of this package."""
    from lava.magma.core.run_configs import Loihi2SimCfg

    network = small_network()
    with lava_run(network.processes, network.steps, run_cfg=Loihi2SimCfg(select_tag="fixed_pt")):
        assert np.array_equal(network.sinks["c"].read(), D - SPIKES)
        assert network.layers[0].model_class.__name__ == "PyFusedLayerModel"
    assert no_lava_children()


def test_missing_lava_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lava.magma.core.run_configs", None)
    with pytest.raises(MedqkError, match="bash install.sh"):
        require_lava()


# -- in a separate Python: Ctrl-C on the whole process group, and torch used by the host first --------

SCRIPT_HEAD = """
import numpy as np
from medqk.convert.elementwise import Complement
from medqk.convert.graph import Node
from medqk.convert.synapses import Conv2d
from medqk.deploy.lava_plan import LayerPlan
from medqk.deploy.lava_runtime import build_network, lava_run, run_network
"""


def python(script: str) -> subprocess.Popen:
    """A Python running ``script`` in its own process group (which the test can signal or kill whole)."""
    return subprocess.Popen([sys.executable, "-c", SCRIPT_HEAD + textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def group_alive(pgid: int) -> bool:
    return bool(subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split())


def kill_group(pgid: int) -> None:
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


def test_ctrl_c_on_the_process_group_leaves_no_process():
    """As in a terminal: SIGINT reaches the host and every Lava child at once, mid-run."""
    proc = python("""
        x = np.zeros((1, 2, 4, 4), np.int64)
        plan = LayerPlan("c", (("x", (2, 4, 4)),), (Node("c", Complement(one=4.0), ["x"]),), ("c",))
        net = build_network({"x": x}, [plan], ["c"])
        try:
            with lava_run(net.processes, 10**7, progress=lambda done, total: print(done, flush=True), chunk_steps=100):
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """)
    try:
        assert proc.stdout.readline().strip() == "100"  # running
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert "interrupted" in out, err
        deadline = time.monotonic() + 10  # helpers (resource tracker) exit when they see the host gone
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(proc.pid)
    finally:
        kill_group(proc.pid)


def test_host_that_used_torch_threads_before_the_run():
    """Lava forks its children; torch's OpenMP pool, once used by the host, hangs a forked child that
    runs a multi-threaded op. The models run torch single-threaded, so this finishes."""
    proc = python("""
        import torch
        torch.nn.functional.conv2d(torch.ones(1, 32, 64, 64), torch.ones(32, 32, 3, 3))  # host uses its pool
        w = np.ones((32, 32, 3, 3), np.int64)
        conv = Conv2d(weight=w.astype(float), weight_mantissa=w, weight_exponent=0,
                      bias_acc=np.zeros(32, np.int64), shift=0, padding=1)
        plan = LayerPlan("c", (("x", (32, 64, 64)),), (Node("c", conv, ["x"]),), ("c",))
        out = run_network(build_network({"x": np.ones((1, 32, 64, 64), np.int64)}, [plan], ["c"])).outputs["c"]
        print(int(out[0, 0, 10, 10]))
        """)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert out.strip() == str(32 * 9), err


def test_lava_imports_after_a_progress_bar():
    """A tqdm bar fixes multiprocessing's start method; Lava's import sets it again without force."""
    proc = python("""
        from tqdm import tqdm
        list(tqdm(range(3)))
        import medqk.deploy.lava_processes
        print("imported")
        """)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert out.strip() == "imported", err
