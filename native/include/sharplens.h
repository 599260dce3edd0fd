/*
 * sharplens.h: the flat C ABI of libsharplens, the native engine of SharpLens.
 *
 * Conventions (every function follows them):
 *  - Every function returns an sl_status; SL_OK (0) means success. Results go through out-parameters,
 *    which are written only on success.
 *  - On failure, sl_last_error() returns the message for the calling thread. It stays valid until the
 *    next sl_* call on that thread. No C++ exception ever crosses this boundary.
 *  - A tensor handle (sl_tensor) is a heap-allocated at::Tensor*, the convention of TorchSharp's native
 *    shim. Every handle returned through an out-parameter is owned by the caller, who frees it with
 *    sl_tensor_free. Handles passed as inputs are borrowed.
 *  - dtype codes are c10::ScalarType values (SL_DTYPE_*). Device type codes: 0 = CPU, 1 = CUDA.
 *  - Optional tensor inputs may be NULL.
 */
#ifndef SHARPLENS_H
#define SHARPLENS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SL_API __declspec(dllexport)
#else
#define SL_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or a struct layout in this header changes, or an export the managed side needs is added. */
#define SL_ABI_VERSION 3

typedef int32_t sl_status;
enum {
  SL_OK = 0,
  SL_ERR_TORCH = 1,            /* libtorch raised c10::Error (bad shape, dtype, index, ...) */
  SL_ERR_STD = 2,              /* a std::exception */
  SL_ERR_UNKNOWN = 3,          /* anything else */
  SL_ERR_ARGUMENT = 4,         /* SharpLens rejected an argument (null handle, bad count, ...) */
  SL_ERR_MANAGED_CALLBACK = 5  /* a managed callback failed; see sl_last_managed_exception() */
};

/* dtype codes: identical to c10::ScalarType. */
enum {
  SL_DTYPE_UINT8 = 0, SL_DTYPE_INT8 = 1, SL_DTYPE_INT16 = 2, SL_DTYPE_INT32 = 3, SL_DTYPE_INT64 = 4,
  SL_DTYPE_FLOAT16 = 5, SL_DTYPE_FLOAT32 = 6, SL_DTYPE_FLOAT64 = 7, SL_DTYPE_BOOL = 11,
  SL_DTYPE_BFLOAT16 = 15
};

typedef struct sl_tensor_t* sl_tensor;       /* at::Tensor* */
typedef struct sl_generator_t* sl_generator; /* at::Generator* */
typedef struct sl_optimizer_t* sl_optimizer;
typedef struct sl_hook_t* sl_hook;           /* a registered gradient hook */

/* Called by native code when it drops the last reference to a managed object it was given
 * (a hook's user data, the owner of memory passed to sl_tensor_from_blob). May run on any thread. */
typedef void (*sl_release_fn)(void* user_data);

/* ---------------------------------------------------------------- library */
SL_API int32_t sl_abi_version(void);
/* The libtorch version this library was compiled against: TORCH_VERSION of torch/version.h, e.g. "1.13.0". */
SL_API const char* sl_torch_version_compiled(void);
/* The version of the libtorch loaded in this process (TORCH_VERSION in its at::show_config()), "" when it does
 * not say. The string lives as long as the process. */
SL_API sl_status sl_torch_version_loaded(const char** out);
/* The calling thread's last error message ("" if none). Valid until the next sl_* call on this thread. */
SL_API const char* sl_last_error(void);
/* The id a managed callback returned with its failure, for the last SL_ERR_MANAGED_CALLBACK on this
 * thread; 0 if none. */
SL_API int64_t sl_last_managed_exception(void);
/* Sets the release callback and the intra-op thread count (<= 0 keeps libtorch's). Call once at load. */
SL_API sl_status sl_init(sl_release_fn release, int32_t num_threads);
SL_API sl_status sl_set_num_threads(int32_t num_threads);
SL_API sl_status sl_get_num_threads(int32_t* out);
/* Sets the calling thread's parallel width (OpenMP team size: libtorch's and OpenBLAS's parallel regions) without
 * rebuilding libtorch's other thread pools, and returns the previous width: cheap enough to scope one small pass. */
SL_API sl_status sl_set_parallel_width(int32_t threads, int32_t* previous);
/* Number of sl_tensor handles alive (created and not yet freed). */
SL_API int64_t sl_live_tensors(void);
SL_API sl_status sl_manual_seed(uint64_t seed);
SL_API sl_status sl_cuda_is_available(int32_t* out);
SL_API sl_status sl_grad_mode_set(int32_t enabled, int32_t* previous);
SL_API sl_status sl_grad_mode_is_enabled(int32_t* out);

/* The caching CPU allocator sl_init installs: freed blocks of 1 MiB and more are kept (up to limit_bytes; default
 * 2 GiB or an eighth of RAM, SHARPLENS_CPU_CACHE_MB overrides, 0 disables) and reused, so large tensors do not
 * fault in fresh pages on every pass. Stats: bytes parked in the cache now, and the limit. */
