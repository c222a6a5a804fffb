"""The spike-graph IR and the converter. Public API (imported on first use, so that loading a
converted model needs no torch):

- ``register_neuron(cls, *, output, levels=None, threshold=None)``: declare a neuron class
  (``neuron_registry``);
- ``convert_module(module, input_shape, calibration_images, out_dir)``: convert any supported
  torch module into a model directory (``pipeline``).
"""

_LAZY = {"register_neuron": "medqk.convert.neuron_registry", "convert_module": "medqk.convert.pipeline"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medqk.convert' has no attribute {name!r}")
