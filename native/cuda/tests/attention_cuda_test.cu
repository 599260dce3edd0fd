// Standalone check of the CUDA kernels (no libtorch): the fused attention forward (out, lse) and backward
// (dq, dk, dv) against a naive double-precision CPU reference written from the definition (masked softmax
// attention and its analytic gradient, delta taken as sum_j P dP rather than rowsum(dout * out)), and the QKV
// split and its adjoint against index arithmetic, and the rotary kernel's element function (rotary_element.cuh)
// against the rotation in double, and the LayerNorm row functions (layer_norm_rows.cuh) against the definition in
// double, both on the host (so machines without a GPU check them too) and, with a device, the kernels against the
// host bit for bit. One line per case; exit status 1 on any mismatch.
//
// Build (native/cuda/check.sh does this, with the host compiler and architectures spelled out):
//   nvcc -std=c++17 -I native/cuda native/cuda/tests/attention_cuda_test.cu native/cuda/attention_cuda.cu
//        native/cuda/qkv_split_cuda.cu native/cuda/rotary_cuda.cu native/cuda/layer_norm_cuda.cu -o attention_cuda_test
// The rotary and LayerNorm cases live in emulation_cases.h, shared with host_emulation_test.cpp.
#include "emulation_cases.h"
#include "kernels_cuda.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace sl_cuda_test;
using sl::cuda::accum_t;
using sl::cuda::AttentionShape;
using sl::cuda::QkvLayout;
using sl::cuda::QkvShape;

// Worst error of got against want, measured as |got - want| / (1 + |want|); infinities must match exactly.
template <typename T>
double worst_error(const std::vector<T>& got, const std::vector<double>& want) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = to_double(got[i]), w = want[i];
    double err;
    if (std::isinf(w) || std::isinf(g)) err = g == w ? 0 : std::numeric_limits<double>::infinity();
    else if (std::isnan(g)) err = std::numeric_limits<double>::infinity();
    else err = std::fabs(g - w) / (1 + std::fabs(w));
    worst = std::max(worst, err);
  }
  return worst;
}

struct Case {
  const char* name;
  int64_t batch, heads, kv_heads, q_len, k_len, head_dim;
  // Key validity per batch row: the first `pad_left` and the last `pad_right` keys are padding.
  int64_t pad_left = 0, pad_right = 0;
  bool masked() const { return pad_left > 0 || pad_right > 0; }
};

struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// The definition, in double: P = softmax over visible keys of scale * q·k; out = P v. Gradients: dv = Pᵀ dout,
// dP = dout vᵀ, dS = P (dP - sum_j P dP), dq = scale dS k, dk = scale dSᵀ q.
Reference reference(const Case& c, const std::vector<double>& q, const std::vector<double>& k,
                    const std::vector<double>& v, const std::vector<uint8_t>& valid, const std::vector<double>& dout,
                    double scale) {
  const int64_t d = c.head_dim, offset = c.k_len - c.q_len, group = c.heads / c.kv_heads;
  Reference r;
  r.out.assign(q.size(), 0);
  r.dq.assign(q.size(), 0);
  r.lse.assign(c.batch * c.heads * c.q_len, 0);
  r.dk.assign(k.size(), 0);
  r.dv.assign(v.size(), 0);
  std::vector<double> p(c.k_len), dp(c.k_len);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t i = 0; i < c.q_len; ++i) {
        const int64_t hk = h / group;
        const double* qi = &q[((b * c.heads + h) * c.q_len + i) * d];
        const double* doi = &dout[((b * c.heads + h) * c.q_len + i) * d];
        const auto krow = [&](int64_t j) { return &k[((b * c.kv_heads + hk) * c.k_len + j) * d]; };
        const auto vrow = [&](int64_t j) { return &v[((b * c.kv_heads + hk) * c.k_len + j) * d]; };
        const auto visible = [&](int64_t j) { return j <= i + offset && (valid.empty() || valid[b * c.k_len + j]); };
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < c.k_len; ++j) {
          p[j] = -std::numeric_limits<double>::infinity();
          if (!visible(j)) continue;
          double s = 0;
          for (int64_t x = 0; x < d; ++x) s += qi[x] * krow(j)[x];
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        double* lse = &r.lse[(b * c.heads + h) * c.q_len + i];
        if (std::isinf(m)) {  // no visible key: out and all gradients through this row stay 0
          *lse = -std::numeric_limits<double>::infinity();
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < c.k_len; ++j) {
          p[j] = visible(j) ? std::exp(p[j] - m) : 0;
          sum += p[j];
        }
        *lse = m + std::log(sum);
        double* oi = &r.out[((b * c.heads + h) * c.q_len + i) * d];
        double pdp = 0;
        for (int64_t j = 0; j < c.k_len; ++j) {
          p[j] /= sum;
          dp[j] = 0;
          for (int64_t x = 0; x < d; ++x) {
            oi[x] += p[j] * vrow(j)[x];
            dp[j] += doi[x] * vrow(j)[x];
          }
          pdp += p[j] * dp[j];
        }
        double* dqi = &r.dq[((b * c.heads + h) * c.q_len + i) * d];
        for (int64_t j = 0; j < c.k_len; ++j) {
          const double ds = p[j] * (dp[j] - pdp);
          const int64_t kv = ((b * c.kv_heads + hk) * c.k_len + j) * d;
          for (int64_t x = 0; x < d; ++x) {
            dqi[x] += scale * ds * krow(j)[x];
            r.dk[kv + x] += scale * ds * qi[x];
            r.dv[kv + x] += p[j] * doi[x];
          }
        }
      }
  return r;
}