SL_API sl_status sl_cpu_cache_stats(int64_t* cached_bytes, int64_t* limit_bytes);
/* Sets the limit, freeing parked blocks beyond it. */
SL_API sl_status sl_cpu_cache_set_limit(int64_t limit_bytes);
/* Frees every parked block (tensors alive are untouched). */
SL_API sl_status sl_cpu_cache_release(void);

/* Starts libtorch's CPU operator profiler on the calling thread (an error if it is already running). */
SL_API sl_status sl_profiler_start(void);
/* Stops it and writes one tab-separated line per operator or autograd node (op, calls, self_ms, total_ms), by
 * self time descending, to path; a NULL path discards the summary. An error if it is not running. */
SL_API sl_status sl_profiler_stop(const char* path);

/* ---------------------------------------------------------------- generators */
SL_API sl_status sl_generator_new(uint64_t seed, sl_generator* out);
SL_API sl_status sl_generator_free(sl_generator g);

/* ---------------------------------------------------------------- tensor: lifetime and queries */
SL_API sl_status sl_tensor_free(sl_tensor t);
/* A new handle to the same tensor (shares storage and autograd identity). */
SL_API sl_status sl_tensor_share(sl_tensor t, sl_tensor* out);
SL_API sl_status sl_tensor_ndim(sl_tensor t, int64_t* out);
/* Writes ndim values into shape / strides. */
SL_API sl_status sl_tensor_shape(sl_tensor t, int64_t* shape);
SL_API sl_status sl_tensor_strides(sl_tensor t, int64_t* strides);
SL_API sl_status sl_tensor_numel(sl_tensor t, int64_t* out);
SL_API sl_status sl_tensor_dtype(sl_tensor t, int32_t* out);
SL_API sl_status sl_tensor_device(sl_tensor t, int32_t* device_type, int32_t* device_index);
SL_API sl_status sl_tensor_is_contiguous(sl_tensor t, int32_t* out);
/* Address of the first element (CPU tensors: readable memory; may be NULL for empty tensors). */
SL_API sl_status sl_tensor_data_ptr(sl_tensor t, void** out);
/* Copies the tensor's values (converted to CPU, contiguous, same dtype) into dst of nbytes bytes;
 * nbytes must equal numel * element size. */
SL_API sl_status sl_tensor_copy_to_buffer(sl_tensor t, void* dst, int64_t nbytes);
SL_API sl_status sl_tensor_item_double(sl_tensor t, double* out);
SL_API sl_status sl_tensor_item_int64(sl_tensor t, int64_t* out);
/* Shares storage: same size, same storage, same offset and strides. */
SL_API sl_status sl_tensor_is_same_storage(sl_tensor a, sl_tensor b, int32_t* out);

/* ---------------------------------------------------------------- tensor: creation */
/* Copies nbytes from data into a new CPU tensor of the given shape and dtype. */
SL_API sl_status sl_tensor_from_data(const void* data, int64_t nbytes, const int64_t* shape, int32_t ndim,
                                     int32_t dtype, sl_tensor* out);
/* Wraps data without copying. release(owner) is called when the storage dies. data must be aligned to
 * the element size and stay valid until then. */
SL_API sl_status sl_tensor_from_blob(void* data, const int64_t* shape, int32_t ndim, int32_t dtype,
                                     void* owner, sl_tensor* out);
SL_API sl_status sl_tensor_empty(const int64_t* shape, int32_t ndim, int32_t dtype, int32_t device_type,
                                 int32_t device_index, sl_tensor* out);
SL_API sl_status sl_tensor_full(const int64_t* shape, int32_t ndim, double value, int32_t dtype,
                                int32_t device_type, int32_t device_index, sl_tensor* out);
SL_API sl_status sl_tensor_arange(double start, double end, double step, int32_t dtype, int32_t device_type,
                                  int32_t device_index, sl_tensor* out);
/* kind: 0 = randn (standard normal), 1 = rand (uniform [0,1)). gen may be NULL (global generator). */
SL_API sl_status sl_tensor_random(int32_t kind, const int64_t* shape, int32_t ndim, int32_t dtype,
                                  int32_t device_type, int32_t device_index, sl_generator gen, sl_tensor* out);
/* Integers uniform in [low, high). */
SL_API sl_status sl_tensor_randint(int64_t low, int64_t high, const int64_t* shape, int32_t ndim, int32_t dtype,
                                   int32_t device_type, int32_t device_index, sl_generator gen, sl_tensor* out);
SL_API sl_status sl_tensor_to(sl_tensor t, int32_t dtype, int32_t device_type, int32_t device_index,
                              int32_t copy, sl_tensor* out);
SL_API sl_status sl_tensor_clone(sl_tensor t, sl_tensor* out);

