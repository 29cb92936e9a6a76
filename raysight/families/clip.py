"""Dual encoders: CLIP (softmax over labels), SigLIP and SigLIP2 (sigmoid per label)."""

from __future__ import annotations

from raysight.families.base import EncoderFamily


class ClipFamily(EncoderFamily):
    name = "clip"
    model_types = ("clip",)


class SiglipFamily(EncoderFamily):
    """SigLIP: texts padded to max_length as in training; each label scored on its own."""

    name = "siglip"
    model_types = ("siglip",)
    text_padding = "max_length"

    def label_probabilities(self, model, similarities):
        logits = similarities * model.logit_scale.exp() + model.logit_bias
        return logits.sigmoid()


class Siglip2Family(SiglipFamily):
    """SigLIP2 (NaFlex): each image keeps its aspect ratio as a grid of patches padded to the
    processor's max_num_patches, so the vision tower also needs the patch mask and the grid."""

    name = "siglip2"
    model_types = ("siglip2",)
    image_inputs = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
    # Patches flattened as (p, p, C); padded patches are zeros and stay zeros.
    pixel_layout = "patch_channels_last"
