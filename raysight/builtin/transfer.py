"""Start shapes-vlm's vision tower from shapes-clip's trained one.

Both towers are ViTs of the same width, depth, heads and patch size, and CLIP's tower
generalises to other renderers where a BLIP tower trained only through its caption decoder
does not. The weights map one to one except in two places:

- BLIP fuses the attention's query, key and value into one Linear (`qkv`, rows in that
  order) and calls the output Linear `projection`; CLIP keeps four Linears.
- CLIP normalises the embeddings (`pre_layrnorm`) before the first layer; BLIP has no such
  LayerNorm. A LayerNorm is ``g * (x - mean(x)) / std(x) + b`` per token: subtracting the
  mean is linear, so with the standard deviation replaced by its typical value over
  real images it folds into the patch convolution, the class embedding and the position
  embeddings. What is left (each token's spread around that typical value) is small, and
  a short fine-tuning absorbs it.

BLIP then applies CLIP's `post_layernorm` to every token (CLIP only to the class token), so
BLIP's class token equals CLIP's pooled output up to that approximation.
"""

from __future__ import annotations


def typical_embedding_std(clip_vision, pixel_values) -> float:
    """The median per-token standard deviation of CLIP's embeddings on these images."""
    import torch

    with torch.no_grad():
        tokens = clip_vision.embeddings(pixel_values)
        return tokens.std(dim=-1, unbiased=False).median().item()


def clip_vision_into_blip(clip_vision, blip_vision, pixel_values) -> None:
    """Copy `clip_vision` (`CLIPModel.vision_model`) into `blip_vision` (`BlipVisionModel`).

    `pixel_values` (images both processors prepare alike) set the typical spread the
    folded pre-LayerNorm divides by. Both configs must share width, depth, heads, patch
    size, image size and activation, or this raises ValueError.
    """
    import torch

    ours, theirs = blip_vision.config, clip_vision.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "patch_size", "image_size", "hidden_act", "layer_norm_eps"):
        if getattr(ours, key) != getattr(theirs, key):
            raise ValueError(f"vision towers differ in {key}: BLIP {getattr(ours, key)!r}, "
                             f"CLIP {getattr(theirs, key)!r}")
    spread = typical_embedding_std(clip_vision, pixel_values)
    norm = clip_vision.pre_layrnorm
    eps = norm.eps
    with torch.no_grad():
        scale = norm.weight / (spread**2 + eps) ** 0.5  # per channel

        def centred(matrix):  # subtract the mean over the channel axis (the last one)
            return matrix - matrix.mean(dim=-1, keepdim=True)

        source, target = clip_vision.embeddings, blip_vision.embeddings
        # Conv weight [out, in, k, k]: centre and scale over `out`, the channel axis.
        conv = source.patch_embedding.weight
        conv = conv - conv.mean(dim=0, keepdim=True)
        target.patch_embedding.weight.copy_(conv * scale[:, None, None, None])
        # The bias b, and the centred, scaled constants, ride on the position embeddings.
        target.patch_embedding.bias.zero_()
        positions = source.position_embedding.weight  # [tokens, channels]
        folded = centred(positions) * scale + norm.bias
        # The class token gets its embedding on top of its position (CLIP adds both too).
        folded[0] = centred(positions[0] + source.class_embedding) * scale + norm.bias
        target.class_embedding.zero_()
        target.position_embedding.copy_(folded[None])
        for mine, other in zip(blip_vision.encoder.layers, clip_vision.encoder.layers):
            attention = other.self_attn
            mine.self_attn.qkv.weight.copy_(torch.cat(
                [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]))
            mine.self_attn.qkv.bias.copy_(torch.cat(
                [attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
            mine.self_attn.projection.load_state_dict(attention.out_proj.state_dict())
            mine.layer_norm1.load_state_dict(other.layer_norm1.state_dict())
            mine.layer_norm2.load_state_dict(other.layer_norm2.state_dict())
            mine.mlp.load_state_dict(other.mlp.state_dict())
        blip_vision.post_layernorm.load_state_dict(clip_vision.post_layernorm.state_dict())
