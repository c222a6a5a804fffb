"""medqk: MedQKFormer from training to integer ONNX, Lava (Loihi 2) and energy analysis."""
from pathlib import Path as _Path

# In a source checkout the subpackages live beside this folder (convert/ is medqk.convert, cli.py
# is medqk.cli; pyproject.toml maps them the same way for installs). Searching the checkout's root
# too keeps `import medqk.convert` working when Python runs from the repository root, where the
# folder medqk/ shadows the installed package.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "convert" / "__init__.py").is_file() and (_checkout / "cli.py").is_file():
    __path__.append(str(_checkout))
from medqk.errors import MedqkError

__version__ = "0.1.0"

__all__ = ["MedQKFormer", "ModelConfig", "NISF", "MedqkError", "load_checkpoint", "__version__"]


#: public name -> module; imported on first use so that torch-free parts (loading a converted
#: model, the ONNX and Lava backends) never import torch.
_LAZY = {"MedQKFormer": "medqk.model", "ModelConfig": "medqk.model", "NISF": "medqk.nisf",
         "load_checkpoint": "medqk.checkpoint"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medqk' has no attribute {name!r}")
