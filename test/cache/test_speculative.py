"""Exact speculative decoding fused into the prefill (issue 14 §1): whatever the draft, the
output tokens are the greedy ones and the logits agree; the kept prompt cache is unchanged."""
from __future__ import annotations

import copy

import pytest
import torch

from vla_cache_ros.cache.engine import DECODE_ROOM, KVReuseEngine, PrefillResult
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.synthetic import SyntheticScene

INSTRUCTION = "pick up the red cube"
STEPS = 7


def embeddings_of(model, frame) -> torch.Tensor:
    prepared = model.preprocess(frame)
    return model.assemble_embeddings(model.encode_image(prepared.pixel_values), model.prompt_ids(INSTRUCTION))


def drafts_for(greedy: list[int], vocab: int) -> dict[str, list[int]]:
    """Fully right, right for 3 then wrong, wrong from the first token, and a short draft."""
    wrong = [(token + 1) % vocab for token in greedy]
    return {"right": greedy, "partly": greedy[:3] + wrong[3:], "wrong": wrong, "short": greedy[:2]}


def expected_accepted(kind: str) -> int:
    return {"right": STEPS, "partly": 3, "wrong": 0, "short": 2}[kind]


@pytest.mark.parametrize("prepack", [False, True])
def test_any_draft_gives_the_greedy_tokens(tiny_model, prepack):
    engine = KVReuseEngine(tiny_model.language_model, prepack=prepack)
    scene = SyntheticScene(seed=4, height=200, width=260)
    num_visual = tiny_model.num_visual_tokens
    vocab = tiny_model.llama_config.vocab_size
    for index in (0, 3):
        embeddings = embeddings_of(tiny_model, scene.frame(index))
        reference = tiny_model.predict_action_tokens(scene.frame(index), INSTRUCTION)
        greedy = reference.tokens.tolist()
        plain = engine.prefill(embeddings, num_visual)
        plain_decoded = engine.decode(plain, STEPS)
        assert plain_decoded.tokens.tolist() == greedy and plain_decoded.passes == STEPS - 1
        for kind, draft in drafts_for(greedy, vocab).items():
            prefill = engine.prefill(embeddings, num_visual, draft=torch.tensor(draft))
            decoded = engine.decode(prefill, STEPS)
            assert decoded.tokens.tolist() == greedy, kind
            assert torch.max(torch.abs(decoded.logits - reference.logits)).item() < 1e-5, kind
            assert decoded.accepted_draft_tokens == expected_accepted(kind), kind
            # Known after the prefill: one token per draft position verified, plus the first
            # mismatch's greedy token for free (a draft of D tokens gives at most D).
            known = min(STEPS, len(draft), decoded.accepted_draft_tokens + 1)
            assert decoded.passes == STEPS - known, kind
            assert prefill.draft_token_layers == (len(draft) - 1) * engine.num_layers
            assert prefill.token_layer_computations == plain.token_layer_computations  # prompt rows only
            for layer in range(engine.num_layers):  # the prompt cache kept for the next step
                for ours, theirs in zip(prefill.prompt_kv.prompt(layer), plain.prompt_kv.prompt(layer)):
                    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
            assert prefill.prompt_kv.length == plain.prompt_kv.length


def test_drafts_compose_with_reuse(tiny_model):
    """Step 2 with reused visual K/V and a draft equals step 2 with the same reuse and no draft."""
    engine = KVReuseEngine(tiny_model.language_model)
    scene = SyntheticScene(seed=5, height=200, width=260)
    num_visual = tiny_model.num_visual_tokens
    first = engine.prefill(embeddings_of(tiny_model, scene.frame(0)), num_visual)
    previous = engine.decode(first, STEPS).tokens
    reuse = torch.arange(0, num_visual, 2)
    second = embeddings_of(tiny_model, scene.frame(1))
    plain = engine.prefill(second, num_visual, reuse, copy.deepcopy(first.prompt_kv))
    greedy = engine.decode(plain, STEPS)
    for draft in (previous, torch.tensor(drafts_for(greedy.tokens.tolist(), 100)["partly"])):
        drafted = engine.prefill(second, num_visual, reuse, copy.deepcopy(first.prompt_kv), draft=draft)
        decoded = engine.decode(drafted, STEPS)
        assert decoded.tokens.tolist() == greedy.tokens.tolist()
        assert torch.max(torch.abs(decoded.logits - greedy.logits)).item() < 1e-5
        torch.testing.assert_close(drafted.computed_positions, plain.computed_positions)


