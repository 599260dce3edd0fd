// The one attention contract shared by every attention path (fused CPU, staged CPU, CUDA, the ATen composition):
// the options an architecture can set (score scale, soft-cap, sliding window) and the visibility rule that says
// which key a query sees. Written once, usable from host and device code, so a new rule is one edit here and a
// window also skips whole tiles wherever a kernel walks tiles.
//
// Positions: among p_q queries and p_k keys, query row i sits at key position i + offset with offset = p_k - p_q
// (a cached prefix of p_k - p_q keys keeps causality). Query i sees key j when
//   j <= i + offset                                   (causal), and
//   j >  i + offset - window     when window > 0      (a sliding window of `window` keys, its own included),
// which is HuggingFace's rule for Mistral and Gemma 2 (a key is hidden when j <= i - window) and TransformerLens's
// local attention (mask.triu(1 - window)). Padded keys (a key mask) are hidden on top of this, by the caller.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SL_HOST_DEVICE __host__ __device__
#else
#define SL_HOST_DEVICE
#endif

namespace sl::kernels {

// What an architecture may ask of attention (the C ABI's sl_attention_options, validated).
struct AttentionOptions {
  double scale = 1.0;    // multiplies q.k
  double softcap = 0.0;  // > 0: scores become softcap * tanh(scores / softcap), after the scale, before masking
  int64_t window = 0;    // > 0: a query sees only the last `window` key positions up to its own
  bool softmax_float32 = false;  // the softmax in float32 even for float64 scores (HuggingFace's Llama-family eager path)
};

// The first key query row i sees (0 without a window).
SL_HOST_DEVICE inline int64_t first_visible_key(int64_t i, int64_t offset, int64_t window) {
  const int64_t first = window > 0 ? i + offset - window + 1 : 0;
  return first > 0 ? first : 0;
}

// One past the last key query row i sees, at most p_k (0 when it sees none).
SL_HOST_DEVICE inline int64_t end_visible_key(int64_t i, int64_t offset, int64_t p_k) {
  const int64_t end = i + offset + 1;
  return end < 0 ? 0 : (end > p_k ? p_k : end);
}

// True when query row i may see key j (before any key mask).
SL_HOST_DEVICE inline bool visible(int64_t i, int64_t j, int64_t offset, int64_t window) {
  return j <= i + offset && (window <= 0 || j > i + offset - window);
}

// The keys that any row of the query tile [i0, i1) sees: [first_visible_key(i0), end_visible_key(i1 - 1)). Rows
// only move the window right, so the first row bounds the start and the last row the end.
SL_HOST_DEVICE inline int64_t tile_first_key(int64_t i0, int64_t offset, int64_t window) {
  return first_visible_key(i0, offset, window);
}
SL_HOST_DEVICE inline int64_t tile_end_key(int64_t i1, int64_t offset, int64_t p_k) {
  return end_visible_key(i1 - 1, offset, p_k);
}

// The soft-cap of a scaled score (identity when cap <= 0).
template <typename T>
SL_HOST_DEVICE inline T soft_cap(T score, T cap) {
#if defined(__CUDA_ARCH__)
  return cap > T(0) ? cap * tanh(score / cap) : score;
#else
  return cap > T(0) ? cap * std::tanh(score / cap) : score;
#endif
}

}  // namespace sl::kernels