template <typename T>
void attention_case(const Case& c, double tol, int device) {
  const AttentionShape shape{c.batch, c.heads, c.kv_heads, c.q_len, c.k_len, c.head_dim};
  if (const std::string why = sl::cuda::attention_unsupported_reason<T>(shape, device); !why.empty()) {
    std::printf("skip attention %-8s %-32s %s\n", name_of<T>(), c.name, why.c_str());
    return;
  }
  Normal normal(c.batch * 1000003 + c.q_len * 1009 + c.k_len * 31 + c.head_dim);
  // Inputs are rounded to T first, so the reference sees exactly what the kernel sees.
  const auto fill_random = [&](int64_t n, std::vector<T>& t, std::vector<double>& dbl) {
    t.resize(n);
    dbl.resize(n);
    for (int64_t i = 0; i < n; ++i) dbl[i] = to_double(t[i] = from_double<T>(normal()));
  };
  const int64_t d = c.head_dim;
  std::vector<T> q, k, v, dout;
  std::vector<double> qd, kd, vd, doutd;
  fill_random(c.batch * c.heads * c.q_len * d, q, qd);
  fill_random(c.batch * c.kv_heads * c.k_len * d, k, kd);
  fill_random(c.batch * c.kv_heads * c.k_len * d, v, vd);
  fill_random(c.batch * c.heads * c.q_len * d, dout, doutd);
  std::vector<uint8_t> valid;
  if (c.masked()) {
    valid.assign(c.batch * c.k_len, 1);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t j = 0; j < c.k_len; ++j)
        // Batch row 0 is left-padded, the others right-padded, so both ends of the mask are exercised.
        if ((b == 0 && j < c.pad_left) || (b > 0 && j >= c.k_len - c.pad_right)) valid[b * c.k_len + j] = 0;
  }
  const double scale = 1 / std::sqrt(static_cast<double>(d > 0 ? d : 1));
  const Reference want = reference(c, qd, kd, vd, valid, doutd, scale);

  DeviceArray<T> q_dev(q), k_dev(k), v_dev(v), dout_dev(dout), out_dev(q.size()), dq_dev(q.size()),
      dk_dev(k.size()), dv_dev(v.size());
  DeviceArray<accum_t<T>> lse_dev(want.lse.size());
  DeviceArray<uint8_t> valid_dev(valid);
  const uint8_t* valid_ptr = valid.empty() ? nullptr : valid_dev.ptr;
  try {
    sl::cuda::attention_forward<T>(shape, q_dev.ptr, k_dev.ptr, v_dev.ptr, valid_ptr, scale, out_dev.ptr, lse_dev.ptr,
                                   nullptr);
    sl::cuda::attention_backward<T>(shape, q_dev.ptr, k_dev.ptr, v_dev.ptr, valid_ptr, out_dev.ptr, lse_dev.ptr,
                                    dout_dev.ptr, scale, dq_dev.ptr, dk_dev.ptr, dv_dev.ptr, nullptr);
    check_cuda(cudaDeviceSynchronize(), "attention kernels");
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAIL attention %-8s %-32s threw: %s\n", name_of<T>(), c.name, e.what());
    return;
  }
  const double errors[] = {worst_error(out_dev.to_host(), want.out), worst_error(lse_dev.to_host(), want.lse),
                           worst_error(dq_dev.to_host(), want.dq), worst_error(dk_dev.to_host(), want.dk),
                           worst_error(dv_dev.to_host(), want.dv)};
  const bool ok = std::all_of(std::begin(errors), std::end(errors), [&](double e) { return e <= tol; });
  if (!ok) ++failures;
  const auto keyless = std::count_if(want.lse.begin(), want.lse.end(), [](double x) { return std::isinf(x); });
  std::printf("%-4s attention %-8s %-32s max rel err out %.1e lse %.1e dq %.1e dk %.1e dv %.1e (tol %.0e)%s\n",
              ok ? "ok" : "FAIL", name_of<T>(), c.name, errors[0], errors[1], errors[2], errors[3], errors[4], tol,
              keyless > 0 ? (", " + std::to_string(keyless) + " rows see no key").c_str() : "");
}