/* ---------------------------------------------------------------- tensor: views and layout */
SL_API sl_status sl_tensor_reshape(sl_tensor t, const int64_t* shape, int32_t ndim, sl_tensor* out);
SL_API sl_status sl_tensor_view(sl_tensor t, const int64_t* shape, int32_t ndim, sl_tensor* out);
SL_API sl_status sl_tensor_permute(sl_tensor t, const int64_t* dims, int32_t ndim, sl_tensor* out);
SL_API sl_status sl_tensor_transpose(sl_tensor t, int64_t dim0, int64_t dim1, sl_tensor* out);
SL_API sl_status sl_tensor_narrow(sl_tensor t, int64_t dim, int64_t start, int64_t length, sl_tensor* out);
SL_API sl_status sl_tensor_select(sl_tensor t, int64_t dim, int64_t index, sl_tensor* out);
/* Python-style t[start:end:step] along dim; negative start/end count from the end. */
SL_API sl_status sl_tensor_slice(sl_tensor t, int64_t dim, int64_t start, int64_t end, int64_t step, sl_tensor* out);
SL_API sl_status sl_tensor_unsqueeze(sl_tensor t, int64_t dim, sl_tensor* out);
/* has_dim = 0 squeezes every size-1 dimension. */
SL_API sl_status sl_tensor_squeeze(sl_tensor t, int32_t has_dim, int64_t dim, sl_tensor* out);
SL_API sl_status sl_tensor_expand(sl_tensor t, const int64_t* shape, int32_t ndim, sl_tensor* out);
SL_API sl_status sl_tensor_contiguous(sl_tensor t, sl_tensor* out);
SL_API sl_status sl_tensor_flatten(sl_tensor t, int64_t start_dim, int64_t end_dim, sl_tensor* out);
SL_API sl_status sl_tensor_index_select(sl_tensor t, int64_t dim, sl_tensor index, sl_tensor* out);
SL_API sl_status sl_tensor_gather(sl_tensor t, int64_t dim, sl_tensor index, sl_tensor* out);
/* Out-of-place scatter: a copy of t with src scattered at index along dim. */
SL_API sl_status sl_tensor_scatter(sl_tensor t, int64_t dim, sl_tensor index, sl_tensor src, sl_tensor* out);
SL_API sl_status sl_tensor_masked_fill(sl_tensor t, sl_tensor mask, double value, sl_tensor* out);
SL_API sl_status sl_tensor_where(sl_tensor condition, sl_tensor a, sl_tensor b, sl_tensor* out);
SL_API sl_status sl_tensor_cat(const sl_tensor* tensors, int32_t count, int64_t dim, sl_tensor* out);
SL_API sl_status sl_tensor_stack(const sl_tensor* tensors, int32_t count, int64_t dim, sl_tensor* out);
/* Splits into pieces of the given sizes (count entries, which must sum to the dimension's size);
 * writes count handles to outs. */
SL_API sl_status sl_tensor_split_sizes(sl_tensor t, const int64_t* sizes, int32_t count, int64_t dim,
                                       sl_tensor* outs);

/* ---------------------------------------------------------------- tensor: elementwise */
enum {
  SL_UNARY_NEG = 0, SL_UNARY_ABS, SL_UNARY_EXP, SL_UNARY_LOG, SL_UNARY_SQRT, SL_UNARY_RSQRT, SL_UNARY_TANH,
  SL_UNARY_SIGMOID, SL_UNARY_RELU, SL_UNARY_GELU, SL_UNARY_GELU_TANH, SL_UNARY_SILU, SL_UNARY_ISFINITE,
  SL_UNARY_LOGICAL_NOT, SL_UNARY_SIN, SL_UNARY_COS, SL_UNARY_RECIPROCAL, SL_UNARY_SIGN, SL_UNARY_FLOOR,
  SL_UNARY_CEIL, SL_UNARY_ROUND, SL_UNARY_ERF, SL_UNARY_ISNAN, SL_UNARY_SQUARE, SL_UNARY_LOG1P,
  SL_UNARY_COUNT
};
SL_API sl_status sl_tensor_unary(int32_t op, sl_tensor t, sl_tensor* out);

enum {
  SL_BINARY_ADD = 0, SL_BINARY_SUB, SL_BINARY_MUL, SL_BINARY_DIV, SL_BINARY_POW, SL_BINARY_MAXIMUM,
  SL_BINARY_MINIMUM, SL_BINARY_EQ, SL_BINARY_NE, SL_BINARY_LT, SL_BINARY_LE, SL_BINARY_GT, SL_BINARY_GE,
  SL_BINARY_LOGICAL_AND, SL_BINARY_LOGICAL_OR, SL_BINARY_MATMUL, SL_BINARY_BMM, SL_BINARY_REMAINDER,
  SL_BINARY_RSUB, SL_BINARY_RDIV, SL_BINARY_RPOW, /* reversed: scalar OP tensor (scalar form only) */
  SL_BINARY_COUNT
};
/* Broadcasting a OP b. */
SL_API sl_status sl_tensor_binary(int32_t op, sl_tensor a, sl_tensor b, sl_tensor* out);
/* a OP scalar (or scalar OP a for the reversed ops). */
SL_API sl_status sl_tensor_binary_scalar(int32_t op, sl_tensor a, double scalar, sl_tensor* out);
/* In place: a = a OP b (arithmetic ops only). */
SL_API sl_status sl_tensor_binary_(int32_t op, sl_tensor a, sl_tensor b);
SL_API sl_status sl_tensor_binary_scalar_(int32_t op, sl_tensor a, double scalar);
SL_API sl_status sl_tensor_clamp(sl_tensor t, int32_t has_min, double min, int32_t has_max, double max,
                                 sl_tensor* out);
