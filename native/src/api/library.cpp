// Library-wide state: errors, init, threads, seeds, generators, grad mode.
#include <omp.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/grad_mode.h>
#include <torch/version.h>

#include <cstring>

#include "common.h"

namespace sl {

std::atomic<int64_t> g_live_tensors{0};
sl_release_fn g_release = nullptr;

namespace {
thread_local std::string t_error;
thread_local int64_t t_managed_id = 0;
}  // namespace

void set_error(sl_status status, const std::string& message, int64_t managed_id) noexcept {
  try {
    (void)status;
    t_error = message;
  } catch (...) {
    // Out of memory while copying the message: keep the status, lose the text.
  }
  t_managed_id = managed_id;
}

void clear_error() noexcept {
  t_error.clear();
  t_managed_id = 0;
}

at::ScalarType to_dtype(int32_t code) {
  switch (code) {
    case SL_DTYPE_UINT8: return at::kByte;
    case SL_DTYPE_INT8: return at::kChar;
    case SL_DTYPE_INT16: return at::kShort;
    case SL_DTYPE_INT32: return at::kInt;
    case SL_DTYPE_INT64: return at::kLong;
    case SL_DTYPE_FLOAT16: return at::kHalf;
    case SL_DTYPE_FLOAT32: return at::kFloat;
    case SL_DTYPE_FLOAT64: return at::kDouble;
    case SL_DTYPE_BOOL: return at::kBool;
    case SL_DTYPE_BFLOAT16: return at::kBFloat16;
    default: throw ArgumentError("unsupported dtype code " + std::to_string(code));
  }
}

at::Device to_device(int32_t device_type, int32_t device_index) {
  switch (device_type) {
    case 0: return at::Device(at::kCPU);
    case 1: return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index < 0 ? 0 : device_index));
    case 2: return at::Device(at::kMeta);  // shapes and dtypes without data: device-placement checks on any machine
    default: throw ArgumentError("unsupported device type code " + std::to_string(device_type));
  }
}

std::vector<at::Tensor> tensor_list(const sl_tensor* handles, int32_t count, const char* what) {
  if (count < 0) throw ArgumentError(std::string(what) + ": negative count");
  if (count > 0 && handles == nullptr) throw ArgumentError(std::string(what) + " is null");
  std::vector<at::Tensor> list;
  list.reserve(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) list.push_back(get(handles[i], what));
  return list;
}

}  // namespace sl

extern "C" {

int32_t sl_abi_version(void) { return SL_ABI_VERSION; }

const char* sl_torch_version_compiled(void) { return TORCH_VERSION; }

sl_status sl_torch_version_loaded(const char** out) {
  SL_TRY
  // libtorch has no runtime version call; at::show_config() of the loaded libtorch_cpu lists its build settings,
  // TORCH_VERSION among them ("..., TORCH_VERSION=1.13.0, USE_CUDA=OFF, ...").
  static const std::string loaded = [] {
    const std::string config = at::show_config();
    const std::string key = "TORCH_VERSION=";
    const auto start = config.find(key);
    if (start == std::string::npos) return std::string();
    const auto from = start + key.size();
    const auto end = config.find_first_of(", \n", from);
    return config.substr(from, end == std::string::npos ? std::string::npos : end - from);
  }();
  SL_OUT(out) = loaded.c_str();
  SL_CATCH
}

const char* sl_last_error(void) { return sl::t_error.c_str(); }

int64_t sl_last_managed_exception(void) { return sl::t_managed_id; }

sl_status sl_init(sl_release_fn release, int32_t num_threads) {
  SL_TRY
  sl::g_release = release;
  sl::install_cpu_cache();
  if (num_threads > 0) at::set_num_threads(num_threads);
  SL_CATCH
}

sl_status sl_set_num_threads(int32_t num_threads) {
  SL_TRY
  if (num_threads <= 0) throw sl::ArgumentError("thread count must be positive, got " + std::to_string(num_threads));
  at::set_num_threads(num_threads);
  SL_CATCH
}

sl_status sl_set_parallel_width(int32_t threads, int32_t* previous) {
  SL_TRY
  if (threads <= 0) throw sl::ArgumentError("thread count must be positive, got " + std::to_string(threads));
  // The calling thread's OpenMP team size, which libtorch's parallel regions and OpenBLAS's (one libgomp pool) use.
  // at::set_num_threads would also rebuild libtorch's pthreadpool, costing milliseconds per call on a busy machine.
  // libtorch sets a thread's team size on that thread's first parallel region (lazy_init_num_threads); doing it now keeps
  // that first region from undoing the width set here, and makes `previous` libtorch's setting, not OpenMP's default.
  at::internal::lazy_init_num_threads();
  SL_OUT(previous) = omp_get_max_threads();
  omp_set_num_threads(threads);
  SL_CATCH
}

sl_status sl_get_num_threads(int32_t* out) {
  SL_TRY
  SL_OUT(out) = at::get_num_threads();
  SL_CATCH
}

int64_t sl_live_tensors(void) { return sl::g_live_tensors.load(std::memory_order_relaxed); }

sl_status sl_manual_seed(uint64_t seed) {
  SL_TRY
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  SL_CATCH
}

sl_status sl_cuda_is_available(int32_t* out) {
  SL_TRY
  SL_OUT(out) = at::hasCUDA() ? 1 : 0;
  SL_CATCH
}

sl_status sl_grad_mode_set(int32_t enabled, int32_t* previous) {
  SL_TRY
  if (previous != nullptr) *previous = at::GradMode::is_enabled() ? 1 : 0;
  at::GradMode::set_enabled(enabled != 0);
  SL_CATCH
}

sl_status sl_grad_mode_is_enabled(int32_t* out) {
  SL_TRY
  SL_OUT(out) = at::GradMode::is_enabled() ? 1 : 0;
  SL_CATCH
}

sl_status sl_generator_new(uint64_t seed, sl_generator* out) {
  SL_TRY
  auto* gen = new at::Generator(at::detail::createCPUGenerator(seed));
  SL_OUT(out) = reinterpret_cast<sl_generator>(gen);
  SL_CATCH
}

sl_status sl_generator_free(sl_generator g) {
  SL_TRY
  delete reinterpret_cast<at::Generator*>(g);
  SL_CATCH
}

}  // extern "C"
