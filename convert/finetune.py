"""Integer-aware fine-tuning (``medqk finetune``): train MedQKFormer through its own integer graph.

The forward pass is the converted integer graph (``interpret_torch``): weights rounded to their
8-bit mantissas and per-layer exponents, BatchNorm folded with its running statistics, every
state rounded to its fixed-point format, NISF as the integer graph computes it; rounding passes
gradients straight through. The quantized parameters are recomputed from the module's own
weights on every step (``ModuleParameters``), so the optimiser trains the ordinary checkpoint
weights, and the state formats are fixed once, by calibration on the training images, and
recorded in the checkpoint (``training.integer_formats``). ``convert`` of the result uses the
recorded formats, so its integer graph is the network that was trained and validated, and medqk
runs such a checkpoint's torch model through the same forward pass (``network_for``).

Each epoch is validated through the integer graph (what the chip will compute); the best epoch,
epoch 0 (the converted checkpoint before any step) included, is written atomically to the output
file after every improvement, so an interrupted or diverging run leaves the last good one.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from medqk import console
from medqk.checkpoint import load_checkpoint_payload, save_checkpoint
from medqk.convert import elementwise as ew
from medqk.convert import interpret_torch, passes
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import WEIGHT_BITS
from medqk.convert.graph import Graph
from medqk.convert.quantize import AFFINE_BITS, calibrate, quantized_graph, recorded_formats
from medqk.convert.quantize import _ratio as stored_ratio
from medqk.convert.trace import trace
from medqk.errors import InputError, MedqkError

#: training images (whole, un-augmented) whose peaks fix the state formats
CALIBRATION_IMAGES = 8
WEIGHT_LIMIT = (1 << (WEIGHT_BITS - 1)) - 1


class Diverged(MedqkError):
    """Fine-tuning produced a non-finite loss."""


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` with ``norm`` (running statistics) folded in, as
    ``passes.fold_batchnorm`` folds them."""
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    if norm is None:
        return conv.weight, bias
    scale, offset = _norm_scale_offset(norm)
    return conv.weight * scale[:, None, None, None], bias * scale + offset


def _norm_scale_offset(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def _mantissa_exponent(values: torch.Tensor) -> int:
    """``fixed_point.quantize_mantissa``'s exponent for ``values``."""
    peak = float(values.detach().abs().max())
    if peak == 0.0:
        return 0
    exponent = math.ceil(math.log2(peak / WEIGHT_LIMIT))
    if float(torch.round(values.detach().abs().max() / 2.0**exponent)) > WEIGHT_LIMIT:
        exponent += 1
    return exponent


def _module(root: nn.Module, node_name: str, kind: type) -> nn.Module:
    """The module a traced node was called from (``name@k``: its k-th call)."""
    path = node_name.split("@")[0]
    try:
        module = root.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, kind):
        raise InputError(f"node {node_name}: fine-tuning needs it to be a {kind.__name__} module of the network "
                         f"(found {type(module).__name__ if module is not None else 'no module'} at '{path}')")
    return module


