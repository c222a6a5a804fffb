"""medqk's fast fixed-point models for Lava's own library processes (the ``fast`` model set).

Same processes, same Vars, same arithmetic as Lava's ``fixed_pt`` models (``lava/proc/*/models.py``),
selected through ``Loihi2SimCfg``'s ``exception_proc_model_map`` so the graph does not change:

- ``Conv``: torch's convolution through ``kernels.exact_int`` (exact integer results) instead of
  one ``scipy.signal.convolve2d`` per channel pair, then Lava's 24-bit ``signed_clamp``;
- every model skips its work in a step whose input is all zero (it sends what the Lava model would:
  its buffer, then zeros).

Weights are clipped and truncated with Lava's own ``weightutils``, as Lava's models do.
"""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
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


def _fast(proc):
    def register(cls):
        return implements(proc=proc, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(cls)))
    return register


def _lava_weights(model) -> None:
    """Lava's clipping and truncation of a Sparse's weights (``PySparseModelBitAcc.run_spk``), once."""
    if not model.weights_set:
        sign_mode = model.proc_params.get("sign_mode") or determine_sign_mode(model.weights)
        model.weights = clip_weights(model.weights, sign_mode, num_bits=8)
        model.weights = truncate_weights(model.weights, sign_mode, model.proc_params.get("num_weight_bits", 8))
        model.weights_set = True


def _shifted(a: np.ndarray, weight_exp: int) -> np.ndarray:
    return np.left_shift(a, weight_exp) if weight_exp > 0 else np.right_shift(a, -weight_exp)


@_fast(Conv)
class FastConvModel(PyConvModelFixed):
    """Lava's fixed-point Conv, computed by torch; Lava's (W, H, C) layout and flipped kernel are
    turned back into torch's NCHW cross-correlation once."""

    def run_spk(self) -> None:
        if self.a_buf is None:
            self.a_buf = np.zeros(self.a_out.shape, np.int32)
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if not s_in.any():
            self.a_buf = np.zeros(self.a_out.shape, np.int32)
            return
        if not hasattr(self, "_torch_weight"):
            import torch

            torch.set_num_threads(1)  # Lava forks its models: GNU OpenMP's pool is not fork-safe
            self._torch_weight = np.ascontiguousarray(self.weight.transpose(0, 3, 2, 1)[:, :, ::-1, ::-1], np.int64)
            self._weight_sum = kernels.largest_weight_sum(self._torch_weight)
        x = s_in.transpose(2, 1, 0)[None]
        acc = kernels.exact_int(kernels.conv2d, x, self._torch_weight, tuple(self.stride[::-1]), tuple(self.padding[::-1]),
                                int(self.groups[0]), weight_sum=self._weight_sum)
        self.a_buf = signed_clamp(acc[0].transpose(2, 1, 0), bits=24).astype(np.int32)


@_fast(Sparse)
class FastSparseModel(PySparseModelBitAcc):
    def run_spk(self) -> None:
        _lava_weights(self)
        self.a_out.send(self.a_buff)
        s_in = self.s_in.recv()
        if not s_in.any():
            self.a_buff = np.zeros(self.a_out.shape, np.int32)
            return
        self.a_buff = _shifted(self.weights.dot(s_in.astype(np.int64)), int(self.proc_params.get("weight_exp", 0)))


@_fast(DelaySparse)
class FastDelaySparseModel(PyDelaySparseModelBitAcc):
    """Lava's delay buffer as a ring (no roll of the whole buffer every step)."""

    def run_spk(self) -> None:
        _lava_weights(self)
        if not hasattr(self, "_head"):
            self._head = 0
            self._by_delay = self.get_delay_wgts_mat(self.weights, self.delays, self.a_buff.shape[-1] - 1).tocsr()
        slots = self.a_buff.shape[-1]
        self.a_out.send(self.a_buff[:, self._head])
        s_in = self.s_in.recv()
        self.a_buff[:, self._head] = 0
        self._head = (self._head + 1) % slots
        if s_in.any():
            act = self._by_delay.dot(s_in.astype(np.int64)).reshape(slots, -1)
            act = _shifted(act, int(self.proc_params.get("weight_exp", 0)))
            for k in range(slots):  # delay k lands k steps after the next one
                self.a_buff[:, (self._head + k) % slots] += act[k].astype(self.a_buff.dtype)


@_fast(ProdNeuron)
class FastProdNeuronModel(PyProdNeuronModelFixed):
    def run_spk(self) -> None:
        a, b = self.a_in1.recv(), self.a_in2.recv()
        if not (a.any() and b.any()):
            self.s_out.send(np.zeros(self.s_out.shape, np.int32))
            return
        v = np.right_shift(a.astype(np.int64) * b, int(self.exp[0]))
        self.s_out.send((v * (np.abs(v) > self.vth[0])).astype(np.int32))


@_fast(GradedVec)
class FastGradedVecModel(PyGradedVecModelFixed):
    def run_spk(self) -> None:
        v = self.a_in.recv()
        self.s_out.send(v * (np.abs(v) > self.vth[0]) if v.any() else np.zeros(self.s_out.shape, np.int32))


#: Lava library class -> medqk's fast model
FAST_MODELS = {Conv: FastConvModel, Sparse: FastSparseModel, DelaySparse: FastDelaySparseModel,
               ProdNeuron: FastProdNeuronModel, GradedVec: FastGradedVecModel}
