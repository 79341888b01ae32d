"""The decoder's dense projections as the engine calls them, optionally with CPU-prepacked weights.

On CPU, every GEMM against a plain ``nn.Linear`` weight first copies that weight into the BLAS
kernel's blocked layout. For a prefill over few rows — exactly what visual-token reuse produces —
that per-call copy (one extra pass over every weight of every layer) is a large share of the
time, and the cached prefill falls well short of its FLOPs-implied speedup. Packing each weight
once into oneDNN's blocked layout removes the copy from multi-row calls (the prefill), cached or
not. Single-row calls (decoding) keep the plain weight, where a matrix-vector product over the
row-major layout is faster.

The price is a second copy of the decoder's projection weights in memory. ``prepack=None``
("auto") packs only on CPU, for float32/bfloat16, when oneDNN is usable, for a hidden size of at
least 512 (below that oneDNN's per-call overhead outweighs the saved copy: measured on the
development VM, packed GEMMs were up to 1.9x slower at width 64 and broke even near 512), and
when the copy fits comfortably in the memory available; ``True`` demands it (and says why when it cannot);
``False`` never packs. Packs are made once per language model and shared by every engine on it;
they are snapshots: weights changed in place afterwards would not reach them.
The stock transformers forward (``predict_action``) is never changed.
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vla_cache_ros.errors import ConfigurationError

LOG = logging.getLogger(__name__)

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
MIN_PACKED_WIDTH = 512  # "auto" packs only decoders at least this wide (see the module docstring)
MEMORY_SHARE = 0.5  # "auto" packs only when the copy needs at most this share of available memory
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # relative, packed vs plain
REQUIRED_OPS = ("_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported")


class PackedLinear(nn.Module):
    """A Linear whose multi-row calls use a oneDNN-prepacked copy of the weight.

    A module (not a bare function) so that forward hooks can observe the rows it really
    processes. It is kept outside the model's module tree: the model's own modules, and with them
    the stock forward, are untouched.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "linear", linear)  # a plain reference: not a registered submodule
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Multi-row inputs through the packed weight, single rows through the plain one."""
        bias = self.linear.bias
        if inputs.numel() <= inputs.shape[-1]:
            return F.linear(inputs, self.linear.weight, bias)
        return torch.ops.mkldnn._linear_pointwise(inputs.contiguous(), self.packed, bias, "none", [], "")


@dataclass
class LayerProjections:
    """What the engine calls for one decoder layer: q/k/v/o and the gated MLP's three matrices."""

    q: Callable[[torch.Tensor], torch.Tensor]
    k: Callable[[torch.Tensor], torch.Tensor]
    v: Callable[[torch.Tensor], torch.Tensor]
    o: Callable[[torch.Tensor], torch.Tensor]
    gate: Callable[[torch.Tensor], torch.Tensor]
    up: Callable[[torch.Tensor], torch.Tensor]
    down: Callable[[torch.Tensor], torch.Tensor]
    activation: Callable[[torch.Tensor], torch.Tensor]

    def mlp(self, normed: torch.Tensor) -> torch.Tensor:
        """The Llama gated MLP: down(act(gate(x)) * up(x))."""
        return self.down(self.activation(self.gate(normed)) * self.up(normed))


@dataclass
class DecoderProjections:
    """All layers' projections and whether their weights are prepacked."""

    layers: list[LayerProjections]
    prepacked: bool
    reason: str  # why packing is on or off, for logs and benchmark reports


