// CPU kernel and op registration for multi-scale deformable attention
// (Deformable DETR, Zhu et al. 2021, eq. 3; VisionLLM sec. 3.2 image tokenizer).
//
// Shapes: value (N, S, M, D); spatial_shapes (L, 2) = (H, W); level_start_index
// (L,); sampling_locations (N, Lq, M, L, P, 2) = (x, y) in [0, 1];
// attention_weights (N, Lq, M, L, P); output (N, Lq, M * D).
//
// Determinism: every output element of the backward has exactly one owner
// task, which accumulates it in a fixed order. grad_value is scattered by
// tasks that each own a (batch, head, channel block) slice and visit queries,
// levels, points and corners in order; the location and attention-weight
// gradients are owned by their (batch, query, head) row, computed in the same
// sweep when the slices cover whole rows, else in a separate pass parallel
// over rows. No atomics and no per-thread buffers, and the result is bitwise
// identical for any thread count.
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "msda_common.h"
#include "msda_op.h"

namespace visionllm {
namespace {

using msda::Sizes;

// Levels are read once per call; the kernels index into these small arrays.
struct Levels {
  std::vector<int64_t> shapes, starts;
};

Levels host_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const Sizes& s) {
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  Levels lv{std::vector<int64_t>(shapes.data_ptr<int64_t>(), shapes.data_ptr<int64_t>() + 2 * s.L),
            std::vector<int64_t>(starts.data_ptr<int64_t>(), starts.data_ptr<int64_t>() + s.L)};
  msda::check_levels_host(lv.shapes.data(), lv.starts.data(), s);
  return lv;
}

void check_cpu(const at::Tensor& value) {
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn CPU kernel got a ", value.device(),
              " tensor");
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn CPU kernel supports float32 and float64, got ", value.scalar_type(),
              " (use backend='reference' or float32)");
}

// A (batch, query, head) row costs about L * P * 4 * D multiply-adds; keep
// chunks big enough that scheduling does not dominate small problems.
int64_t row_grain(const Sizes& s) {
  const int64_t work = std::max<int64_t>(1, s.L * s.P * 4 * s.D);
  return std::max<int64_t>(1, 16384 / work);
}

