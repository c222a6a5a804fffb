"""Memory traffic and addressing, priced as Lemaire et al. 2022 do and SpikingJelly 2.0 implements it.

E = E_ops + E_addressing + E_mem (E. Lemaire et al., "An analytical estimation of spiking neural
networks energy efficiency", ICONIP 2022, arXiv 2210.13107; SpikingJelly 2.0
``activation_based/op_counter/analytical_energy.py``). Every access moves a 32-bit word and costs
what one byte costs in the buffer it lives in: a buffer's pJ per byte is interpolated between
SRAM sizes (0 B: 0; 8 KiB: 2.5; 32 KiB: 5; 1 MiB and above: 25 pJ/B, i.e. Horowitz's 10 / 20 /
100 pJ per 32-bit word). Per synaptic layer:

- real (dense) input: each tap reads an input word (buffer: the input map) and a weight (buffer:
  the layer's weights and biases); each output reads its bias and writes one word (buffer: the
  output map); addressing: one add per input, per output and per weight position;
- spike input (event-driven): each nonzero spike is read once from a FIFO of 1000 words, then each
  of its connections reads a weight and reads and writes the membrane potential of the output it
  reaches (buffer: the output map); addressing: one add per connection, two multiply-adds per spike
  to locate its first output;
- a NISF population (SNN only) reads and writes each neuron's potential once and writes each nonzero
  spike to its output FIFO; its ops: one add per spike.

Where medqk departs from SpikingJelly (the report repeats it): connections are exact taps (borders
and strides; SpikingJelly reads k^2 weights per spike and counts ceil(k/s)^2 synaptic ops); a graded
spike s costs s accumulates (ops) but one weight read and one potential update per connection;
bilinear upsampling (which SpikingJelly's model refuses) is priced as a dense layer whose fixed
interpolation weights are not stored (no weight reads); transposed convolutions (also refused) as
dense layers; a real-fed layer writes its output map in the SNN as in the ANN; element-wise
operations (sums, spike products, affines) are not priced on either side.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from medqk.energy.counting import SPIKE, LayerCount

LEMAIRE = ("E. Lemaire, L. Cordone, A. Castagnetti, P.-E. Novac, J. Courtois, B. Miramond, \"An analytical "
           "estimation of spiking neural networks energy efficiency\", ICONIP 2022 (arXiv 2210.13107), "
           "as implemented in SpikingJelly 2.0 (activation_based/op_counter/analytical_energy.py)")

#: (buffer bytes, pJ per byte accessed): SpikingJelly's breakpoints for 32-bit words
SRAM_BREAKPOINTS = ((0.0, 0.0), (8 * 1024.0, 10 / 4), (32 * 1024.0, 20 / 4), (1024 * 1024.0, 100 / 4))


@dataclasses.dataclass(frozen=True)
class Lemaire:
    e_add_pj: float = 0.1
    e_mul_pj: float = 3.1
    word_bytes: int = 4
    #: messages an SNN layer's input and output FIFOs hold (the paper's setting)
    fifo_words: int = 1000

    def pj_per_byte(self, buffer_bytes: float) -> float:
        xs, ys = zip(*SRAM_BREAKPOINTS)
        return float(np.interp(buffer_bytes, xs, ys))  # clamped beyond 1 MiB, as SpikingJelly

    def _access(self, words: float, buffer_words: float, times: int = 1) -> dict:
        """``times`` x ``words`` 32-bit accesses to a buffer of ``buffer_words`` words."""
        nbytes, buffer = times * words * self.word_bytes, buffer_words * self.word_bytes
        return {"bytes": nbytes, "buffer_bytes": buffer, "pj": nbytes * self.pj_per_byte(buffer)}

    def layer(self, layer: LayerCount) -> dict:
        """Addressing energy, bias additions and memory accesses of one synaptic layer per image."""
        bias_reads = layer.outputs if layer.biases else 0
        weight_reads = 0 if not layer.weights else layer.events if layer.input_kind == SPIKE else layer.taps
        memory = {"weights": self._access(weight_reads + bias_reads, layer.weights + layer.biases)}
        if layer.input_kind == SPIKE:
            memory["inputs"] = self._access(layer.spikes_in, self.fifo_words)
            memory["state"] = self._access(layer.events, layer.outputs, times=2)  # read and write
            addressing = layer.events * self.e_add_pj + 2 * layer.spikes_in * (self.e_mul_pj + self.e_add_pj)
        else:
            memory["inputs"] = self._access(layer.taps, layer.inputs)
            memory["outputs"] = self._access(layer.outputs, layer.outputs)
            addressing = (layer.inputs + layer.outputs + layer.kernel_positions) * self.e_add_pj
        return {"addressing_pj": addressing, "bias_pj": bias_reads * self.e_add_pj,
                "memory_pj": sum(m["pj"] for m in memory.values()), "memory": memory}

    def neurons(self, neurons: float, spikes: float) -> dict:
        """A NISF population of ``neurons`` emitting ``spikes`` nonzero spikes per image."""
        memory = {"state": self._access(neurons, neurons, times=2), "outputs": self._access(spikes, self.fifo_words)}
        return {"compute_pj": spikes * self.e_add_pj, "memory_pj": sum(m["pj"] for m in memory.values()),
                "memory": memory}