/* dst.copy_(src) (with broadcasting and dtype conversion). */
SL_API sl_status sl_tensor_copy_(sl_tensor dst, sl_tensor src);
SL_API sl_status sl_tensor_fill_(sl_tensor t, double value);

/* ---------------------------------------------------------------- tensor: reductions and linear algebra */
enum {
  SL_REDUCE_SUM = 0, SL_REDUCE_MEAN, SL_REDUCE_AMAX, SL_REDUCE_AMIN, SL_REDUCE_PROD, SL_REDUCE_LOGSUMEXP,
  SL_REDUCE_ANY, SL_REDUCE_ALL, SL_REDUCE_COUNT
};
/* ndims = 0 reduces over every dimension. */
SL_API sl_status sl_tensor_reduce(int32_t op, sl_tensor t, const int64_t* dims, int32_t ndims, int32_t keepdim,
                                  sl_tensor* out);
/* is_max = 1: max, 0: min, along dim: values and int64 indices. */
SL_API sl_status sl_tensor_minmax_dim(int32_t is_max, sl_tensor t, int64_t dim, int32_t keepdim,
                                      sl_tensor* values, sl_tensor* indices);
/* has_dim = 0: index into the flattened tensor. */
SL_API sl_status sl_tensor_argminmax(int32_t is_max, sl_tensor t, int32_t has_dim, int64_t dim, int32_t keepdim,
                                     sl_tensor* out);
/* Variance (is_std = 0) or standard deviation (1) with Bessel-style correction (0 = population, 1 = sample). */
SL_API sl_status sl_tensor_var_std(int32_t is_std, sl_tensor t, const int64_t* dims, int32_t ndims,
                                   int64_t correction, int32_t keepdim, sl_tensor* out);
/* Vector p-norm over dims (ndims = 0: all). */
SL_API sl_status sl_tensor_norm(sl_tensor t, double p, const int64_t* dims, int32_t ndims, int32_t keepdim,
                                sl_tensor* out);
SL_API sl_status sl_tensor_einsum(const char* equation, const sl_tensor* tensors, int32_t count, sl_tensor* out);
/* Full SVD: U, S, Vh with t = U diag(S) Vh. */
SL_API sl_status sl_tensor_svd(sl_tensor t, int32_t full_matrices, sl_tensor* u, sl_tensor* s, sl_tensor* vh);
SL_API sl_status sl_tensor_topk(sl_tensor t, int64_t k, int64_t dim, int32_t largest, int32_t sorted,
                                sl_tensor* values, sl_tensor* indices);
SL_API sl_status sl_tensor_sort(sl_tensor t, int64_t dim, int32_t descending, int32_t stable,
                                sl_tensor* values, sl_tensor* indices);
SL_API sl_status sl_tensor_allclose(sl_tensor a, sl_tensor b, double rtol, double atol, int32_t equal_nan,
                                    int32_t* out);
SL_API sl_status sl_tensor_equal(sl_tensor a, sl_tensor b, int32_t* out);

/* ---------------------------------------------------------------- tensor: neural-network functions */
/* dtype < 0: keep the input's dtype; otherwise compute in that dtype. */
SL_API sl_status sl_tensor_softmax(sl_tensor t, int64_t dim, int32_t dtype, sl_tensor* out);
/* Running sum along dim (integer inputs sum in int64). */
SL_API sl_status sl_tensor_cumsum(sl_tensor t, int64_t dim, sl_tensor* out);
SL_API sl_status sl_tensor_log_softmax(sl_tensor t, int64_t dim, int32_t dtype, sl_tensor* out);
SL_API sl_status sl_tensor_layer_norm(sl_tensor t, const int64_t* normalized_shape, int32_t ndim, sl_tensor weight,
                                      sl_tensor bias, double eps, sl_tensor* out);
/* reduction: 0 = none, 1 = mean, 2 = sum. target holds class indices (int64). */
/* y = x w + b (layout 0, w [in, out]) or x wᵀ + b (layout 1, w [out, in]); bias may be NULL. One autograd node
 * whose backward multiplies only the gradient's nonzero rows when at least 1/8 of them are zero (a loss on a few
 * positions), with the dense backward's result. */
SL_API sl_status sl_tensor_linear(sl_tensor x, sl_tensor weight, sl_tensor bias, int32_t layout, sl_tensor* out);
SL_API sl_status sl_tensor_cross_entropy(sl_tensor logits, sl_tensor target, sl_tensor weight, int32_t reduction,
                                         int64_t ignore_index, double label_smoothing, sl_tensor* out);

