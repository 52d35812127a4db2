// Per-sample arithmetic of multi-scale deformable attention (Deformable DETR,
// Zhu et al. 2021, eq. 3; VisionLLM sec. 3.2 image tokenizer).
//
// Everything here is compiled twice: by the host compiler for the CPU kernel
// and by nvcc for the CUDA kernel, so the CPU tests exercise the exact
// bilinear weights, corner gathers and gradient scatters the GPU runs. The
// kernels only differ in how they parallelise and in how a scatter adds
// (plain add on CPU, atomicAdd on CUDA).
//
// Functions work on a contiguous channel range [0, nch): the CPU kernel passes
// a whole head (nch = D) so the inner loop vectorises, the CUDA kernel passes a
// single channel per thread (nch = 1) so its loads coalesce across the warp.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__
#else
#define MSDA_HOST_DEVICE
#endif

#if defined(__CUDACC__) || defined(__GNUC__) || defined(__clang__)
#define MSDA_RESTRICT __restrict__
#else
#define MSDA_RESTRICT
#endif

namespace visionllm {
namespace msda {

// Overloads rather than std::floor: the std:: versions are not device
// functions under every nvcc/libstdc++ combination.
MSDA_HOST_DEVICE inline float floor_(float x) { return floorf(x); }
MSDA_HOST_DEVICE inline double floor_(double x) { return floor(x); }

// One sampling point resolved against one feature level: the four bilinear
// corners (top-left, top-right, bottom-left, bottom-right), their weights and
// the derivatives of those weights with respect to the pixel coordinates.
// Corners outside the map are flagged invalid with weight 0 and row 0 so that
// no code path reads or writes outside the level (zero padding).
template <typename acc_t>
struct Point {
  int64_t row[4];
  acc_t weight[4];
  acc_t dweight_dx[4];
  acc_t dweight_dy[4];
  bool valid[4];
};

// (loc_x, loc_y) are normalised to [0, 1] over a level of H x W pixels.
// align_corners=False puts pixel centres at (i + 0.5) / size, hence the -0.5.
template <typename acc_t>
MSDA_HOST_DEVICE inline Point<acc_t> make_point(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W) {
  Point<acc_t> pt;
  const acc_t x = loc_x * static_cast<acc_t>(W) - static_cast<acc_t>(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - static_cast<acc_t>(0.5);
  // The only region where some corner lies on the map. Testing it before any
  // float->int conversion also keeps huge or NaN locations from overflowing
  // int64 (undefined behaviour). x == -1 is kept on purpose: its right corner
  // has weight 0 but a non-zero derivative, exactly as grid_sample has.
  const bool reachable = x >= static_cast<acc_t>(-1) && y >= static_cast<acc_t>(-1) &&
                         x < static_cast<acc_t>(W) && y < static_cast<acc_t>(H);
  if (!reachable) {
    for (int c = 0; c < 4; ++c) {
      pt.row[c] = 0;
      pt.weight[c] = pt.dweight_dx[c] = pt.dweight_dy[c] = static_cast<acc_t>(0);
      pt.valid[c] = false;
    }
    return pt;
  }
  const acc_t xf = floor_(x);
  const acc_t yf = floor_(y);
  const int64_t x0 = static_cast<int64_t>(xf);
  const int64_t y0 = static_cast<int64_t>(yf);
  const acc_t lx = x - xf, ly = y - yf;
  const acc_t hx = static_cast<acc_t>(1) - lx, hy = static_cast<acc_t>(1) - ly;

  const bool in_x0 = x0 >= 0, in_x1 = x0 + 1 < W;
  const bool in_y0 = y0 >= 0, in_y1 = y0 + 1 < H;
  const int64_t cx[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t cy[4] = {y0, y0, y0 + 1, y0 + 1};
  const bool ok[4] = {in_y0 && in_x0, in_y0 && in_x1, in_y1 && in_x0, in_y1 && in_x1};
  const acc_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dx[4] = {-hy, hy, -ly, ly};
  const acc_t dy[4] = {-hx, -lx, hx, lx};
  for (int c = 0; c < 4; ++c) {
    pt.valid[c] = ok[c];
    pt.row[c] = ok[c] ? cy[c] * W + cx[c] : 0;
    pt.weight[c] = ok[c] ? w[c] : static_cast<acc_t>(0);
    pt.dweight_dx[c] = ok[c] ? dx[c] : static_cast<acc_t>(0);
    pt.dweight_dy[c] = ok[c] ? dy[c] : static_cast<acc_t>(0);
  }
  return pt;
}

// acc[k] += coef * bilinear_sample(channel k). `level` points at channel 0 of
// row 0 of this level for the current (batch, head); rows are row_stride apart.
// Invalid corners are skipped rather than multiplied by zero so that a NaN or
// inf elsewhere in the map cannot leak into the result.
template <typename scalar_t, typename acc_t>
MSDA_HOST_DEVICE inline void gather(acc_t* MSDA_RESTRICT acc, const scalar_t* MSDA_RESTRICT level,
                                    int64_t row_stride, const Point<acc_t>& pt, acc_t coef,
                                    int64_t nch) {
  for (int c = 0; c < 4; ++c) {
    if (!pt.valid[c]) continue;
    const scalar_t* MSDA_RESTRICT v = level + pt.row[c] * row_stride;
    const acc_t w = coef * pt.weight[c];
    for (int64_t k = 0; k < nch; ++k) acc[k] += w * static_cast<acc_t>(v[k]);
  }
}

// sum_k a[k] * b[k]. On the host the sum runs in kLanes interleaved partial
// sums, which the compiler keeps in vector registers: a single running sum is
// a serial dependency it may not reorder (no -ffast-math), and it made the
// backward twice as slow as the forward. The order is fixed, so the result is
// still deterministic. On the device nch is 1 and the plain loop is all there is.
template <typename acc_t, typename scalar_t>
MSDA_HOST_DEVICE inline acc_t dot(const scalar_t* MSDA_RESTRICT a, const scalar_t* MSDA_RESTRICT b,
                                  int64_t nch) {
  acc_t total = static_cast<acc_t>(0);
  int64_t k = 0;
#if !defined(__CUDA_ARCH__)
  constexpr int kLanes = 16;
  if (nch >= kLanes) {
    acc_t part[kLanes] = {};
    for (; k + kLanes <= nch; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        part[j] += static_cast<acc_t>(a[k + j]) * static_cast<acc_t>(b[k + j]);
      }
    }
    // Pairwise folding keeps the final reduction in vector adds too.
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int j = 0; j < width; ++j) part[j] += part[j + width];
    }
    total = part[0];
  }
#endif
  for (; k < nch; ++k) total += static_cast<acc_t>(a[k]) * static_cast<acc_t>(b[k]);
  return total;
}

// The three reductions over channels that the backward needs for one point:
//   d_sample += <g, sample>,  d_x += <g, d sample / dx>,  d_y += <g, d sample / dy>
// Each corner's <g, v_c> is computed once and reused for all three.
template <typename scalar_t, typename acc_t>
MSDA_HOST_DEVICE inline void grad_dots(const scalar_t* MSDA_RESTRICT level, int64_t row_stride,
                                       const Point<acc_t>& pt, const scalar_t* MSDA_RESTRICT g,
                                       int64_t nch, acc_t& d_sample, acc_t& d_x, acc_t& d_y) {
  for (int c = 0; c < 4; ++c) {
    if (!pt.valid[c]) continue;
    const scalar_t* MSDA_RESTRICT v = level + pt.row[c] * row_stride;
    const acc_t s = dot<acc_t>(g, v, nch);
    d_sample += pt.weight[c] * s;
    d_x += pt.dweight_dx[c] * s;
    d_y += pt.dweight_dy[c] * s;
  }
}

// grad_level[corner][k] += coef * weight[corner] * g[k]. `add` decides how the
// write lands (plain on CPU where one thread owns the slice, atomic on CUDA).
template <typename scalar_t, typename acc_t, typename AddFn>
MSDA_HOST_DEVICE inline void scatter(acc_t* grad_level, int64_t row_stride, const Point<acc_t>& pt,
                                     acc_t coef, const scalar_t* MSDA_RESTRICT g, int64_t nch,
                                     AddFn add) {
  for (int c = 0; c < 4; ++c) {
    if (!pt.valid[c]) continue;
    acc_t* gv = grad_level + pt.row[c] * row_stride;
    const acc_t w = coef * pt.weight[c];
    for (int64_t k = 0; k < nch; ++k) add(gv + k, w * static_cast<acc_t>(g[k]));
  }
}

// Chain rule from pixel to normalised coordinates: x = loc_x * W - 0.5.
template <typename acc_t>
MSDA_HOST_DEVICE inline void location_grad(acc_t attn, acc_t d_x, acc_t d_y, int64_t H, int64_t W,
                                           acc_t& g_loc_x, acc_t& g_loc_y) {
  g_loc_x = attn * d_x * static_cast<acc_t>(W);
  g_loc_y = attn * d_y * static_cast<acc_t>(H);
}

}  // namespace msda
}  // namespace visionllm