// Split forward against index arithmetic, then the adjoint: gathering (q, k, v) back must give qkv exactly.
template <typename T>
void qkv_case(QkvLayout layout, const QkvShape& s) {
  const int64_t hd = s.heads * s.head_dim, rows = s.batch * s.pos, part = rows * hd;
  std::vector<T> qkv(rows * 3 * hd);
  for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = from_double<T>(static_cast<double>(i % 1021) - 510);
  DeviceArray<T> qkv_dev(qkv), q_dev(part), k_dev(part), v_dev(part), back_dev(qkv.size());
  sl::cuda::qkv_split_forward<T>(layout, s, qkv_dev.ptr, q_dev.ptr, k_dev.ptr, v_dev.ptr, nullptr);
  sl::cuda::qkv_split_backward<T>(layout, s, q_dev.ptr, k_dev.ptr, v_dev.ptr, back_dev.ptr, nullptr);
  check_cuda(cudaDeviceSynchronize(), "qkv split kernels");
  const std::vector<T> parts[3] = {q_dev.to_host(), k_dev.to_host(), v_dev.to_host()};
  int64_t wrong = 0;
  for (int64_t which = 0; which < 3; ++which)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t p = 0; p < s.pos; ++p)
          for (int64_t x = 0; x < s.head_dim; ++x) {
            const int64_t col = layout == QkvLayout::PartMajor ? which * hd + h * s.head_dim + x
                                                          : h * 3 * s.head_dim + which * s.head_dim + x;
            const double want = to_double(qkv[(b * s.pos + p) * 3 * hd + col]);
            if (to_double(parts[which][((b * s.heads + h) * s.pos + p) * s.head_dim + x]) != want) ++wrong;
          }
  const std::vector<T> back = back_dev.to_host();
  int64_t wrong_back = 0;
  for (size_t i = 0; i < qkv.size(); ++i)
    if (to_double(back[i]) != to_double(qkv[i])) ++wrong_back;
  const bool ok = wrong == 0 && wrong_back == 0;
  if (!ok) ++failures;
  std::printf("%-4s qkv split %-8s %-5s batch=%lld pos=%lld heads=%lld d=%lld: %lld wrong forward, %lld wrong "
              "backward\n",
              ok ? "ok" : "FAIL", name_of<T>(), layout == QkvLayout::PartMajor ? "part-major" : "head-major",
              static_cast<long long>(s.batch), static_cast<long long>(s.pos), static_cast<long long>(s.heads),
              static_cast<long long>(s.head_dim), static_cast<long long>(wrong), static_cast<long long>(wrong_back));
}

