// Host-side argument checking shared by the CPU and CUDA entry points of the
// multi-scale deformable attention op (Deformable DETR eq. 3; VisionLLM sec. 3.2).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace visionllm {
namespace msda {

struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// Raises (as a Python RuntimeError) on anything the kernels would otherwise
// turn into out-of-bounds memory traffic.
inline Sizes check_args(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& loc,
                        const at::Tensor& attn) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got ", loc.sizes());
  TORCH_CHECK(attn.dim() == 5, "ms_deform_attn: attention_weights must be (N, Lq, M, L, P), got ",
              attn.sizes());
  Sizes s{value.size(0), value.size(1), value.size(2), value.size(3),
          loc.size(1),   loc.size(3),   loc.size(4)};
  TORCH_CHECK(loc.size(0) == s.N && loc.size(2) == s.M,
              "ms_deform_attn: sampling_locations ", loc.sizes(), " does not match value ",
              value.sizes());
  TORCH_CHECK(attn.size(0) == s.N && attn.size(1) == s.Lq && attn.size(2) == s.M &&
                  attn.size(3) == s.L && attn.size(4) == s.P,
              "ms_deform_attn: attention_weights ", attn.sizes(),
              " does not match sampling_locations ", loc.sizes());
  TORCH_CHECK(spatial_shapes.size(0) == s.L && level_start_index.dim() == 1 &&
                  level_start_index.size(0) == s.L,
              "ms_deform_attn: spatial_shapes ", spatial_shapes.sizes(), " and level_start_index ",
              level_start_index.sizes(), " must describe the L=", s.L, " levels of the locations");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(loc.scalar_type() == value.scalar_type() &&
                  attn.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share a "
              "dtype, got ",
              value.scalar_type(), ", ", loc.scalar_type(), ", ", attn.scalar_type());
  const auto dev = value.device();
  TORCH_CHECK(spatial_shapes.device() == dev && level_start_index.device() == dev &&
                  loc.device() == dev && attn.device() == dev,
              "ms_deform_attn: all tensors must be on ", dev);
  return s;
}

// Only possible where the shapes are on the host; the CUDA path trusts them
// rather than paying a device->host sync on every call.
inline void check_levels_host(const int64_t* shapes, const int64_t* starts, const Sizes& s) {
  for (int64_t l = 0; l < s.L; ++l) {
    const int64_t h = shapes[2 * l], w = shapes[2 * l + 1], start = starts[l];
    TORCH_CHECK(h >= 0 && w >= 0 && start >= 0 && start + h * w <= s.S,
                "ms_deform_attn: level ", l, " (H=", h, ", W=", w, ", start=", start,
                ") does not fit in value's S=", s.S);
  }
}

}  // namespace msda
}  // namespace visionllm
