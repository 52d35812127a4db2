// CUDA kernel for multi-scale deformable attention (Deformable DETR, Zhu et al.
// 2021, eq. 3; VisionLLM sec. 3.2 image tokenizer). Registered for the CUDA
// dispatch key of the ops that msda_cpu.cpp defines.
//
// One thread per output channel: threads of a warp share a (batch, query,
// head) row and read consecutive channels of each corner, so gathers coalesce.
// float16 / bfloat16 load and store in their own type but accumulate in float
// (at::opmath_type). Only c10/cuda headers are used for streams and guards:
// ATen/cuda/CUDAContext.h would drag in cuBLAS/cuSPARSE headers that a bare
// CUDA toolkit may lack.
//
// Determinism: grad_value is scattered with atomicAdd into a buffer of the
// accumulation type (float for half / bfloat16, then cast once), so it is NOT
// bitwise deterministic run to run. grad of the locations and attention
// weights is reduced across channels in shared memory in a fixed order and
// written by one thread, so it is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "msda_common.h"
#include "msda_op.h"

namespace visionllm {
namespace {

using msda::Sizes;

constexpr int kThreads = 256;

struct AtomicAdd {
  template <typename T>
  __host__ __device__ void operator()(T* dst, T x) const {
#if defined(__CUDA_ARCH__)
    atomicAdd(dst, x);
#else
    *dst += x;  // never instantiated for use on the host
#endif
  }
};

unsigned int grid_for(int64_t work_items, int64_t per_block) {
  const int64_t blocks = (work_items + per_block - 1) / per_block;
  // The kernels grid-stride, so a capped grid still covers any size.
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 20));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc,
                               const scalar_t* __restrict__ attn, scalar_t* __restrict__ out,
                               Sizes s) {
  const int64_t total = s.N * s.Lq * s.M * s.D;
  const int64_t row_stride = s.M * s.D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t d = i % s.D;
    const int64_t r = i / s.D;
    const int64_t m = r % s.M;
    const int64_t n = r / (s.Lq * s.M);
    const scalar_t* loc_r = loc + r * s.L * s.P * 2;
    const scalar_t* attn_r = attn + r * s.L * s.P;
    acc_t acc = 0;
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* level = value + ((n * s.S + starts[l]) * s.M + m) * s.D + d;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t j = l * s.P + p;
        const auto pt = msda::make_point<acc_t>(static_cast<acc_t>(loc_r[2 * j]),
                                                static_cast<acc_t>(loc_r[2 * j + 1]), H, W);
        msda::gather(&acc, level, row_stride, pt, static_cast<acc_t>(attn_r[j]), 1);
      }
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

// Block = rows_per_block rows x lanes threads; a lane strides over channels.
// Every thread runs the same (l, p) loop so the __syncthreads are uniform,
// including threads past the last row, which contribute zeros.
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts,
                                const scalar_t* __restrict__ loc, const scalar_t* __restrict__ attn,
                                const scalar_t* __restrict__ grad_out, acc_t* grad_value,
                                scalar_t* __restrict__ grad_loc, scalar_t* __restrict__ grad_attn,
                                Sizes s, int lanes) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* red = reinterpret_cast<acc_t*>(smem_raw);  // 3 * blockDim.x partial sums
  const int rows_per_block = blockDim.x / lanes;
  const int lane = threadIdx.x % lanes;
  const int local_row = threadIdx.x / lanes;
  const int64_t rows = s.N * s.Lq * s.M;
  const int64_t row_stride = s.M * s.D;

  for (int64_t base = blockIdx.x * static_cast<int64_t>(rows_per_block); base < rows;
       base += static_cast<int64_t>(gridDim.x) * rows_per_block) {
    const int64_t r = base + local_row;
    const bool active = r < rows;
    const int64_t m = r % s.M;
    const int64_t n = r / (s.Lq * s.M);
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const int64_t level_off = ((n * s.S + starts[l]) * s.M + m) * s.D;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t j = r * s.L * s.P + l * s.P + p;
        acc_t d_sample = 0, d_x = 0, d_y = 0;
        acc_t a = 0;
        if (active) {
          a = static_cast<acc_t>(attn[j]);
          const auto pt = msda::make_point<acc_t>(static_cast<acc_t>(loc[2 * j]),
                                                  static_cast<acc_t>(loc[2 * j + 1]), H, W);
          for (int64_t d = lane; d < s.D; d += lanes) {
            const scalar_t* g = grad_out + r * s.D + d;
            msda::grad_dots(value + level_off + d, row_stride, pt, g, 1, d_sample, d_x, d_y);
            msda::scatter(grad_value + level_off + d, row_stride, pt, a, g, 1, AtomicAdd{});
          }
        }
        red[threadIdx.x] = d_sample;
        red[blockDim.x + threadIdx.x] = d_x;
        red[2 * blockDim.x + threadIdx.x] = d_y;
        __syncthreads();
        if (active && lane == 0) {
          acc_t ts = 0, tx = 0, ty = 0;
          const int first = local_row * lanes;
          for (int k = 0; k < lanes; ++k) {
            ts += red[first + k];
            tx += red[blockDim.x + first + k];
            ty += red[2 * blockDim.x + first + k];
          }
          acc_t gx, gy;
          msda::location_grad(a, tx, ty, H, W, gx, gy);
          grad_attn[j] = static_cast<scalar_t>(ts);
          grad_loc[2 * j] = static_cast<scalar_t>(gx);
          grad_loc[2 * j + 1] = static_cast<scalar_t>(gy);
        }
        __syncthreads();
      }
    }
  }
}