/* ---------------------------------------------------------------- autograd */
SL_API sl_status sl_tensor_requires_grad(sl_tensor t, int32_t* out);
SL_API sl_status sl_tensor_set_requires_grad(sl_tensor t, int32_t requires_grad);
SL_API sl_status sl_tensor_is_leaf(sl_tensor t, int32_t* out);
/* *out = NULL when the tensor has no gradient. */
SL_API sl_status sl_tensor_grad(sl_tensor t, sl_tensor* out);
/* grad may be NULL to clear the gradient. */
SL_API sl_status sl_tensor_set_grad(sl_tensor t, sl_tensor grad);
/* gradient may be NULL for a one-element tensor. */
SL_API sl_status sl_tensor_backward(sl_tensor t, sl_tensor gradient, int32_t retain_graph, int32_t create_graph);
SL_API sl_status sl_tensor_detach(sl_tensor t, sl_tensor* out);
/* Gradients of outputs w.r.t. inputs. grad_outputs may be NULL (all ones-like for scalars) or hold NULL
 * entries. grads receives n_inputs handles; an unused input gives NULL when allow_unused is set. */
SL_API sl_status sl_autograd_grad(const sl_tensor* outputs, int32_t n_outputs, const sl_tensor* grad_outputs,
                                  const sl_tensor* inputs, int32_t n_inputs, int32_t retain_graph,
                                  int32_t create_graph, int32_t allow_unused, sl_tensor* grads);

/* A gradient hook. grad is a new handle owned by the callee. The callee may set *replacement to a new
 * handle (ownership passes to native code) or leave it NULL to keep the gradient. A non-zero return
 * means the callee failed; *exception_id then identifies the managed exception, and the operation that
 * ran the hook (backward, autograd.grad) fails with SL_ERR_MANAGED_CALLBACK. */
typedef int32_t (*sl_grad_hook_fn)(void* user_data, sl_tensor grad, sl_tensor* replacement, int64_t* exception_id);
/* Registers fn on t (which must require grad). user_data is passed back to fn and released through the
 * release callback when the hook is removed or the tensor's autograd state dies; it is released on
 * failure too, so the caller never frees it itself. *out identifies the hook without keeping the tensor
 * alive (it holds a weak reference); free it with sl_hook_free, which does not remove the hook. */
SL_API sl_status sl_tensor_register_hook(sl_tensor t, sl_grad_hook_fn fn, void* user_data, sl_hook* out);
/* Removes the hook if its tensor still exists (a no-op otherwise, and when already removed). */
SL_API sl_status sl_hook_remove(sl_hook hook);
SL_API sl_status sl_hook_free(sl_hook hook);

/* ---------------------------------------------------------------- built-in hook actions
 * Hook actions that run natively, without a managed callback. A slot table holds tensors written by
 * gradient hooks during backward; each hook keeps the table alive, so freeing it early is safe. */
typedef struct sl_slots_t* sl_slots;
SL_API sl_status sl_slots_new(int32_t count, sl_slots* out);
SL_API sl_status sl_slots_free(sl_slots slots);
/* Registers on t (which must require grad) a gradient hook that stores the gradient, detached, in slot
 * (replacing what is there) and keeps the gradient unchanged. */
SL_API sl_status sl_slots_capture_grad(sl_slots slots, int32_t slot, sl_tensor t);
/* How many gradients the table's hooks have stored so far (unchanged: nothing new to take). */
SL_API sl_status sl_slots_version(sl_slots slots, int64_t* out);
/* Moves the slot's tensor to *out (a new handle) and empties the slot; *out = NULL when it is empty. */
SL_API sl_status sl_slots_take(sl_slots slots, int32_t slot, sl_tensor* out);
/* x with the entries at the selected heads (indices along head_dim) and positions (along pos_dim) replaced by
 * value (NULL: zero; otherwise same dtype and device, broadcastable to x, e.g. a mean over the batch). A count
 * of -1 selects every index of that dimension (its dim is then ignored); negative indices count from the end.
 * Differentiable: the gradient is zero at the replaced entries for x and flows to value there. */
SL_API sl_status sl_ablate(sl_tensor x, int32_t head_dim, const int64_t* heads, int32_t n_heads, int32_t pos_dim,
                           const int64_t* positions, int32_t n_positions, sl_tensor value, sl_tensor* out);

/* ---------------------------------------------------------------- transformer operations
 * Each is one native call; all are differentiable through libtorch's autograd, and gradients of the
 * split projections land in the one fused weight they view. Shapes use b = batch, p = positions,
 * h = heads, d = d_head, m = d_model. */
enum {
  SL_QKV_PART_MAJOR_IN_OUT = 0, /* weight [m, 3*h*d] (y = x W + b), outputs ordered q | k | v (e.g. GPT-2 c_attn) */
  SL_QKV_HEAD_MAJOR_OUT_IN = 1  /* weight [h*3*d, m] (y = x W^T + b), outputs ordered per head: q_h k_h v_h
                                   (e.g. GPT-NeoX query_key_value) */
};
/* x [b, p, m] -> q, k, v [b, p, h, d]. bias may be NULL. */
SL_API sl_status sl_qkv_split(int32_t layout, sl_tensor x, sl_tensor weight, sl_tensor bias, int64_t n_heads,
                              sl_tensor* q, sl_tensor* k, sl_tensor* v);