// Bad shapes must be refused with an exception before anything is launched.
void argument_checks() {
  const auto refused = [](const char* what, const AttentionShape& s) {
    bool threw = false;
    try {
      sl::cuda::attention_forward<float>(s, nullptr, nullptr, nullptr, nullptr, 1.0, nullptr, nullptr, nullptr);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    if (!threw) ++failures;
    std::printf("%-4s refuses %s\n", threw ? "ok" : "FAIL", what);
  };
  refused("heads not a multiple of kv_heads", AttentionShape{1, 3, 2, 4, 4, 8});
  refused("k_len < q_len", AttentionShape{1, 2, 2, 5, 4, 8});
  refused("head_dim 257", AttentionShape{1, 2, 2, 4, 4, 257});
}

}  // namespace

int main() {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    if (e != cudaSuccess) std::printf("cudaGetDeviceCount: %s\n", cudaGetErrorString(e));
    rotary_cases(false);  // the rotary element function and the LayerNorm rows on the host: no device needed
    layer_norm_cases(false);
    std::printf("no CUDA device: device kernels compiled, not run; host emulation %s: %d failure%s\n",
                failures == 0 ? "PASS" : "FAIL", failures, failures == 1 ? "" : "s");
    return failures == 0 ? 0 : 1;
  }
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  std::printf("device %d: %s (sm_%d%d)\n", device, prop.name, prop.major, prop.minor);

  argument_checks();

  const Case cases[] = {
      {"odd length 37", 2, 3, 3, 37, 37, 64},
      {"one token", 1, 2, 2, 1, 1, 64},
      {"cached prefix q=5 k=40", 2, 2, 2, 5, 40, 64},
      {"cached prefix, one query", 1, 2, 2, 1, 23, 64},
      {"padding, row without keys", 2, 2, 2, 33, 33, 64, 4, 6},
      {"gqa h=4 kv=2 + padding", 2, 4, 2, 37, 37, 64, 3, 5},
      {"gqa h=4 kv=1, prefix q=20 k=70", 1, 4, 1, 20, 70, 32},
      {"odd head_dim 37", 2, 2, 2, 19, 19, 37},
      {"head_dim 80 (tile 128)", 1, 2, 2, 21, 26, 80},
      {"head_dim 128, several tiles", 2, 2, 1, 70, 70, 128, 0, 9},
      {"head_dim 256", 1, 2, 2, 17, 17, 256},
      {"long 130, gqa, padding", 2, 4, 2, 130, 130, 64, 7, 11},
      {"head_dim 1", 1, 1, 1, 9, 9, 1},
      {"no queries: dk = dv = 0", 1, 2, 1, 0, 5, 16},
  };
  for (const Case& c : cases) attention_case<double>(c, 1e-10, device);
  for (const Case& c : cases) attention_case<float>(c, 1e-4, device);
  // Half types round every input and output; their accumulation is float.
  attention_case<__half>(cases[5], 1e-2, device);
  attention_case<__half>(cases[9], 1e-2, device);
  attention_case<__nv_bfloat16>(cases[5], 5e-2, device);
  attention_case<__nv_bfloat16>(cases[9], 5e-2, device);

  for (QkvLayout layout : {QkvLayout::PartMajor, QkvLayout::HeadMajor})
    for (const QkvShape& s : {QkvShape{2, 7, 3, 5}, QkvShape{1, 1, 12, 64}, QkvShape{3, 37, 4, 32}}) {
      qkv_case<float>(layout, s);
      qkv_case<double>(layout, s);
    }
  qkv_case<__half>(QkvLayout::HeadMajor, QkvShape{2, 5, 2, 8});
  qkv_case<__nv_bfloat16>(QkvLayout::PartMajor, QkvShape{2, 5, 2, 8});
  rotary_cases(true);
  layer_norm_cases(true);

  std::printf("%s: %d failure%s\n", failures == 0 ? "PASS" : "FAIL", failures, failures == 1 ? "" : "s");
  return failures == 0 ? 0 : 1;
}
