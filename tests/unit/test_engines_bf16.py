"""Batched == single in bfloat16 on the CPU (torch runs bfloat16 there for real), by the
GPU check's rule (bench/gpu_check/equality.py): each chat's greedy tokens in a batch equal
its tokens alone, or the first differing step is a near tie of the logits; dual-encoder
vectors in a batch have cosine >= 0.999 with the same input's vector alone."""

from __future__ import annotations

import pytest

from bench.gpu_check.equality import (
    MIN_COSINE,
    batched_vs_single,
    embed_batched_vs_single,
    first_divergence,
    near_tie_tolerance,
)
from raysight.engines import build_engine
from raysight.engines.embed import EmbedRequest
from raysight.engines.generate import GenerateRequest
from raysight.spec import ModelSpec
from tests.conftest import GENERATIVE, noise_image

PROMPTS = ["Describe the image.", "What shape is this? Answer with one word.", "hi",
           "What color is the shape?", "Tell me a long story about this photo of a cat"]
SIZES = [(32, 32), (48, 32), (64, 64), (40, 56), (33, 47)]
NEW_TOKENS = 6
NO_CACHES = dict(preprocess_cache_bytes=0, vision_cache_bytes=0)
# Dual encoders to check, named (a missing builder fails instead of vanishing).
ENCODERS = ("clip", "siglip", "siglip2")


def _bf16_engine(folder: str):
    return build_engine(ModelSpec(model=folder, dtype="bfloat16", device="cpu",
                                  max_batch_size=8, **NO_CACHES))


@pytest.mark.parametrize("arch", GENERATIVE)
def test_bf16_batched_tokens_equal_single_or_flip_a_near_tie(arch, tiny_models, rng):
    engine = _bf16_engine(tiny_models[arch])
    assert {str(p.dtype) for p in engine.model.parameters()} == {"torch.bfloat16"}
    requests = [GenerateRequest.from_prompt(prompt, noise_image(rng, *size),
                                            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
                for prompt, size in zip(PROMPTS, SIZES)]
    report, batched = batched_vs_single(engine, requests)
    print(f"{arch} bf16: {report['equal_rows']}/{report['rows']} equal, near-tie rate "
          f"{report['near_tie_rate']:.2f}, first-step logit diff {report['first_step_logit_diff']:.3g}")
    assert report["passed"], report["divergences"]
    assert all(len(row.token_ids) == NEW_TOKENS for row in batched)
    # The inputs lead to different answers, so equal tokens are not a constant model's.
    assert report["distinct_answers"] > 1
    # Flips are the exception: most rows agree outright.
    assert report["equal_rows"] >= report["rows"] - 2


@pytest.mark.parametrize("arch", ENCODERS)
def test_bf16_batched_vectors_match_single(arch, tiny_models, rng):
    engine = _bf16_engine(tiny_models[arch])
    requests = [EmbedRequest(image=noise_image(rng, 32, 32)), EmbedRequest(text="a red circle"),
                EmbedRequest(image=noise_image(rng, 70, 50)),
                EmbedRequest(text="a much longer text about a photo of a cat")]
    report = embed_batched_vs_single(engine, requests)
    assert report["min_cosine"] >= MIN_COSINE, report
    assert report["passed"]
    assert report["min_distance_between_inputs"] > 1e-3  # different inputs, different vectors


def test_near_tie_rule_accepts_a_tie_and_refuses_a_wide_gap():
    import torch

    logits = torch.tensor([[4.0, 3.99, -1.0], [0.5, 0.4, 0.3]], dtype=torch.bfloat16)
    tolerance = near_tie_tolerance(torch.bfloat16, logits[0])
    assert tolerance == pytest.approx(16 * 2**-7 * 4.0)
    # Step 0 agrees; at step 1 alone took 0 and the batch took 1: a gap of 0.1 against a
    # tolerance of 16 * 2^-7 * max(1, 0.5) = 0.125, a near tie.
    tie = first_divergence(3, [0, 0], [0, 1], logits, logits, torch.bfloat16)
    assert tie is not None and tie.step == 1 and tie.row == 3 and tie.near_tie
    # A gap of 5 logits is no tie: a batching bug.
    wide = first_divergence(0, [0], [2], logits, logits, torch.bfloat16)
    assert wide is not None and not wide.near_tie and wide.gap_alone == pytest.approx(5.0)
    assert first_divergence(0, [0, 1], [0, 1], logits, logits, torch.bfloat16) is None
    # A row cut short is a difference too, never a tie.
    short = first_divergence(0, [0, 1], [0], logits, logits, torch.bfloat16)
    assert short is not None and not short.near_tie