class ModuleParameters:
    """The integer graph's parameters computed from ``root``'s weights, differentiably, by the
    rules of ``quantize`` (folded BatchNorm, 8-bit mantissas, 16-bit affine multipliers) with the
    formats of ``qgraph``. ``traced`` is the graph before BatchNorm folding (which norm follows
    which convolution)."""

    def __init__(self, root: nn.Module, traced: Graph, fgraph: Graph, qgraph: Graph):
        self.qgraph = qgraph
        self.convolutions, self.affines = [], []
        for node in qgraph.nodes():
            if isinstance(node.op, syn.Conv2d):
                conv = _module(root, node.name, nn.Conv2d)
                consumers = traced.consumers(node.name)
                norm_node = traced[consumers[0]] if len(consumers) == 1 else None
                norm = (_module(root, norm_node.name, nn.BatchNorm2d)
                        if norm_node is not None and isinstance(norm_node.op, ew.BatchNorm) else None)
                folded = _folded(*_float64(conv, norm))[0].detach().numpy()
                scale = _absorbed_scale(node.name, fgraph[node.name].op.weight, folded)
                self.convolutions.append((node.name, conv, norm, scale * stored_ratio(qgraph[node.inputs[0]])))
            elif isinstance(node.op, ew.Affine):
                norm = _module(root, node.name, nn.BatchNorm2d)
                folded = _norm_scale_offset(*_float64(norm))[0].detach().numpy()
                scale = _absorbed_scale(node.name, fgraph[node.name].op.scale, folded)
                self.affines.append((node.name, norm, scale * stored_ratio(qgraph[node.inputs[0]]) / stored_ratio(node)))

    def __call__(self) -> dict[str, dict]:
        params = {}
        for name, conv, norm, input_unit in self.convolutions:
            weight, bias = _folded(conv, norm)
            values = weight * input_unit
            exponent = _mantissa_exponent(values)
            params[name] = {"weight_mantissa": interpret_torch.round_half_even(values * 2.0**-exponent),
                            "bias_acc": interpret_torch.round_half_even(bias * 2.0**-exponent),
                            "shift": -(exponent + self.qgraph[name].tensor.frac_bits)}
        for name, norm, gain_unit in self.affines:
            scale, offset = _norm_scale_offset(norm)
            gain = scale * gain_unit
            peak = float(gain.detach().abs().max()) or 1.0
            shift = (AFFINE_BITS - 1) - math.ceil(math.log2(peak * (1 + 2.0**-AFFINE_BITS)))
            out_unit = stored_ratio(self.qgraph[name])
            params[name] = {"multiplier": interpret_torch.round_half_even(gain * 2.0**shift),
                            "offset_int": interpret_torch.round_half_even(offset / out_unit * 2.0**shift), "shift": shift}
        return params


def _float64(*modules):
    """float64 copies of ``modules`` (None stays None), to compare with the float graph's float64 values."""
    with torch.no_grad():
        return [copy.deepcopy(m).double() if m is not None else None for m in modules]


def _absorbed_scale(name: str, graph_values: np.ndarray, folded: np.ndarray) -> float:
    """The constant the float graph multiplied the folded module values by (the spike scale it
    absorbed, ``passes.fold_nisf_normalization``)."""
    index = np.unravel_index(np.argmax(np.abs(folded)), folded.shape)
    scale = float(graph_values[index] / folded[index]) if folded[index] else 1.0
    if not np.allclose(graph_values, folded * scale, rtol=1e-9, atol=0):
        raise InputError(f"node {name}: its graph parameters are not a constant multiple of the module's weights; "
                         "fine-tuning cannot tie them to the module")
    return scale


class IntegerAwareNetwork(nn.Module):
    """``network`` run through its integer graph ``qgraph``: float images -> the integer graph's
    network output, with gradients reaching ``network``'s weights."""

    def __init__(self, network: nn.Module, qgraph: Graph):
        super().__init__()
        self.network = network
        input_shape = tuple(qgraph.input.op.shape)
        self.qgraph = qgraph
        # traced twice: prepare folds the graph it is given in place
        self.parameters_of = ModuleParameters(network, trace(network, input_shape),
                                              passes.prepare(trace(network, input_shape)), qgraph)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the network's dtype (float64 for exact integers: ``network_for``)."""
        return interpret_torch.forward(self.qgraph, self.parameters_of(), images)


def integer_graph(network: nn.Module, input_shape: tuple[int, int, int], formats: dict[str, int]) -> Graph:
    """``network``'s integer graph with recorded ``formats`` (no calibration needed)."""
    return quantized_graph(passes.prepare(trace(network, input_shape)), None, formats)


