"""The language-model part equals a stock ``transformers.LlamaForCausalLM`` built independently."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from test.models.helpers import INSTRUCTION, read_tensors
from vla_cache_ros.models.config import parse_config
from vla_cache_ros.models.tiny import DINOV2_ID, SIGLIP_ID
from vla_cache_ros.models.vla import ACTION_DIM, OpenVLA

PREFIX = "language_model."


@pytest.fixture(scope="module")
def stock_llama(tiny_dir: Path) -> LlamaForCausalLM:
    """LlamaForCausalLM from config.json's text_config over LlamaConfig defaults, weights from the file."""
    text_config = json.loads((tiny_dir / "config.json").read_text())["text_config"]
    fields = {k: v for k, v in text_config.items() if k not in ("model_type", "torch_dtype")}
    model = LlamaForCausalLM(LlamaConfig(**fields))
    weights = {k[len(PREFIX):]: v for k, v in read_tensors(tiny_dir).items() if k.startswith(PREFIX)}
    model.load_state_dict(weights, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def embeddings(tiny_model: OpenVLA, frame: np.ndarray) -> torch.Tensor:
    """``[BOS | visual | prompt]`` embeddings of the test frame, from the package."""
    visual = tiny_model.encode_image(tiny_model.preprocess(frame).pixel_values)
    return tiny_model.assemble_embeddings(visual, tiny_model.prompt_ids(INSTRUCTION))


def test_sequence_layout(tiny_model: OpenVLA, frame: np.ndarray, embeddings: torch.Tensor) -> None:
    ids = tiny_model.prompt_ids(INSTRUCTION)
    visual = tiny_model.encode_image(tiny_model.preprocess(frame).pixel_values)
    table = tiny_model.language_model.get_input_embeddings().weight
    assert visual.shape == (1, 256, tiny_model.llama_config.hidden_size)
    assert embeddings.shape == (1, 1 + 256 + len(ids) - 1, tiny_model.llama_config.hidden_size)
    torch.testing.assert_close(embeddings[0, 0], table[ids[0]], rtol=0, atol=0)
    torch.testing.assert_close(embeddings[0, 1:257], visual[0], rtol=0, atol=0)
    torch.testing.assert_close(embeddings[0, 257:], table[ids[1:]], rtol=0, atol=0)


def test_forward_equals_stock_llama(tiny_model: OpenVLA, stock_llama: LlamaForCausalLM,
                                    embeddings: torch.Tensor) -> None:
    with torch.no_grad():
        ours = tiny_model.language_model(inputs_embeds=embeddings).logits
        theirs = stock_llama(inputs_embeds=embeddings).logits
    assert ours.shape == theirs.shape == (1, embeddings.shape[1], 32064)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_greedy_decoding_equals_stock_llama_without_cache(tiny_model: OpenVLA, stock_llama: LlamaForCausalLM,
                                                          frame: np.ndarray, embeddings: torch.Tensor) -> None:
    """7 argmax steps, each recomputing the whole sequence in the stock model (no KV cache)."""
    prediction = tiny_model.predict_action_tokens(frame, INSTRUCTION)
    sequence = embeddings
    tokens, logits = [], []
    with torch.no_grad():
        for _ in range(ACTION_DIM):
            step = stock_llama(inputs_embeds=sequence).logits[0, -1]
            token = int(step.argmax())
            tokens.append(token)
            logits.append(step)
            next_embedding = stock_llama.get_input_embeddings()(torch.tensor([[token]]))
            sequence = torch.cat([sequence, next_embedding], dim=1)
    assert prediction.tokens.tolist() == tokens
    torch.testing.assert_close(prediction.logits, torch.stack(logits), rtol=1e-4, atol=1e-4)


def test_text_config_fields_override_defaults(tiny_model: OpenVLA, tiny_dir: Path) -> None:
    text_config = json.loads((tiny_dir / "config.json").read_text())["text_config"]
    config = tiny_model.llama_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "pad_token_id"):
        assert getattr(config, key) == text_config[key], key
    assert config.rms_norm_eps == 1e-6  # not in text_config: the LlamaConfig default


def test_openvla_7b_text_config_takes_llama_defaults() -> None:
    """The 7B export's text_config lists 4 fields; everything else is a LlamaConfig default."""
    data = {
        "model_type": "openvla", "timm_model_ids": [DINOV2_ID, SIGLIP_ID], "image_sizes": [224, 224],
        "timm_override_act_layers": [None, None], "use_fused_vision_backbone": True,
        "n_action_bins": 256, "pad_to_multiple_of": 64, "norm_stats": {},
        "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
    }
    config = parse_config(data).llama_config()
    expected = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                "intermediate_size": 11008, "rms_norm_eps": 1e-6, "hidden_act": "silu", "vocab_size": 32064,
                "pad_token_id": 32000, "tie_word_embeddings": False}
    assert {k: getattr(config, k) for k in expected} == expected
    rope_theta = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
    assert rope_theta == 10000.0
