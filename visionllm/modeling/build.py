"""Builds a VisionLLM from built parts and plain values (what a Hydra ``model`` config names)."""

from __future__ import annotations

from visionllm.modeling.backbone import Backbone
from visionllm.modeling.image_tokenizer import ImageTokenizer
from visionllm.modeling.llm import LLM
from visionllm.modeling.text_encoder import TextEncoder
from visionllm.modeling.visionllm import VisionLLM


def build_visionllm(
    *,
    backbone: Backbone,
    text_encoder: TextEncoder,
    llm: LLM,
    image_tokenizer: dict,
    none_weight: float = 0.1,
    group_matching: str = "tokenizer",
    loss_weights: dict | None = None,
    token_scale: str = "free",
    text_readout: bool = False,
    token_names: float = 0.0,
    token_names_layer: int = 1,
    named_copy: bool = False,
    copy_where: bool = False,
    token_sides: bool | float = False,
    copy_count: bool = False,
    count_loss: float = 0.0,
    count_exist: bool = False,
    name_pool: bool = False,
    referent_loss: float = 0.0,
    copy_follow: bool = False,
    copy_stay: bool = False,
    name_location: bool = False,
    name_location_from: float = 0.0,
    name_location_relative: bool = False,
    name_fit: bool = False,
    name_fit_gain: float | None = None,
    token_classes: float = 0.0,
    group_attention: str = "blocks",
    box_prior: bool = False,
    polygon_free_start: bool = False,
    scene_token: bool = False,
) -> VisionLLM:
    tokenizer = ImageTokenizer(backbone=backbone, text_encoder=text_encoder, **dict(image_tokenizer))
    return VisionLLM(image_tokenizer=tokenizer, llm=llm, none_weight=none_weight,
                     group_matching=group_matching, loss_weights=loss_weights, token_scale=token_scale,
                     text_readout=text_readout, token_names=token_names, token_names_layer=token_names_layer,
                     named_copy=named_copy, copy_where=copy_where, token_sides=token_sides, copy_count=copy_count,
                     count_loss=count_loss, count_exist=count_exist, name_pool=name_pool, referent_loss=referent_loss,
                     copy_follow=copy_follow, copy_stay=copy_stay, name_location=name_location, name_location_from=name_location_from,
                     name_location_relative=name_location_relative, name_fit=name_fit,
                     name_fit_gain=name_fit_gain, token_classes=token_classes,
                     group_attention=group_attention, box_prior=box_prior,
                     polygon_free_start=polygon_free_start, scene_token=scene_token)
