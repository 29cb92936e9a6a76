"""Dual encoders: CLIP (softmax over labels) and SigLIP (sigmoid per label)."""

from __future__ import annotations

from raysight.families.base import EncoderFamily


class ClipFamily(EncoderFamily):
    name = "clip"
    model_types = ("clip",)


class SiglipFamily(EncoderFamily):
    name = "siglip"
    model_types = ("siglip", "siglip2")
    text_padding = "max_length"

    def label_probabilities(self, model, similarities):
        logits = similarities * model.logit_scale.exp() + model.logit_bias
        return logits.sigmoid()