def network_for(model: nn.Module, metadata: dict, input_shape: tuple[int, int, int]) -> nn.Module:
    """The torch network a checkpoint stands for: an integer-aware fine-tuned checkpoint
    (``training.integer_formats``) is its integer graph's forward pass, in float64 (exact);
    any other checkpoint is its module."""
    return integer_aware_network(model, metadata, input_shape) or model


def integer_aware_network(model: nn.Module, metadata: dict, input_shape: tuple[int, int, int]) -> nn.Module | None:
    """``network_for`` of an integer-aware fine-tuned checkpoint; None for any other (a
    ``checkpoint.NETWORK_RESOLVERS`` entry, so that ``medqk eval`` runs it as trained too)."""
    formats = (metadata.get("training") or {}).get("integer_formats")
    if not formats:
        return None
    qgraph = integer_graph(model, input_shape, formats)
    return _Float64(IntegerAwareNetwork(copy.deepcopy(model), qgraph).double())


class _Float64(nn.Module):
    """Runs a float64 network on float32 inputs and returns float32 (exact integer arithmetic)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.double()).float()


@dataclasses.dataclass
class FinetuneOptions:
    checkpoint: Path | None
    data: str
    out: Path
    layout: str = "auto"
    epochs: int = 5
    image_size: tuple[int, int] | None = None   #: None: the checkpoint's preprocessing size
    crop: int | None = 128
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 41
    val_fraction: float = 0.2
    device: str = "cpu"
    augment: bool = True
    synthetic_count: int = 64
    workers: int = 0


@dataclasses.dataclass
class FinetuneResult:
    path: Path
    history: list[dict]
    best: dict
    stopped: str
    seconds: float
    diverged: bool = False


def finetune(options: FinetuneOptions) -> FinetuneResult:
    """Fine-tune ``options.checkpoint`` through its integer graph and write the best epoch to ``options.out``."""
    from medqk.train import process_group

    with process_group(options.device) as process:
        if not process.is_main:
            console.verbosity = 0
        return _Finetuning(options, process).fit()


class _Finetuning:
    def __init__(self, options: FinetuneOptions, process):
        from medqk.data import Preprocessing
        from medqk.defaults import default_checkpoint_path
        from medqk.model import MedQKFormer
        from medqk.train import RandomCrops

        self.options, self.process = options, process
        source = Path(options.checkpoint) if options.checkpoint is not None else default_checkpoint_path()
        self.model, self.metadata = load_checkpoint_payload(source)
        if not isinstance(self.model, MedQKFormer):
            raise InputError(f"{source}: fine-tuning takes MedQKFormer checkpoints")
        prep = Preprocessing.from_dict(self.metadata["preprocessing"])
        self.prep = dataclasses.replace(prep, size=tuple(options.image_size)) if options.image_size else prep
        self.train_set, population, self.val_set = self._datasets()
        channels = int(self.train_set[0][0].shape[0])
        if channels != self.model.config.in_channels:
            raise InputError(f"{source} takes {self.model.config.in_channels}-channel images but {options.data} gives "
                             f"{channels} channels with channel order {self.prep.channel_order}; fine-tune on data of "
                             "the kind it was trained on")
        if options.crop is not None:
            self.train_set = RandomCrops(self.train_set, options.crop, options.seed)
        self.source = {"path": str(source.resolve()), "sha256": self.metadata["sha256"]}
        torch.manual_seed(options.seed)
        self.formats, qgraph = self._calibrate(population)
        self.model.to(process.device)
        self.network = IntegerAwareNetwork(self.model, qgraph)
        self.trained = self.network if not process.distributed else nn.parallel.DistributedDataParallel(self.network)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=options.lr)
        self.sampler = DistributedSampler(self.train_set, num_replicas=process.world_size, rank=process.rank,
                                          shuffle=True, seed=options.seed)
        self.loader = DataLoader(self.train_set, batch_size=options.batch_size, sampler=self.sampler,
                                 num_workers=options.workers)

    def _datasets(self):
        """Training set (augmented), the same images whole and un-augmented (calibration), validation set."""
        from medqk.data import Augmentation, PairDataset, SyntheticDataset, load_split, synthetic_validation_set

        options = self.options
        augmentation = Augmentation() if options.augment else None
        if options.data == "synthetic":
            return (SyntheticDataset(options.synthetic_count, self.prep.size, options.seed, augmentation),
                    SyntheticDataset(options.synthetic_count, self.prep.size, options.seed),
                    synthetic_validation_set(max(16, options.synthetic_count // 4), self.prep.size, options.seed))
        split = load_split(options.data, options.layout, options.val_fraction, options.seed)
        return (PairDataset(split.train, self.prep, augmentation, options.seed), PairDataset(split.train, self.prep),
                PairDataset(split.val, self.prep))

    def _calibrate(self, dataset) -> tuple[dict[str, int], Graph]:
        """State formats from the first training images, whole and un-augmented (as ``convert --calibrate``)."""
        images = np.stack([dataset[i][0].numpy() for i in range(min(CALIBRATION_IMAGES, len(dataset)))])
        shape = (self.model.config.in_channels, *self.prep.size)
        with console.progress(None, desc="finetune: calibrate the integer graph", total=1, unit="stage") as bar:
            fgraph = passes.prepare(trace(self.model, shape))
            qgraph = quantized_graph(fgraph, calibrate(fgraph, images))
            bar.update()
        return recorded_formats(qgraph), qgraph

    def fit(self) -> FinetuneResult:
        from medqk.evaluate import evaluate

        started = time.perf_counter()
        history = [self._entry(0, None, evaluate(self.network, self.val_set, self.process.device, self.options.batch_size))]
        best = history[0]
        self._save(best, history)
        stopped, diverged = f"ran {self.options.epochs} epochs", False
        console.info(f"epoch 0 (converted, before fine-tuning): integer graph val DSC {best['val']['DSC']:.4f}")
        for epoch in range(1, self.options.epochs + 1):
            try:
                train_loss = self._train_epoch(epoch)
            except Diverged as error:
                stopped, diverged = f"stopped at epoch {epoch}: {error}; {self.options.out} keeps epoch {best['epoch']}", True
                break
            entry = self._entry(epoch, train_loss, evaluate(self.network, self.val_set, self.process.device,
                                                            self.options.batch_size))
            history.append(entry)
            console.info(f"epoch {epoch}: train loss {train_loss:.4f}, integer graph val DSC {entry['val']['DSC']:.4f}")
            if entry["val"]["DSC"] > best["val"]["DSC"]:
                best = entry
                self._save(best, history)
        return FinetuneResult(Path(self.options.out), history, best, stopped, time.perf_counter() - started, diverged)

    def _entry(self, epoch: int, train_loss, validation) -> dict:
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": validation.loss, "val": validation.mean}

    def _train_epoch(self, epoch: int) -> float:
        from medqk.metrics import segmentation_loss

        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        loss_sum, count = 0.0, 0
        for images, masks in console.progress(self.loader, desc=f"finetune epoch {epoch}/{self.options.epochs}",
                                              total=len(self.loader), unit="batch"):
            images, masks = images.to(self.process.device), masks.to(self.process.device)
            loss = segmentation_loss(self.trained(images), masks)
            if not torch.isfinite(loss):
                self.model.load_state_dict(saved)  # the epoch's last good weights
                raise Diverged(f"the loss is {loss.item()} (lower --lr)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(images)
            count += len(images)
        return loss_sum / count

    def _save(self, entry: dict, history: list[dict]) -> None:
        if not self.process.is_main:
            return
        training = {**(self.metadata.get("training") or {}), "integer_formats": self.formats,
                    "finetune": {"source": self.source, "options": _plain(dataclasses.asdict(self.options)),
                                 "world_size": self.process.world_size, "best_epoch": entry["epoch"], "history": history}}
        save_checkpoint(self.options.out, self.model, self.prep, training)


def _plain(options: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