/* As sl_qkv_split with a separate input per part (TransformerLens normalises ln1 separately for q, k and v when
 * its hooks listen): xq, xk, xv [b, p, m] (one shape; may be the same tensor) -> q, k, v [b, p, h, d], contiguous.
 * The weight is read in place except GPT-NeoX with three inputs, which gathers each part's rows into a scratch
 * buffer for one GEMM; the backward writes each part's block of the fused weight's gradient once. */
SL_API sl_status sl_qkv_project(int32_t layout, sl_tensor xq, sl_tensor xk, sl_tensor xv, sl_tensor weight,
                                sl_tensor bias, int64_t n_heads, sl_tensor* q, sl_tensor* k, sl_tensor* v);
/* The one attention contract: every attention export below takes these options, and every path (fused CPU, staged
 * CPU, CUDA, composition) applies one visibility rule (native/src/kernels/attention_rule.h): query i of p_q sits at
 * key position i + p_k - p_q and sees key j when j <= i + p_k - p_q and, with window > 0, j > i + p_k - p_q - window.
 * Scores are q.k * scale, then softcap * tanh(scores / softcap) when softcap > 0, then masked. */
typedef struct sl_attention_options {
  double scale;       /* multiplies q.k; finite */
  double softcap;     /* 0: none; > 0: soft-cap of the scaled scores (Gemma 2's attn_logit_softcapping) */
  int64_t window;     /* 0: plain causal; > 0: sliding window of this many keys, the query's own included */
  int64_t flags;      /* SL_ATTENTION_* flags below, or 0 */
} sl_attention_options;
enum {
  /* The softmax in float32 even for float64 scores, cast back (HuggingFace's eager attention for the Llama family does
   * this, so a float64 run reproduces its float64 numbers only this way). float64 inputs then take the composition. */
  SL_ATTENTION_SOFTMAX_FLOAT32 = 1
};
/* The staged attention below uses the materialising CPU kernels for float32/float64 plain causal attention (GEMMs
 * only on tiles at or below the causal diagonal, scale + mask + softmax fused per row block) and the libtorch
 * composition otherwise (windows, soft-caps, other dtypes and devices).
 * Attention scores as [b, h, p_q, p_k], with -inf where the rule hides a key and at keys whose key_mask entry is
 * 0 (key_mask [b, p_k], bool or integer; may be NULL). */
SL_API sl_status sl_attention_scores(sl_tensor q, sl_tensor k, sl_tensor key_mask, const sl_attention_options* options,
                                     sl_tensor* scores);
/* Softmax over keys, computed in float32 at least (exactly float32 with SL_ATTENTION_SOFTMAX_FLOAT32 in options->flags;
 * options may be NULL) and cast back; rows with every key masked give 0. */
SL_API sl_status sl_attention_pattern(sl_tensor scores, const sl_attention_options* options, sl_tensor* pattern);
/* pattern [b, h, p_q, p_k], v [b, p_k, h, d] -> z [b, p_q, h, d]. */
SL_API sl_status sl_attention_apply(sl_tensor pattern, sl_tensor v, sl_tensor* z);
/* sl_attention_apply using only the causal part of the pattern (key j <= i + p_k - p_q): entries above the
 * diagonal count as 0 whatever they hold, and the kernel skips them. For a pattern no hook has replaced. */
SL_API sl_status sl_attention_apply_causal(sl_tensor pattern, sl_tensor v, sl_tensor* z);
/* sl_attention_pattern(sl_attention_scores(...)) in one call, without storing the scores (for when only the
 * pattern is hooked). */
SL_API sl_status sl_attention_causal_pattern(sl_tensor q, sl_tensor k, sl_tensor key_mask,
                                             const sl_attention_options* options, sl_tensor* pattern);
/* The three steps above in one call, for when no hook needs scores or pattern: q, k, v -> z. k and v may have
 * fewer heads than q (grouped-query attention: query head h reads key/value head h / (h_q / h_kv)). Uses the
 * fused kernel where it applies (float32/float64 on CPU), the composition otherwise. */
SL_API sl_status sl_attention(sl_tensor q, sl_tensor k, sl_tensor v, sl_tensor key_mask,
                              const sl_attention_options* options, sl_tensor* z);
enum { SL_ATTENTION_AUTO = 0, SL_ATTENTION_FUSED = 1, SL_ATTENTION_COMPOSED = 2 };
/* sl_attention with a chosen implementation (for tests and benchmarks); FUSED fails where it does not apply. */
SL_API sl_status sl_attention_with(int32_t implementation, sl_tensor q, sl_tensor k, sl_tensor v, sl_tensor key_mask,
                                   const sl_attention_options* options, sl_tensor* z);
/* GPT-NeoX rotary embedding (rotate-half form) on the first rotary_dim features of x [b, p, h, d] (any strides),
 * at the int64 positions [b, p]; the other features pass through. Angles positions * base^(-2i / rotary_dim) and
 * their cos/sin are float64, cast to x's dtype. Returns a contiguous [b, p, h, d]. float32/float64 CPU tensors
 * take the kernel (one pass over x; the backward is the opposite rotation, from a saved cos/sin table), other
 * dtypes and devices the libtorch composition. */
