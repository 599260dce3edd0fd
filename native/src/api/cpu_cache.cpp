// A caching CPU allocator for libtorch. glibc serves every block over 32 MB (and, after a free lowers its
// threshold, smaller ones) with a fresh mmap, so each pass over a model faults in and the kernel zero-fills the
// logits (103 MB for GPT-2 at 4 x 128 tokens), their gradient, the 154 MB embedding gradients and every large
// activation again. Measured in lens bench, that page-fault work was a large and erratic share of a backward pass.
// This allocator keeps freed blocks of 1 MiB and more, in size classes an eighth of a power of two apart, up to a
// byte limit, and hands them back to the next allocation of that class: the pages stay mapped and warm. Smaller
// blocks go straight to the system allocator. The cache's contents can be released at any time.
#include <c10/core/CPUAllocator.h>
#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include <unistd.h>

#include "common.h"

namespace {

constexpr size_t kAlignment = 64;  // c10's own CPU alignment (AVX-512 loads)
constexpr size_t kMinCached = size_t{1} << 20;

// Rounds up to the next multiple of an eighth of n's power of two, so a class wastes at most 12.5%.
size_t size_class(size_t n) {
  size_t pow2 = kMinCached;
  while (pow2 * 2 <= n) pow2 *= 2;
  const size_t step = pow2 / 8;
  return (n + step - 1) / step * step;
}

size_t default_limit() {
  if (const char* env = std::getenv("SHARPLENS_CPU_CACHE_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && mb >= 0) return static_cast<size_t>(mb) << 20;
  }
  // 2 GiB, or an eighth of physical memory on a small machine.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const size_t eighth = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) / 8 : 0;
  const size_t two_gib = size_t{2} << 30;
  return eighth > 0 && eighth < two_gib ? eighth : two_gib;
}

void* system_alloc(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, kAlignment, n) != 0) return nullptr;
  return p;
}

// libtorch 2.3 made c10::Allocator::allocate non-const and added copy_data as a pure virtual; one source serves both.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define SL_ALLOCATOR_2_3 1
#define SL_ALLOCATE_CONST
#else
#define SL_ALLOCATOR_2_3 0
#define SL_ALLOCATE_CONST const
#endif

class CachingCpuAllocator final : public c10::Allocator {
 public:
  CachingCpuAllocator() : limit_(default_limit()) {}

  c10::DataPtr allocate(size_t n) SL_ALLOCATE_CONST override {
    if (n == 0) return {nullptr, nullptr, &free_small, c10::Device(c10::DeviceType::CPU)};
    if (n < kMinCached) {
      void* p = system_alloc(n);
      if (p == nullptr) throw std::bad_alloc();
      return {p, p, &free_small, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t cls = size_class(n);
    void* p = take(cls);
    if (p == nullptr) p = system_alloc(cls);
    if (p == nullptr) {
      // Out of memory with blocks parked in the cache: give them back and try once more.
      release();
      p = system_alloc(cls);
      if (p == nullptr) throw std::bad_alloc();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[p] = cls;
    }
    return {p, p, &free_large, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_any; }

#if SL_ALLOCATOR_2_3
  // Host memory on both sides: a plain copy (what c10's default CPU allocator does).
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count > 0) std::memcpy(dest, src, count);
  }
#endif

  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    trim_locked(limit_);
  }

  size_t limit() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

  size_t cached_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  void release() const {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked(0);
  }

  static CachingCpuAllocator& instance() {
    // Never destroyed: tensors freed during process exit still reach a live allocator.
    static auto* allocator = new CachingCpuAllocator();
    return *allocator;
  }

 private:
  static void free_small(void* p) { std::free(p); }

  static void free_large(void* p) { instance().give_back(p); }

  // raw_allocate's deleter cannot tell a small block from a large one by its function, so it asks the table.
  static void free_any(void* p) {
    if (p != nullptr && !instance().give_back(p)) std::free(p);
  }

  void* take(size_t cls) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(cls);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    cached_ -= cls;
    return p;
  }

  // Parks a large block in the cache (or frees it past the limit); false if p is not a large block of ours.
  bool give_back(void* p) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return false;
    const size_t cls = it->second;
    live_.erase(it);
    if (cached_ + cls > limit_) {
      std::free(p);
      return true;
    }
    try {
      free_[cls].push_back(p);
    } catch (...) {
      std::free(p);  // no memory for the list entry: free instead of caching
      return true;
    }
    cached_ += cls;
    return true;
  }

  void trim_locked(size_t keep) const {
    for (auto& [cls, blocks] : free_) {
      while (cached_ > keep && !blocks.empty()) {
        std::free(blocks.back());
        blocks.pop_back();
        cached_ -= cls;
      }
    }
  }

  mutable std::mutex mutex_;
  mutable std::unordered_map<size_t, std::vector<void*>> free_;
  mutable std::unordered_map<void*, size_t> live_;
  mutable size_t cached_ = 0;
  size_t limit_;
};

}  // namespace

namespace sl {

void install_cpu_cache() {
  static std::once_flag once;
  // Priority above c10's default registration, so every CPU tensor allocated from here on uses the cache.
  std::call_once(once, [] { c10::SetCPUAllocator(&CachingCpuAllocator::instance(), 1); });
}

}  // namespace sl

extern "C" {

sl_status sl_cpu_cache_stats(int64_t* cached_bytes, int64_t* limit_bytes) {
  SL_TRY
  auto& a = CachingCpuAllocator::instance();
  SL_OUT(cached_bytes) = static_cast<int64_t>(a.cached_bytes());
  SL_OUT(limit_bytes) = static_cast<int64_t>(a.limit());
  SL_CATCH
}

sl_status sl_cpu_cache_set_limit(int64_t limit_bytes) {
  SL_TRY
  if (limit_bytes < 0) throw sl::ArgumentError("cache limit must be >= 0 bytes, got " + std::to_string(limit_bytes));
  CachingCpuAllocator::instance().set_limit(static_cast<size_t>(limit_bytes));
  SL_CATCH
}

sl_status sl_cpu_cache_release(void) {
  SL_TRY
  CachingCpuAllocator::instance().release();
  SL_CATCH
}

}  // extern "C"
