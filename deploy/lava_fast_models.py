"""medqk's fast fixed-point models for Lava's own library processes (the ``fast`` model set).

Same processes, same Vars, same arithmetic as Lava's ``fixed_pt`` models (``lava/proc/*/models.py``),
selected through ``Loihi2SimCfg``'s ``exception_proc_model_map`` so the graph does not change:

- ``Conv``: torch's convolution through ``kernels.exact_int`` (exact integer results) instead of
  one ``scipy.signal.convolve2d`` per channel pair, then Lava's 24-bit ``signed_clamp``;
- every model skips its work in a step whose input is all zero (it sends what the Lava model would:
  its buffer, then zeros), and reads its input through ``lava_messages.FastInPort`` and sends
  ``silence`` and ``frozen`` results, so that a silent step copies and reads nothing;
- ``DelaySparse`` keeps only the delayed input that is due, by step.

Weights are clipped and truncated with Lava's own ``weightutils``, as Lava's models do.
"""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv
from lava.proc.conv.utils import signed_clamp
from lava.proc.graded.models import PyGradedVecModelFixed
from lava.proc.graded.process import GradedVec
from lava.proc.prodneuron.models import PyProdNeuronModelFixed
from lava.proc.prodneuron.process import ProdNeuron
from lava.proc.sparse.models import PyDelaySparseModelBitAcc, PySparseModelBitAcc
from lava.proc.sparse.process import DelaySparse, Sparse
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

from medqk.convert import kernels
from medqk.deploy.lava_messages import fast_port, frozen, is_silent, silence


def _fast(proc):
    def register(cls):
        return implements(proc=proc, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(cls)))
    return register


def _lava_weights(model) -> None:
    """Lava's clipping and truncation of a Sparse's weights (``PySparseModelBitAcc.run_spk``), once,
    applied to the stored weights only (both are element-wise and keep a zero zero). Non-negative
    8-bit mantissas with ``num_weight_bits`` 8 (every Sparse medqk builds) are what both return
    unchanged, so they are not copied through them (tests/test_lava_library.py checks this)."""
    if not model.weights_set:
        import scipy.sparse

        weights = scipy.sparse.csr_matrix(model.weights)
        bits = model.proc_params.get("num_weight_bits", 8)
        sign_mode = model.proc_params.get("sign_mode") or determine_sign_mode(weights.data if weights.nnz else weights)
        if not (bits == 8 and weights.nnz and weights.data.min() >= 0 and weights.data.max() <= 255):
            data = truncate_weights(clip_weights(weights.data, sign_mode, num_bits=8), sign_mode, bits)
            weights = scipy.sparse.csr_matrix((data, weights.indices, weights.indptr), shape=weights.shape)
            weights.eliminate_zeros()
        model.weights = weights
        model.weights_set = True


def _shifted(a: np.ndarray, weight_exp: int) -> np.ndarray:
    if weight_exp == 0:
        return a
    return np.left_shift(a, weight_exp) if weight_exp > 0 else np.right_shift(a, -weight_exp)


@_fast(Conv)
class FastConvModel(PyConvModelFixed):
    """Lava's fixed-point Conv, computed by torch; Lava's (W, H, C) layout and flipped kernel are
    turned back into torch's NCHW cross-correlation once."""

    s_in = fast_port(PyConvModelFixed.s_in)

    def run_spk(self) -> None:
        if self.a_buf is None:
            self.a_buf = silence(self.a_out.shape)
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if is_silent(s_in):
            self.a_buf = silence(self.a_out.shape)
            return
        if not hasattr(self, "_torch_weight"):
            self._torch_weight = np.ascontiguousarray(self.weight.transpose(0, 3, 2, 1)[:, :, ::-1, ::-1], np.int64)
            self._weight_sum = kernels.largest_weight_sum(self._torch_weight)
        x = s_in.transpose(2, 1, 0)[None]
        acc = kernels.exact_int(kernels.conv2d, x, self._torch_weight, tuple(self.stride[::-1]), tuple(self.padding[::-1]),
                                int(self.groups[0]), weight_sum=self._weight_sum)
        self.a_buf = frozen(signed_clamp(acc[0].transpose(2, 1, 0), bits=24).astype(np.int32))