SL_API sl_status sl_rotary(sl_tensor x, sl_tensor positions, int64_t rotary_dim, double base, sl_tensor* out);
enum { SL_ROTARY_AUTO = 0, SL_ROTARY_FUSED = 1, SL_ROTARY_COMPOSED = 2 };
/* sl_rotary with a chosen implementation (for tests and benchmarks); FUSED fails where the kernel does not apply. */
SL_API sl_status sl_rotary_with(int32_t implementation, sl_tensor x, sl_tensor positions, int64_t rotary_dim,
                                double base, sl_tensor* out);
/* sl_rotary on q [b, p, h_q, d_q] and k [b, p, h_k, d_k] in one call sharing one cos/sin table (both need
 * rotary_dim <= their d_head). */
SL_API sl_status sl_rotary_qk(sl_tensor q, sl_tensor k, sl_tensor positions, int64_t rotary_dim, double base,
                              sl_tensor* q_out, sl_tensor* k_out);
/* The same rotation from the caller's cos/sin table, so the caller owns the angles (HuggingFace's float32 recipe,
 * rope scaling, an attention factor folded into cos and sin): table [rows, 2, half] holds cos then sin of each
 * row's angles, rows = p (all batch rows at the same positions) or b * p; the first 2 * half <= d features rotate.
 * The table is cast to x's dtype and is a constant (no gradient). implementation: SL_ROTARY_*. */
SL_API sl_status sl_rotary_table(int32_t implementation, sl_tensor x, sl_tensor table, sl_tensor* out);

/* LayerNorm in two steps with the scale exposed (TransformerLens's hook_scale sits between them).
 * x [..., d] -> centred = x - mean(x) and scale = sqrt(mean(centred^2) + eps) [..., 1]. */
SL_API sl_status sl_layer_norm_centre_scale(sl_tensor x, double eps, sl_tensor* centred, sl_tensor* scale);
/* RMSNorm's scale (TransformerLens's hook_scale): x [..., d] -> sqrt(mean(x^2) + eps) [..., 1]; a row kernel on CUDA
 * tensors in CUDA builds, the ATen composition (square, mean, add, sqrt) elsewhere. */
SL_API sl_status sl_rms_norm_scale(sl_tensor x, double eps, sl_tensor* scale);
/* centred [..., d], scale [..., 1] -> centred / scale * weight + bias; weight and bias [d] may be NULL. */
SL_API sl_status sl_layer_norm_apply_scale(sl_tensor centred, sl_tensor scale, sl_tensor weight, sl_tensor bias,
                                           sl_tensor* out);

/* ---------------------------------------------------------------- optimizers */
enum { SL_OPTIM_SGD = 0, SL_OPTIM_ADAMW = 1 };
/* torch.optim options; fields that an optimizer does not use are ignored. */
typedef struct sl_optim_options {
  double lr;
  double momentum;     /* SGD */
  double dampening;    /* SGD */
  double weight_decay; /* SGD: L2 added to the gradient; AdamW: decoupled */
  double beta1;        /* AdamW */
  double beta2;        /* AdamW */
  double eps;          /* AdamW */
  int32_t nesterov;    /* SGD */
  int32_t amsgrad;     /* AdamW */
  int32_t maximize;
  int32_t reserved;
} sl_optim_options;
SL_API sl_status sl_optim_new(int32_t kind, sl_optimizer* out);
SL_API sl_status sl_optim_free(sl_optimizer opt);
/* Adds a parameter group (the tensors must be leaves; the optimizer keeps its own references). */
SL_API sl_status sl_optim_add_group(sl_optimizer opt, const sl_tensor* params, int32_t count,
                                    const sl_optim_options* options);
SL_API sl_status sl_optim_set_group_options(sl_optimizer opt, int32_t group, const sl_optim_options* options);
SL_API sl_status sl_optim_get_group_options(sl_optimizer opt, int32_t group, sl_optim_options* options);
/* One optimizer step over every parameter that has a gradient, in one call. */
SL_API sl_status sl_optim_step(sl_optimizer opt);
SL_API sl_status sl_optim_zero_grad(sl_optimizer opt, int32_t set_to_none);
/* Per-parameter state by name ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer");
 * *out = NULL when that state does not exist yet. */
SL_API sl_status sl_optim_state(sl_optimizer opt, int32_t group, int32_t index, const char* name, sl_tensor* out);

/* ---------------------------------------------------------------- distributed (torch.distributed c10d)
 * libtorch's own c10d: a TCPStore for rendezvous and coordination, ProcessGroupGloo for collectives on CPU
 * tensors and ProcessGroupNCCL for CUDA tensors (only in builds with CUDA and NCCL). Built only where libtorch
 * has distributed support (checked at CMake time); elsewhere every sl_dist_* call but sl_dist_available fails with
 * SL_ERR_STD and a message that starts "SharpLens was built without distributed support". Every blocking call
 * has a timeout: a store call or collective that waits longer fails with a message naming what it waited for. */
