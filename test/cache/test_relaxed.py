"""The differentiable relaxation of the partial-recompute prefill (cache/relaxed.py): a hard
keep is the engine's reuse, all ones the uncached prefill; gradients reach the keep weights."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vla_cache_ros.cache.engine import VISUAL_START, KVReuseEngine
from vla_cache_ros.cache.relaxed import VisualKV, mixed_prefill, visual_kv
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.synthetic import SyntheticScene

INSTRUCTION = "pick up the red cube"
DRAFT = 4  # engine draft length; the relaxation appends DRAFT - 1 of its tokens
LAYER = 1  # where relevance is read
ATOL = 1e-5


def embeddings_of(model, frame) -> torch.Tensor:
    prepared = model.preprocess(frame)
    return model.assemble_embeddings(model.encode_image(prepared.pixel_values), model.prompt_ids(INSTRUCTION))


@pytest.fixture(scope="module")
def frames(tiny_model) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous, current) embeddings, each (2, L, hidden): two scenes, one frame pair each."""
    scenes = [SyntheticScene(seed=11, height=200, width=260), SyntheticScene(seed=12, height=200, width=260)]
    with torch.no_grad():
        previous = torch.cat([embeddings_of(tiny_model, scene.frame(0)) for scene in scenes])
        current = torch.cat([embeddings_of(tiny_model, scene.frame(3)) for scene in scenes])
    return previous, current


@pytest.fixture(scope="module")
def engine(tiny_model) -> KVReuseEngine:
    return KVReuseEngine(tiny_model.language_model, prepack=False)


@pytest.fixture(scope="module")
def draft(tiny_model) -> torch.Tensor:
    """(2, DRAFT) arbitrary token ids (teacher forcing needs no right answers)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, tiny_model.llama_config.vocab_size, (2, DRAFT), generator=generator)


def run(engine, current, keep, cached, draft, **kwargs):
    return mixed_prefill(engine, current, keep.shape[1], keep, cached, draft[:, :-1], **kwargs)


def test_visual_kv_is_the_engine_cache(tiny_model, engine, frames):
    previous, _ = frames
    num_visual = tiny_model.num_visual_tokens
    with torch.no_grad():
        ours = visual_kv(engine, previous, num_visual)
    theirs = VisualKV.from_prompt_kv([engine.prefill(previous[row:row + 1], num_visual).prompt_kv for row in range(2)])
    assert ours.batch == 2 and ours.num_visual == num_visual and len(ours.keys) == engine.num_layers
    assert ours.keys[0].shape[1] == tiny_model.llama_config.num_key_value_heads  # grouped-query heads
    for mine, engines in zip(ours.keys + ours.values, theirs.keys + theirs.values):
        torch.testing.assert_close(mine, engines, rtol=0, atol=ATOL)


def test_hard_keep_is_the_engine_with_reuse(tiny_model, engine, frames, draft):
    """Each row with its own random reuse set equals the engine run for that row: logits at the
    last prompt position and at the draft positions, and the relevance."""
    previous, current = frames
    num_visual = tiny_model.num_visual_tokens
    generator = torch.Generator().manual_seed(0)
    counts = (num_visual // 2, 3 * num_visual // 4)
    reuse = [torch.randperm(num_visual, generator=generator)[:count] for count in counts]
    keep = torch.ones(2, num_visual)
    for row, indices in enumerate(reuse):
        keep[row, indices] = 0.0
    with torch.no_grad():
        mixed = run(engine, current, keep, visual_kv(engine, previous, num_visual), draft, attention_layer=LAYER)
    assert mixed.logits.shape == (2, DRAFT, tiny_model.llama_config.vocab_size)
    assert mixed.logits.dtype == torch.float32 and mixed.relevance.shape == (2, num_visual)
    for row in range(2):
        cache = engine.prefill(previous[row:row + 1], num_visual).prompt_kv
        expected = engine.prefill(current[row:row + 1], num_visual, reuse=reuse[row], cached=cache,
                                  relevance_layer=LAYER, draft=draft[row])
        assert expected.computed_positions.numel() == current.shape[1] - reuse[row].numel()
        torch.testing.assert_close(mixed.logits[row, 0], expected.last_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(mixed.logits[row, 1:], expected.draft_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(mixed.relevance[row], expected.relevance, rtol=0, atol=1e-6)


def test_keep_all_is_the_uncached_prefill(tiny_model, engine, frames, draft):
    previous, current = frames
    num_visual = tiny_model.num_visual_tokens
    with torch.no_grad():
        mixed = run(engine, current, torch.ones(2, num_visual), visual_kv(engine, previous, num_visual), draft,
                    attention_layer=LAYER)
    for row in range(2):
        expected = engine.prefill(current[row:row + 1], num_visual, relevance_layer=LAYER, draft=draft[row])
        torch.testing.assert_close(mixed.logits[row, 0], expected.last_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(mixed.logits[row, 1:], expected.draft_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(mixed.relevance[row], expected.relevance, rtol=0, atol=1e-6)


def soft_loss(engine, current, keep, cached, draft) -> torch.Tensor:
    """Teacher-forced cross-entropy of the draft tokens (any differentiable loss on the logits)."""
    logits = run(engine, current, keep, cached, draft).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), draft.reshape(-1), reduction="sum")


def test_gradients_reach_keep_and_embeddings(tiny_model, frames, draft):
    """Every visual token's keep weight gets a finite, nonzero gradient; the embeddings get one
    too. A prepacked engine trains through plain modules, with the same gradients."""
    previous, current = frames
    num_visual = tiny_model.num_visual_tokens
    gradients = []
    for prepack in (False, True):
        engine = KVReuseEngine(tiny_model.language_model, prepack=prepack)
        assert engine.projections.prepacked is prepack
        with torch.no_grad():
            cached = visual_kv(engine, previous, num_visual)
        keep = torch.full((2, num_visual), 0.5, requires_grad=True)
        inputs = current.clone().requires_grad_()
        soft_loss(engine, inputs, keep, cached, draft).backward()
        assert torch.isfinite(keep.grad).all() and torch.isfinite(inputs.grad).all()
        assert (keep.grad != 0).all()
        assert inputs.grad[:, VISUAL_START:VISUAL_START + num_visual].abs().sum() > 0
        gradients.append(keep.grad)
    torch.testing.assert_close(gradients[1], gradients[0])


def test_keep_gradient_matches_finite_difference(tiny_model, frames, draft):
    """The gradient along a random direction of keep equals the central difference of a linear
    loss on the logits, so every layer's mix is differentiated correctly. The model is a float64
    copy, which leaves the float32 logits' rounding as the only noise in the difference."""
    engine = KVReuseEngine(copy.deepcopy(tiny_model.language_model).double(), prepack=False)
    previous, current = (embeddings.double() for embeddings in frames)
    num_visual = tiny_model.num_visual_tokens
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        cached = visual_kv(engine, previous, num_visual)
    keep = torch.rand(2, num_visual, generator=generator, dtype=torch.float64).requires_grad_()
    direction = torch.randn(2, num_visual, generator=generator, dtype=torch.float64)
    weights = torch.randn(2, DRAFT, tiny_model.llama_config.vocab_size, generator=generator, dtype=torch.float64)

    def loss(keep: torch.Tensor) -> torch.Tensor:
        return (run(engine, current, keep, cached, draft).logits.double() * weights).sum()

    loss(keep).backward()
    step = 1e-2
    with torch.no_grad():
        estimate = float(loss(keep + step * direction) - loss(keep - step * direction)) / (2 * step)
    assert estimate == pytest.approx(float((keep.grad * direction).sum()), rel=1e-2)


