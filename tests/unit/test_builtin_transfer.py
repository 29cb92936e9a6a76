"""shapes-clip's vision tower copied into a BLIP tower (`raysight.builtin.transfer`).

The copy is exact everywhere but at the folded pre-LayerNorm, which is exact up to each
token's spread: these tests check both parts on small random towers, and that towers of
different shapes are refused."""

from __future__ import annotations

import pytest
import torch

from raysight.builtin.transfer import clip_vision_into_blip, typical_embedding_std

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def towers(**blip_overrides):
    from transformers import BlipVisionConfig, BlipVisionModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**TOWER)).eval()
    # Random LayerNorm gains and biases, so that copying them is visible.
    with torch.no_grad():
        for module in clip.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    blip = BlipVisionModel(BlipVisionConfig(**{**TOWER, **blip_overrides})).eval()
    return clip, blip


def test_layers_copy_exactly():
    clip, blip = towers()
    pixels = torch.randn(3, 3, 32, 32)
    clip_vision_into_blip(clip, blip, pixels)
    hidden = torch.randn(3, 17, 32)
    with torch.no_grad():
        theirs = clip.post_layernorm(clip.encoder(inputs_embeds=hidden).last_hidden_state)
        ours = blip.post_layernorm(blip.encoder(inputs_embeds=hidden).last_hidden_state)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_folded_pre_layernorm_is_exact_up_to_each_tokens_spread():
    clip, blip = towers()
    pixels = torch.randn(4, 3, 32, 32)
    clip_vision_into_blip(clip, blip, pixels)
    spread = typical_embedding_std(clip, pixels)
    norm = clip.pre_layrnorm
    with torch.no_grad():
        raw = clip.embeddings(pixels)
        ours = blip.embeddings(pixels)
        # Undo the fold's gain and bias: what is left is the token minus its mean.
        unfolded = (ours - norm.bias) / norm.weight * (spread**2 + norm.eps) ** 0.5
        torch.testing.assert_close(unfolded, raw - raw.mean(dim=-1, keepdim=True),
                                   rtol=1e-4, atol=1e-4)


def test_towers_of_other_shapes_are_refused():
    clip, blip = towers(hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act"):
        clip_vision_into_blip(clip, blip, torch.randn(2, 3, 32, 32))
