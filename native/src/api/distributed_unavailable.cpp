// Stands in for distributed.cpp where CMake found no distributed support in libtorch (no c10d or Gloo headers, or
// no c10d symbols in the library): every sl_dist_* export fails with a message that says so and why, and
// sl_dist_available reports 0 with the same reason.
#include <string>

#include "common.h"

#ifndef SHARPLENS_DISTRIBUTED_REASON
#define SHARPLENS_DISTRIBUTED_REASON "CMake did not check for it"
#endif

namespace {

constexpr const char* kReason = SHARPLENS_DISTRIBUTED_REASON;

sl_status unavailable() {
  SL_TRY
  throw std::runtime_error(std::string("SharpLens was built without distributed support (torch.distributed c10d): ") + kReason +
                           ". Install libgloo-dev (Debian) or use a libtorch with distributed support, then rebuild.");
  SL_CATCH
}

}  // namespace

extern "C" {

sl_status sl_dist_available(int32_t* available, const char** reason) {
  SL_TRY
  SL_OUT(available) = 0;
  if (reason != nullptr) *reason = kReason;
  SL_CATCH
}

sl_status sl_dist_store_tcp(const char*, int32_t, int32_t, int32_t, int64_t, sl_store*) { return unavailable(); }
sl_status sl_dist_store_prefix(sl_store, const char*, sl_store*) { return unavailable(); }
sl_status sl_dist_store_free(sl_store) { return unavailable(); }
sl_status sl_dist_store_port(sl_store, int32_t*) { return unavailable(); }
sl_status sl_dist_store_set(sl_store, const char*, const uint8_t*, int64_t) { return unavailable(); }
sl_status sl_dist_store_get(sl_store, const char*, uint8_t**, int64_t*) { return unavailable(); }
sl_status sl_dist_store_add(sl_store, const char*, int64_t, int64_t*) { return unavailable(); }
sl_status sl_dist_store_compare_set(sl_store, const char*, const uint8_t*, int64_t, const uint8_t*, int64_t, uint8_t**, int64_t*) {
  return unavailable();
}
sl_status sl_dist_store_wait(sl_store, const char* const*, int32_t, int64_t) { return unavailable(); }
sl_status sl_dist_store_check(sl_store, const char* const*, int32_t, int32_t*) { return unavailable(); }
sl_status sl_dist_store_delete(sl_store, const char*, int32_t*) { return unavailable(); }
sl_status sl_dist_buffer_free(uint8_t*) { return unavailable(); }
sl_status sl_dist_process_group_new(sl_store, int32_t, int32_t, int32_t, int64_t, sl_process_group*) { return unavailable(); }
sl_status sl_dist_process_group_free(sl_process_group) { return unavailable(); }
sl_status sl_dist_barrier(sl_process_group) { return unavailable(); }
sl_status sl_dist_all_reduce(sl_process_group, sl_tensor, int32_t) { return unavailable(); }
sl_status sl_dist_all_reduce_many(sl_process_group, const sl_tensor*, int32_t, int32_t) { return unavailable(); }
sl_status sl_dist_all_gather(sl_process_group, sl_tensor, sl_tensor*) { return unavailable(); }
sl_status sl_dist_broadcast(sl_process_group, sl_tensor, int32_t) { return unavailable(); }

}  // extern "C"