typedef struct sl_store_t* sl_store;                 /* c10::intrusive_ptr<c10d::Store> */
typedef struct sl_process_group_t* sl_process_group; /* a c10d backend bound to a store, a rank and a size */

/* *available = 1 when built with distributed support; *reason = why not otherwise ("" when available; static). */
SL_API sl_status sl_dist_available(int32_t* available, const char** reason);
/* A TCPStore (torch.distributed.TCPStore). is_server = 1 hosts it on port (0: a free port the OS picks; read it
 * with sl_dist_store_port) and also connects to it; is_server = 0 connects to host:port, retrying until timeout_ms,
 * then fails with a message naming host, port and timeout (libtorch 1.13 counts the connect timeout in whole seconds:
 * give at least 1000 ms). world_size > 0 makes the server wait for that many
 * clients (wait_workers) within timeout_ms; <= 0 does not wait. timeout_ms is also the store's default timeout
 * for get and wait. */
SL_API sl_status sl_dist_store_tcp(const char* host, int32_t port, int32_t is_server, int32_t world_size,
                                   int64_t timeout_ms, sl_store* out);
/* A view of store in which key k is prefix + "/" + k (c10d::PrefixStore), for one job or process group in a shared store. */
SL_API sl_status sl_dist_store_prefix(sl_store store, const char* prefix, sl_store* out);
SL_API sl_status sl_dist_store_free(sl_store store);
SL_API sl_status sl_dist_store_port(sl_store store, int32_t* out);
SL_API sl_status sl_dist_store_set(sl_store store, const char* key, const uint8_t* value, int64_t length);
/* Waits (up to the store's timeout) for key, then returns a copy of its value, allocated by the library: free it
 * with sl_dist_buffer_free. A zero-length value gives *value = NULL. */
SL_API sl_status sl_dist_store_get(sl_store store, const char* key, uint8_t** value, int64_t* length);
/* Atomically adds delta to the integer stored at key (a missing key counts as 0) and returns the new value. */
SL_API sl_status sl_dist_store_add(sl_store store, const char* key, int64_t delta, int64_t* out);
/* Atomically: if key holds expected (or is missing and expected_length is 0), it is set to desired. Returns the value
 * key holds afterwards (desired on success, the current value otherwise; a missing key returns expected), allocated
 * as for sl_dist_store_get. */
SL_API sl_status sl_dist_store_compare_set(sl_store store, const char* key, const uint8_t* expected, int64_t expected_length,
                                           const uint8_t* desired, int64_t desired_length, uint8_t** value, int64_t* length);
/* Waits until every key exists, at most timeout_ms (< 0: the store's timeout); fails naming the keys on timeout. */
SL_API sl_status sl_dist_store_wait(sl_store store, const char* const* keys, int32_t count, int64_t timeout_ms);
/* *out = 1 when every key exists now (no waiting). */
SL_API sl_status sl_dist_store_check(sl_store store, const char* const* keys, int32_t count, int32_t* out);
/* *out = 1 when key existed and was deleted. */
SL_API sl_status sl_dist_store_delete(sl_store store, const char* key, int32_t* out);
SL_API sl_status sl_dist_buffer_free(uint8_t* buffer);

enum { SL_DIST_BACKEND_GLOO = 0, SL_DIST_BACKEND_NCCL = 1 };
enum { SL_DIST_SUM = 0, SL_DIST_PRODUCT = 1, SL_DIST_MIN = 2, SL_DIST_MAX = 3 };
/* A process group of world_size ranks meeting through store (all ranks call this with the same store keys; it returns
 * once every rank has joined, or fails after timeout_ms). Gloo picks its network interface from GLOO_SOCKET_IFNAME
 * when set, else this machine's hostname (loopback if that does not resolve), as torch.distributed does. timeout_ms
 * bounds every later collective too. */
SL_API sl_status sl_dist_process_group_new(sl_store store, int32_t backend, int32_t rank, int32_t world_size,
                                           int64_t timeout_ms, sl_process_group* out);
SL_API sl_status sl_dist_process_group_free(sl_process_group group);
SL_API sl_status sl_dist_barrier(sl_process_group group);
/* In place on every rank's tensor (same shape and dtype everywhere). */
SL_API sl_status sl_dist_all_reduce(sl_process_group group, sl_tensor tensor, int32_t op);
/* Several tensors in one collective (flattened into one buffer and copied back), as DDP buckets gradients. */
SL_API sl_status sl_dist_all_reduce_many(sl_process_group group, const sl_tensor* tensors, int32_t count, int32_t op);
/* Every rank's input (same shape and dtype everywhere), stacked in rank order: *out = [world_size, ...input shape]. */
SL_API sl_status sl_dist_all_gather(sl_process_group group, sl_tensor input, sl_tensor* out);
/* In place: every rank's tensor takes root's values. */
SL_API sl_status sl_dist_broadcast(sl_process_group group, sl_tensor tensor, int32_t root);

#ifdef __cplusplus
}
#endif
#endif /* SHARPLENS_H */
