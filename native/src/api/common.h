// Shared plumbing for every export: status codes, the thread-local error text, handle helpers and
// the SL_TRY/SL_CATCH pair that keeps every C++ exception on this side of the ABI.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>  // c10::optional by name: 2.x headers reach it only indirectly (an alias of std::optional since 2.2)
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sharplens.h"

namespace sl {

// Installs the caching CPU allocator (cpu_cache.cpp) as libtorch's CPU allocator; idempotent.
void install_cpu_cache();

// Thrown by code that runs a managed callback which reported failure; carries the managed side's
// exception id so the caller of the export can rethrow the original managed exception.
class ManagedCallbackError : public std::runtime_error {
 public:
  explicit ManagedCallbackError(int64_t id)
      : std::runtime_error("[sharplens-managed-exception:" + std::to_string(id) + "] a managed callback failed"),
        id_(id) {}
  int64_t id() const noexcept { return id_; }

 private:
  int64_t id_;
};

// Thrown for arguments SharpLens itself rejects (null handles, negative counts...).
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

void set_error(sl_status status, const std::string& message, int64_t managed_id = 0) noexcept;
void clear_error() noexcept;

// Counts handles so managed tests can prove there are no leaks.
extern std::atomic<int64_t> g_live_tensors;
extern sl_release_fn g_release;

inline sl_tensor new_handle(at::Tensor t) {
  auto* p = new at::Tensor(std::move(t));
  g_live_tensors.fetch_add(1, std::memory_order_relaxed);
  return reinterpret_cast<sl_tensor>(p);
}

inline at::Tensor& get(sl_tensor h, const char* what = "tensor") {
  if (h == nullptr) throw ArgumentError(std::string(what) + " handle is null");
  return *reinterpret_cast<at::Tensor*>(h);
}

inline c10::optional<at::Tensor> get_optional(sl_tensor h) {
  if (h == nullptr) return c10::nullopt;
  return *reinterpret_cast<at::Tensor*>(h);
}

template <typename T>
inline T* require(T* p, const char* what) {
  if (p == nullptr) throw ArgumentError(std::string(what) + " is null");
  return p;
}

inline at::IntArrayRef dims_of(const int64_t* data, int32_t n, const char* what = "shape") {
  if (n < 0) throw ArgumentError(std::string(what) + " has a negative length");
  if (n > 0 && data == nullptr) throw ArgumentError(std::string(what) + " is null");
  return at::IntArrayRef(data, static_cast<size_t>(n));
}

at::ScalarType to_dtype(int32_t code);
at::Device to_device(int32_t device_type, int32_t device_index);
std::vector<at::Tensor> tensor_list(const sl_tensor* handles, int32_t count, const char* what);

}  // namespace sl

// Every export body goes between SL_TRY and SL_CATCH: success returns SL_OK, every exception becomes
// a status plus a thread-local message.
#define SL_TRY     \
  try {            \
    sl::clear_error();
#define SL_CATCH                                                                     \
  return SL_OK;                                                                      \
  }                                                                                  \
  catch (const sl::ManagedCallbackError& e) {                                        \
    sl::set_error(SL_ERR_MANAGED_CALLBACK, e.what(), e.id());                        \
    return SL_ERR_MANAGED_CALLBACK;                                                  \
  }                                                                                  \
  catch (const std::invalid_argument& e) { /* sl::ArgumentError and the kernels' */ \
    sl::set_error(SL_ERR_ARGUMENT, e.what());                                        \
    return SL_ERR_ARGUMENT;                                                          \
  }                                                                                  \
  catch (const c10::Error& e) {                                                      \
    sl::set_error(SL_ERR_TORCH, e.what_without_backtrace());                         \
    return SL_ERR_TORCH;                                                             \
  }                                                                                  \
  catch (const std::exception& e) {                                                  \
    sl::set_error(SL_ERR_STD, e.what());                                             \
    return SL_ERR_STD;                                                               \
  }                                                                                  \
  catch (...) {                                                                      \
    sl::set_error(SL_ERR_UNKNOWN, "unknown native exception");                       \
    return SL_ERR_UNKNOWN;                                                           \
  }

#define SL_OUT(ptr) (*sl::require((ptr), #ptr))