def _linears(layer: nn.Module) -> dict[str, nn.Linear]:
    attention, mlp = layer.self_attn, layer.mlp
    return {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj, "o": attention.o_proj,
            "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}


def projection_bytes(layers: list[nn.Module]) -> int:
    """Bytes of all projection weights of ``layers`` (what packing copies)."""
    return sum(linear.weight.numel() * linear.weight.element_size()
               for layer in layers for linear in _linears(layer).values())


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _has_mkldnn_op(name: str) -> bool:
    try:
        getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def packing_obstacle(weight: torch.Tensor) -> str | None:
    """Why weights like ``weight`` cannot be prepacked here, or None when they can."""
    if weight.device.type != "cpu":
        return f"weights are on {weight.device.type}, prepacking is a CPU optimisation"
    if weight.dtype not in PACKABLE_DTYPES:
        return f"dtype {str(weight.dtype).replace('torch.', '')} is not float32/bfloat16"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    missing = [op for op in REQUIRED_OPS if not _has_mkldnn_op(op)]
    if missing:
        return f"this PyTorch build lacks {', '.join(missing)}"
    if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no oneDNN bfloat16 support"
    return None


def _self_check(linear: nn.Linear, packed: PackedLinear) -> str | None:
    """Compare packed and plain results on a few random rows; a message on mismatch."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(4, linear.in_features, generator=generator).to(linear.weight.dtype)
    with torch.no_grad():
        expected = linear(probe).float()
        actual = packed(probe).float()
    scale = float(expected.abs().max()) or 1.0
    error = float((actual - expected).abs().max()) / scale
    if error > SELF_CHECK_TOLERANCE[linear.weight.dtype]:
        return f"packed GEMM disagrees with the plain one (relative error {error:.2e})"
    return None


def _plain(layer: nn.Module) -> LayerProjections:
    return LayerProjections(**_linears(layer), activation=layer.mlp.act_fn)


def _decide(layers: list[nn.Module], prepack: bool | None) -> str | None:
    """None when packing should go ahead, else the reason it should not (raises if demanded)."""
    if prepack is False:
        return "disabled (prepack=False)"
    first = layers[0].self_attn.q_proj
    obstacle = packing_obstacle(first.weight)
    if obstacle is None and prepack is None and first.in_features < MIN_PACKED_WIDTH:
        obstacle = f"hidden size {first.in_features} is below {MIN_PACKED_WIDTH}, where packing pays off"
    if obstacle is None and prepack is None:
        needed, available = projection_bytes(layers), available_memory_bytes()
        if available is not None and needed > MEMORY_SHARE * available:
            obstacle = (f"the packed copy needs {needed / 2**30:.1f} GiB, more than "
                        f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available")
    if obstacle is not None and prepack:
        raise ConfigurationError(f"cannot prepack decoder weights: {obstacle}")
    return obstacle


_SHARED: "weakref.WeakKeyDictionary[nn.Module, DecoderProjections]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def decoder_projections(language_model: nn.Module, prepack: bool | None = None) -> DecoderProjections:
    """The projections the engine should call for ``language_model`` (a ``LlamaForCausalLM``).

    Args:
        prepack: None = auto (pack where it is supported and the copy fits), True = pack or raise
            ``ConfigurationError`` saying why not, False = plain modules.
    """
    layers = list(language_model.model.layers)
    obstacle = _decide(layers, prepack)
    if obstacle is not None:
        return DecoderProjections([_plain(layer) for layer in layers], False, obstacle)
    with _SHARED_LOCK:
        shared = _SHARED.get(language_model)
        if shared is None:
            shared = _pack(layers, demanded=bool(prepack))
            if shared.prepacked:
                _SHARED[language_model] = shared
    return shared


def _pack(layers: list[nn.Module], demanded: bool) -> DecoderProjections:
    try:
        packed_layers = []
        for layer in layers:
            packed = {name: PackedLinear(linear) for name, linear in _linears(layer).items()}
            packed_layers.append(LayerProjections(**packed, activation=layer.mlp.act_fn))
        first = _linears(layers[0])["q"]
        mismatch = _self_check(first, packed_layers[0].q)
    except (RuntimeError, AttributeError) as error:  # an op refusing these weights in this build
        mismatch = f"oneDNN refused the weights ({error})"
    if mismatch is None:
        LOG.info("decoder projection weights prepacked for CPU (%.2f GiB copy)", projection_bytes(layers) / 2**30)
        return DecoderProjections(packed_layers, True, "prepacked (oneDNN blocked layout)")
    if demanded:
        raise ConfigurationError(f"cannot prepack decoder weights: {mismatch}")
    LOG.warning("not prepacking decoder weights: %s", mismatch)
    return DecoderProjections([_plain(layer) for layer in layers], False, mismatch)