def test_relevance_ignores_the_draft(tiny_model):
    """VLA-Cache's text->vision attention is read over prompt rows only."""
    engine = KVReuseEngine(tiny_model.language_model)
    embeddings = embeddings_of(tiny_model, SyntheticScene(seed=6).frame(0))
    layer = engine.num_layers - 1
    plain = engine.prefill(embeddings, tiny_model.num_visual_tokens, relevance_layer=layer)
    drafted = engine.prefill(embeddings, tiny_model.num_visual_tokens, relevance_layer=layer,
                             draft=torch.arange(STEPS))
    torch.testing.assert_close(drafted.relevance, plain.relevance, rtol=0, atol=1e-6)


def test_an_overlong_draft_is_refused(tiny_model):
    engine = KVReuseEngine(tiny_model.language_model)
    embeddings = embeddings_of(tiny_model, SyntheticScene(seed=6).frame(0))
    with pytest.raises(ConfigurationError, match="at most"):
        engine.prefill(embeddings, tiny_model.num_visual_tokens, draft=torch.arange(DECODE_ROOM + 2))
    empty = engine.prefill(embeddings, tiny_model.num_visual_tokens, draft=torch.tensor([], dtype=torch.long))
    assert isinstance(empty, PrefillResult) and empty.draft is None and empty.draft_logits is None


@pytest.mark.parametrize("mode", ["off", "fixed", "vla_cache"])
def test_speculative_policy_acts_as_greedy(tiny_model, mode):
    """Through CachedVLAPolicy: the previous step's tokens are the draft; actions and tokens equal
    the greedy policy's step by step; stats count the draft, acceptance and passes; a reset
    starts without a draft; the setting is validated and switchable."""
    import numpy as np

    from vla_cache_ros.policy import CachedVLAPolicy

    scene = SyntheticScene(seed=7, height=200, width=260)
    greedy = CachedVLAPolicy(tiny_model, mode=mode, cache_ratio=0.5, unnorm_key="tiny_sim")
    speculative = CachedVLAPolicy(tiny_model, mode=mode, cache_ratio=0.5, unnorm_key="tiny_sim",
                                  decode="speculative")
    for index in range(4):
        if index == 2:
            greedy.reset()
            speculative.reset()
        action, stats = greedy.step(scene.frame(index), INSTRUCTION)
        fast_action, fast = speculative.step(scene.frame(index), INSTRUCTION)
        np.testing.assert_array_equal(fast_action, action)
        np.testing.assert_array_equal(fast.action_tokens, stats.action_tokens)
        assert stats.decode == "greedy" and stats.draft_tokens == 0 and stats.decode_passes == STEPS - 1
        assert fast.decode == "speculative"
        assert fast.draft_tokens == (0 if index in (0, 2) else STEPS)  # no draft after a reset
        known = min(STEPS, fast.accepted_draft_tokens + 1) if fast.draft_tokens else 1
        assert fast.decode_passes == STEPS - known
        # Speculation saves sequential passes, not FLOPs: the verified draft rows cost what the
        # decode passes they replace would have; rejected draft rows come on top.
        if fast.draft_tokens and fast.accepted_draft_tokens >= STEPS - 1:  # all 7 known after the prefill
            assert fast.flops == stats.flops
        elif fast.draft_tokens:
            assert fast.flops > stats.flops
    with pytest.raises(ConfigurationError, match="greedy, speculative"):
        speculative.set_decode("beam")
    with pytest.raises(ConfigurationError, match="unknown decode setting"):
        CachedVLAPolicy(tiny_model, decode="jacobi")
    speculative.set_decode("greedy")
    assert speculative.decode == "greedy" and speculative.step(scene.frame(5), INSTRUCTION)[1].draft_tokens == 0