void check_cuda(const at::Tensor& value) {
  TORCH_CHECK(value.device().is_cuda(), "ms_deform_attn CUDA kernel got a ", value.device(),
              " tensor");
}

at::Tensor forward_cuda(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& loc_in,
                        const at::Tensor& attn_in) {
  const Sizes s = msda::check_args(value_in, spatial_shapes, level_start_index, loc_in, attn_in);
  check_cuda(value_in);
  const c10::cuda::OptionalCUDAGuard guard(value_in.device());
  const auto value = value_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  const int64_t total = s.N * s.Lq * s.M * s.D;
  if (total == 0) return out.zero_();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
            value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
            loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& loc_in, const at::Tensor& attn_in,
    const at::Tensor& grad_out_in) {
  const Sizes s = msda::check_args(value_in, spatial_shapes, level_start_index, loc_in, attn_in);
  check_cuda(value_in);
  TORCH_CHECK(grad_out_in.dim() == 3 && grad_out_in.size(0) == s.N && grad_out_in.size(1) == s.Lq &&
                  grad_out_in.size(2) == s.M * s.D,
              "ms_deform_attn: grad_output must be (N, Lq, M * D), got ", grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.scalar_type() == value_in.scalar_type() &&
                  grad_out_in.device() == value_in.device(),
              "ms_deform_attn: grad_output must match value's dtype and device");
  const c10::cuda::OptionalCUDAGuard guard(value_in.device());
  const auto value = value_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  const auto acc_type = at::toOpMathType(value.scalar_type());
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
  auto grad_loc = at::zeros(loc.sizes(), loc.options());
  auto grad_attn = at::zeros(attn.sizes(), attn.options());
  const int64_t rows = s.N * s.Lq * s.M;
  if (rows > 0 && s.D > 0 && s.L * s.P > 0) {
    const int lanes = static_cast<int>(std::min<int64_t>(s.D, kThreads));
    const int rows_per_block = kThreads / lanes;
    const int threads = rows_per_block * lanes;
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const size_t smem = 3 * static_cast<size_t>(threads) * sizeof(acc_t);
          backward_kernel<scalar_t, acc_t>
              <<<grid_for(rows, rows_per_block), threads, smem, stream>>>(
                  value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                  starts.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                  grad_out.data_ptr<scalar_t>(), grad_value_acc.data_ptr<acc_t>(),
                  grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), s, lanes);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  auto grad_value = grad_value_acc.scalar_type() == value.scalar_type()
                        ? grad_value_acc
                        : grad_value_acc.to(value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(visionllm, CUDA, m) {
  m.impl("ms_deform_attn_forward", &forward_cuda);
  m.impl("ms_deform_attn_backward", &backward_cuda);
}

}  // namespace visionllm