at::Tensor forward_cpu(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& loc_in,
                       const at::Tensor& attn_in) {
  const Sizes s = msda::check_args(value_in, spatial_shapes, level_start_index, loc_in, attn_in);
  check_cpu(value_in);
  const Levels lv = host_levels(spatial_shapes, level_start_index, s);
  const auto value = value_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  const int64_t rows = s.N * s.Lq * s.M;
  const int64_t row_stride = s.M * s.D;

  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    using acc_t = scalar_t;
    const scalar_t* v = value.data_ptr<scalar_t>();
    const scalar_t* lp = loc.data_ptr<scalar_t>();
    const scalar_t* ap = attn.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(s), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(static_cast<size_t>(s.D));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t m = r % s.M;
        const int64_t n = r / (s.Lq * s.M);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const scalar_t* loc_r = lp + r * s.L * s.P * 2;
        const scalar_t* attn_r = ap + r * s.L * s.P;
        for (int64_t l = 0; l < s.L; ++l) {
          const int64_t H = lv.shapes[2 * l], W = lv.shapes[2 * l + 1];
          const scalar_t* level = v + ((n * s.S + lv.starts[l]) * s.M + m) * s.D;
          for (int64_t p = 0; p < s.P; ++p) {
            const int64_t i = l * s.P + p;
            const auto pt = msda::make_point<acc_t>(loc_r[2 * i], loc_r[2 * i + 1], H, W);
            msda::gather(acc.data(), level, row_stride, pt, static_cast<acc_t>(attn_r[i]), s.D);
          }
        }
        std::copy(acc.begin(), acc.end(), op + r * s.D);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& loc_in, const at::Tensor& attn_in,
    const at::Tensor& grad_out_in) {
  const Sizes s = msda::check_args(value_in, spatial_shapes, level_start_index, loc_in, attn_in);
  check_cpu(value_in);
  TORCH_CHECK(grad_out_in.dim() == 3 && grad_out_in.size(0) == s.N && grad_out_in.size(1) == s.Lq &&
                  grad_out_in.size(2) == s.M * s.D,
              "ms_deform_attn: grad_output must be (N, Lq, M * D), got ", grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.scalar_type() == value_in.scalar_type() && grad_out_in.device().is_cpu(),
              "ms_deform_attn: grad_output must match value's dtype and device");
  const Levels lv = host_levels(spatial_shapes, level_start_index, s);
  const auto value = value_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  auto grad_value = at::zeros(value.sizes(), value.options());
  auto grad_loc = at::empty(loc.sizes(), loc.options());
  auto grad_attn = at::empty(attn.sizes(), attn.options());
  const int64_t rows = s.N * s.Lq * s.M;
  const int64_t row_stride = s.M * s.D;

  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = scalar_t;
    const scalar_t* v = value.data_ptr<scalar_t>();
    const scalar_t* lp = loc.data_ptr<scalar_t>();
    const scalar_t* ap = attn.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    scalar_t* gv = grad_value.data_ptr<scalar_t>();
    scalar_t* gl = grad_loc.data_ptr<scalar_t>();
    scalar_t* ga = grad_attn.data_ptr<scalar_t>();

    // grad_value is owned per (batch, head, channel block); channel blocks
    // only exist to keep every thread busy when N * M is small. With a single
    // block a task owns whole rows too, so both passes fuse into one sweep that
    // resolves each point once.
    const int64_t pairs = s.N * s.M;
    const int64_t threads = at::get_num_threads();
    int64_t blocks = 1;
    if (pairs > 0 && pairs < 2 * threads) {
      blocks = std::min<int64_t>((2 * threads + pairs - 1) / pairs, std::max<int64_t>(1, s.D / 8));
    }
    const bool fused = blocks == 1;
    const int64_t block_ch = (s.D + blocks - 1) / blocks;

    // Gradients of the attention weight and location of point i; g is its row of grad_output.
    auto point_grads = [&](int64_t i, const msda::Point<acc_t>& pt, const scalar_t* level,
                           const scalar_t* g, int64_t H, int64_t W) {
      acc_t d_sample = 0, d_x = 0, d_y = 0;
      msda::grad_dots(level, row_stride, pt, g, s.D, d_sample, d_x, d_y);
      acc_t gx, gy;
      msda::location_grad(static_cast<acc_t>(ap[i]), d_x, d_y, H, W, gx, gy);
      ga[i] = d_sample;
      gl[2 * i] = gx;
      gl[2 * i + 1] = gy;
    };

    if (!fused) {  // pass 1, parallel over (batch, query, head) rows
      at::parallel_for(0, rows, row_grain(s), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t m = r % s.M;
          const int64_t n = r / (s.Lq * s.M);
          for (int64_t l = 0; l < s.L; ++l) {
            const int64_t H = lv.shapes[2 * l], W = lv.shapes[2 * l + 1];
            const scalar_t* level = v + ((n * s.S + lv.starts[l]) * s.M + m) * s.D;
            for (int64_t p = 0; p < s.P; ++p) {
              const int64_t i = (r * s.L + l) * s.P + p;
              const auto pt = msda::make_point<acc_t>(lp[2 * i], lp[2 * i + 1], H, W);
              point_grads(i, pt, level, gp + r * s.D, H, W);
            }
          }
        }
      });
    }

    // Pass 2 (or the fused sweep), parallel over grad_value's owners.
    auto plain_add = [](acc_t* dst, acc_t x) { *dst += x; };
    at::parallel_for(0, pairs * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t % blocks;
        const int64_t m = (t / blocks) % s.M;
        const int64_t n = t / (blocks * s.M);
        const int64_t c0 = b * block_ch;
        const int64_t nch = std::min(s.D, c0 + block_ch) - c0;
        if (nch <= 0 && !fused) continue;  // empty trailing block
        for (int64_t q = 0; q < s.Lq; ++q) {
          const int64_t r = (n * s.Lq + q) * s.M + m;
          const scalar_t* g = gp + r * s.D;
          for (int64_t l = 0; l < s.L; ++l) {
            const int64_t H = lv.shapes[2 * l], W = lv.shapes[2 * l + 1];
            const int64_t offset = ((n * s.S + lv.starts[l]) * s.M + m) * s.D;
            for (int64_t p = 0; p < s.P; ++p) {
              const int64_t i = (r * s.L + l) * s.P + p;
              const auto pt = msda::make_point<acc_t>(lp[2 * i], lp[2 * i + 1], H, W);
              if (fused) point_grads(i, pt, v + offset, g, H, W);
              msda::scatter(gv + offset + c0, row_stride, pt, static_cast<acc_t>(ap[i]), g + c0,
                            nch, plain_add);
            }
          }
        }
      }
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY(visionllm, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(visionllm, CPU, m) {
  m.impl("ms_deform_attn_forward", &forward_cpu);
  m.impl("ms_deform_attn_backward", &backward_cpu);
}

}  // namespace visionllm

// An empty Python module, so `import visionllm._C` finds and loads this
// library and thereby runs the static registrations above.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