def test_soft_keep_lies_between_reuse_and_recompute(tiny_model, engine, frames, draft):
    """keep = 0.5 gives logits unlike both hard ends, and closer to each than they are to each other."""
    previous, current = frames
    num_visual = tiny_model.num_visual_tokens
    with torch.no_grad():
        cached = visual_kv(engine, previous, num_visual)
        reused, half, recomputed = (run(engine, current, torch.full((2, num_visual), value), cached, draft).logits
                                    for value in (0.0, 0.5, 1.0))
    apart = (recomputed - reused).abs().amax(dim=(1, 2))
    to_reused = (half - reused).abs().amax(dim=(1, 2))
    to_recomputed = (half - recomputed).abs().amax(dim=(1, 2))
    assert (apart > 1e-3).all()
    assert (to_reused > 1e-3 * apart).all() and (to_recomputed > 1e-3 * apart).all()
    assert (to_reused < apart).all() and (to_recomputed < apart).all()


def test_mismatched_shapes_are_refused(tiny_model, engine, frames):
    previous, current = frames
    num_visual = tiny_model.num_visual_tokens
    with torch.no_grad():
        cached = visual_kv(engine, previous, num_visual)
    with pytest.raises(ConfigurationError, match="keep must be"):
        mixed_prefill(engine, current, num_visual, torch.ones(1, num_visual), cached)
    with pytest.raises(ConfigurationError, match="cached K/V"):
        mixed_prefill(engine, current[:1], num_visual, torch.ones(1, num_visual), cached)
    with pytest.raises(ConfigurationError, match="appended"):
        mixed_prefill(engine, current, num_visual, torch.ones(2, num_visual), cached, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigurationError, match="attention_layer"):
        mixed_prefill(engine, current, num_visual, torch.ones(2, num_visual), cached,
                      attention_layer=engine.num_layers)
    with pytest.raises(ConfigurationError, match="longer than"):
        mixed_prefill(engine, current[:, :VISUAL_START + num_visual], num_visual, torch.ones(2, num_visual), cached)
    with pytest.raises(ConfigurationError, match="L >="):
        visual_kv(engine, previous[:, :num_visual], num_visual)
