"""OpenVLA checkpoint configuration, parsed from config.json without remote code.

OpenVLA's config.json has ``model_type: "openvla"``, which ``transformers.AutoConfig`` refuses
without ``trust_remote_code``; this module reads the JSON itself, validates the fields the model
layer needs, and builds the ``LlamaConfig`` of the language model exactly as the reference does
(fields absent from ``text_config`` take ``LlamaConfig`` defaults). ``dataset_statistics.json``
is merged into ``norm_stats`` and every dataset's action statistics are validated here, at load
(:mod:`vla_cache_ros.models.norm_stats`), so that nothing about them can fail per step.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

from vla_cache_ros.errors import CheckpointError, one_line
from vla_cache_ros.models.norm_stats import ACTION_DIM, NormStats

# The action-token convention: the last 256 ids of the un-padded vocabulary are action bins.
DEFAULT_N_ACTION_BINS = 256
DEFAULT_PAD_TO_MULTIPLE_OF = 64


@dataclass
class OpenVLAConfig:
    """The fields of an OpenVLA config.json that loading and inference use."""

    timm_model_ids: list[str]
    image_sizes: list[int]
    timm_override_act_layers: list[str | None]
    use_fused_vision_backbone: bool
    n_action_bins: int
    pad_to_multiple_of: int
    norm_stats: dict[str, Any]
    text_config: dict[str, Any]
    timm_model_kwargs: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    norm_stats_sources: dict[str, str] = field(default_factory=dict)
    _action_statistics: NormStats | None = field(default=None, init=False, repr=False, compare=False)

    def action_statistics(self) -> NormStats:
        """``norm_stats`` validated per dataset (built on first call, then kept).

        Validation never raises; :meth:`NormStats.require_usable` and :meth:`NormStats.select`
        turn unusable entries into errors (``load_config`` calls the former).
        """
        if self._action_statistics is None:
            self._action_statistics = NormStats.build(self.norm_stats, ACTION_DIM, self.norm_stats_sources)
        return self._action_statistics

    @property
    def num_backbones(self) -> int:
        """Number of vision backbones (2 when fused DINOv2 + SigLIP)."""
        return len(self.timm_model_ids)

    def llama_config(self) -> LlamaConfig:
        """The language model's ``LlamaConfig``: ``text_config`` over ``LlamaConfig`` defaults."""
        fields = {k: v for k, v in self.text_config.items() if k not in ("model_type", "torch_dtype", "dtype")}
        try:
            config = LlamaConfig(**fields)
        except Exception as error:  # noqa: BLE001 - transformers also raises its own validation errors
            raise CheckpointError(f"config.json: invalid text_config ({one_line(error)})") from error
        # SDPA everywhere; the cache engine drives the layer modules itself.
        config._attn_implementation = "sdpa"
        return config

    @property
    def vocab_size(self) -> int:
        """Size of the language model's (padded) vocabulary."""
        return int(self.text_config.get("vocab_size", LlamaConfig().vocab_size))


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"dict": "object", "list": "list", "str": "string"}.get(k.__name__, k.__name__) for k in kinds)


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise CheckpointError(f"{where}: missing required field '{key}'")
    value = data[key]
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: field '{key}' has type {type(value).__name__}, expected {_type_names(kind)}")
    return value


def _positive_int(data: dict[str, Any], key: str, default: int, where: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{where}: field '{key}' must be a positive integer, got {value!r}")
    return value


def parse_config(data: dict[str, Any], where: str = "config.json") -> OpenVLAConfig:
    """Validate an OpenVLA config dictionary and return an ``OpenVLAConfig``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object at top level")
    model_type = data.get("model_type")
    if model_type not in ("openvla", "prismatic"):
        raise CheckpointError(f"{where}: model_type is {model_type!r}, expected 'openvla'")
    timm_ids = _require(data, "timm_model_ids", list, where)
    if not timm_ids or not all(isinstance(t, str) for t in timm_ids) or len(timm_ids) > 2:
        raise CheckpointError(f"{where}: timm_model_ids must list one or two timm model names")
    fused = bool(data.get("use_fused_vision_backbone", len(timm_ids) == 2))
    if fused != (len(timm_ids) == 2):
        raise CheckpointError(
            f"{where}: use_fused_vision_backbone={fused} but {len(timm_ids)} timm_model_ids given")
    image_sizes = _require(data, "image_sizes", list, where)
    if len(image_sizes) != len(timm_ids) or not all(isinstance(s, int) and s > 0 for s in image_sizes):
        raise CheckpointError(f"{where}: image_sizes must give one positive size per backbone")
    act_layers = data.get("timm_override_act_layers") or [None] * len(timm_ids)
    if len(act_layers) != len(timm_ids):
        raise CheckpointError(f"{where}: timm_override_act_layers must have one entry per backbone")
    kwargs = data.get("timm_model_kwargs") or [{} for _ in timm_ids]
    if len(kwargs) != len(timm_ids) or not all(isinstance(k, dict) for k in kwargs):
        raise CheckpointError(f"{where}: timm_model_kwargs must be a list with one object per backbone")
    text_config = _require(data, "text_config", dict, where)
    norm_stats = data.get("norm_stats") or {}
    if not isinstance(norm_stats, dict):
        raise CheckpointError(f"{where}: norm_stats must be an object")
    return OpenVLAConfig(
        timm_model_ids=list(timm_ids),
        image_sizes=list(image_sizes),
        timm_override_act_layers=list(act_layers),
        use_fused_vision_backbone=fused,
        n_action_bins=_positive_int(data, "n_action_bins", DEFAULT_N_ACTION_BINS, where),
        pad_to_multiple_of=_positive_int(data, "pad_to_multiple_of", DEFAULT_PAD_TO_MULTIPLE_OF, where),
        norm_stats=dict(norm_stats),
        text_config=dict(text_config),
        timm_model_kwargs=[dict(k) for k in kwargs],
        raw=data,
        norm_stats_sources={key: where for key in norm_stats},
    )


def load_config(directory: Path) -> OpenVLAConfig:
    """Read ``config.json``, merge ``dataset_statistics.json`` into norm_stats when present, and
    validate the action statistics.

    Raises:
        CheckpointError: missing or malformed files, an invalid field, dataset statistics not
            keyed by dataset name, or norm_stats whose datasets are all unusable (one line naming
            the file, the dataset key and what is missing; see ``NormStats.require_usable``).
    """
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not an OpenVLA checkpoint directory)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: malformed JSON ({error})") from error
    config = parse_config(data, where=str(path))
    stats_path = directory / "dataset_statistics.json"
    if stats_path.is_file():
        try:
            extra = json.loads(stats_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{stats_path}: malformed JSON ({error})") from error
        if not isinstance(extra, dict):
            raise CheckpointError(f"{stats_path}: expected an object of dataset statistics")
        if isinstance(extra.get("action"), dict):
            raise CheckpointError(
                f"{stats_path}: statistics are not keyed by dataset name (found 'action' at the top level); "
                'expected {"<dataset name>": {"action": {...}}}')
        config.norm_stats.update(extra)
        config.norm_stats_sources.update({key: str(stats_path) for key in extra})
    config.action_statistics().require_usable()
    return config
