"""Multi-scale deformable attention: one Python face over the reference and native kernels."""

from visionllm.ops.reference import ms_deform_attn_reference


def multi_scale_deformable_attention(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *, backend="auto"
):
    """See ``ms_deform_attn_reference`` for shapes; native kernels plug in behind ``backend``."""
    return ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


__all__ = ["multi_scale_deformable_attention", "ms_deform_attn_reference"]