@_fast(Sparse)
class FastSparseModel(PySparseModelBitAcc):
    s_in = fast_port(PySparseModelBitAcc.s_in)

    def run_spk(self) -> None:
        _lava_weights(self)
        self.a_out.send(self.a_buff)
        s_in = self.s_in.recv()
        if is_silent(s_in):
            self.a_buff = silence(self.a_out.shape)
            return
        self.a_buff = frozen(_shifted(self.weights.dot(s_in.astype(np.int64)), int(self.proc_params.get("weight_exp", 0)))
                             .astype(np.int32))


@_fast(DelaySparse)
class FastDelaySparseModel(PyDelaySparseModelBitAcc):
    """Lava's delayed accumulation, kept as one array per time step that has input due instead of
    Lava's (outputs, max_delay + 1) buffer ``a_buff`` (rolled every step, and mostly empty: one wave
    crosses the graph), and computed only for the delays that occur (Lava multiplies a matrix
    stacked over every delay up to the largest). Input at step t with delay k is sent at step
    t + 1 + k, as by Lava's model."""

    s_in = fast_port(PyDelaySparseModelBitAcc.s_in)

    def _prepare(self) -> None:
        import scipy.sparse

        self._due: dict[int, np.ndarray] = {}
        weights, delays = self.weights, scipy.sparse.csr_matrix(self.delays)
        delays.sort_indices()
        if (delays.nnz == weights.nnz and np.array_equal(delays.indptr, weights.indptr)
                and np.array_equal(delays.indices, weights.indices)):
            per_weight = delays.data  # the same pattern (every delay synapse medqk builds): no lookup
        else:
            coo = weights.tocoo()  # in the order of weights.data
            per_weight = np.asarray(delays[coo.row, coo.col]).ravel()
        self._by_delay = []  # (k, the weights of delay k): Lava's get_delay_wgts_mat without its empty blocks
        for k in np.unique(per_weight):
            part = weights.copy()
            part.data = np.where(per_weight == k, part.data, 0)
            part.eliminate_zeros()
            self._by_delay.append((int(k), part))

    def run_spk(self) -> None:
        _lava_weights(self)
        if not hasattr(self, "_due"):
            self._prepare()
        due = self._due.pop(self.time_step, None)
        self.a_out.send(silence(self.a_out.shape) if due is None else frozen(due))
        s_in = self.s_in.recv()
        if not is_silent(s_in):
            x = s_in.astype(np.int64)
            for k, weights in self._by_delay:
                act = _shifted(weights.dot(x), int(self.proc_params.get("weight_exp", 0))).astype(self.a_buff.dtype)
                step = self.time_step + 1 + k
                self._due[step] = act if step not in self._due else self._due[step] + act


@_fast(ProdNeuron)
class FastProdNeuronModel(PyProdNeuronModelFixed):
    a_in1 = fast_port(PyProdNeuronModelFixed.a_in1)
    a_in2 = fast_port(PyProdNeuronModelFixed.a_in2)

    def run_spk(self) -> None:
        a, b = self.a_in1.recv(), self.a_in2.recv()
        if is_silent(a) or is_silent(b):
            self.s_out.send(silence(self.s_out.shape))
            return
        v = np.right_shift(a.astype(np.int64) * b, int(self.exp[0]))
        self.s_out.send(frozen((v * (np.abs(v) > self.vth[0])).astype(np.int32)))


@_fast(GradedVec)
class FastGradedVecModel(PyGradedVecModelFixed):
    a_in = fast_port(PyGradedVecModelFixed.a_in)

    def run_spk(self) -> None:
        v = self.a_in.recv()
        self.s_out.send(silence(self.s_out.shape) if is_silent(v) else frozen(v * (np.abs(v) > self.vth[0])))


#: Lava library class -> medqk's fast model
FAST_MODELS = {Conv: FastConvModel, Sparse: FastSparseModel, DelaySparse: FastDelaySparseModel,
               ProdNeuron: FastProdNeuronModel, GradedVec: FastGradedVecModel}
