// torch.distributed's c10d behind the C ABI: TCPStore (rendezvous, counters, claims), PrefixStore, and collectives
// on ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA builds with NCCL). Compiled only where CMake found libtorch's
// distributed support (c10d headers, Gloo headers and the c10d symbols in libtorch); distributed_unavailable.cpp
// stands in for it elsewhere. No networking of our own: every byte goes through libtorch's c10d.
//
// libtorch versions: written against 1.13 (Debian) and guarded for 2.x where the c10d API changed. In 2.0 the
// collectives moved from ProcessGroup to Backend (ProcessGroupGloo/NCCL derive from Backend, and ProcessGroup became
// a dispatcher over backends), so a group here holds the concrete backend through its base, chosen by version.
#include <torch/version.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO  // the header's own guard; CMake checked that Gloo's headers and symbols are there
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#ifdef SHARPLENS_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <c10/core/GradMode.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common.h"

namespace {

#if TORCH_VERSION_MAJOR >= 2
using BackendBase = c10d::Backend;
#else
using BackendBase = c10d::ProcessGroup;
#endif

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
  std::string host;  // for messages
  int port = 0;
};

struct Group {
  c10::intrusive_ptr<BackendBase> backend;
  int32_t kind = SL_DIST_BACKEND_GLOO;
  int rank = 0;
  int size = 0;
  std::chrono::milliseconds timeout{0};
};

Store& get_store(sl_store h) {
  if (h == nullptr) throw sl::ArgumentError("store handle is null");
  return *reinterpret_cast<Store*>(h);
}

Group& get_group(sl_process_group h) {
  if (h == nullptr) throw sl::ArgumentError("process group handle is null");
  return *reinterpret_cast<Group*>(h);
}

std::string require_key(const char* key) {
  if (key == nullptr) throw sl::ArgumentError("store key is null");
  return std::string(key);
}

std::vector<uint8_t> bytes_of(const uint8_t* data, int64_t length, const char* what) {
  if (length < 0) throw sl::ArgumentError(std::string(what) + " has a negative length");
  if (length > 0 && data == nullptr) throw sl::ArgumentError(std::string(what) + " is null");
  return std::vector<uint8_t>(data, data + length);
}

// Hands a value out as a malloc'd buffer (freed by sl_dist_buffer_free).
void hand_out(const std::vector<uint8_t>& v, uint8_t** value, int64_t* length) {
  uint8_t* p = nullptr;
  if (!v.empty()) {
    p = static_cast<uint8_t*>(std::malloc(v.size()));
    if (p == nullptr) throw std::bad_alloc();
    std::memcpy(p, v.data(), v.size());
  }
  *value = p;
  *length = static_cast<int64_t>(v.size());
}

// c10d's own message without the C++ backtrace c10::Error::what() appends.
std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::string where(const Store& s) { return s.host.empty() ? std::string("the store") : "the TCPStore at " + s.host + ":" + std::to_string(s.port); }

std::chrono::milliseconds to_timeout(int64_t ms, const char* what) {
  if (ms <= 0) throw sl::ArgumentError(std::string(what) + " must be positive, got " + std::to_string(ms) + " ms");
  return std::chrono::milliseconds(ms);
}

c10d::ReduceOp reduce_op(int32_t op) {
  switch (op) {
    case SL_DIST_SUM: return c10d::ReduceOp::SUM;
    case SL_DIST_PRODUCT: return c10d::ReduceOp::PRODUCT;
    case SL_DIST_MIN: return c10d::ReduceOp::MIN;
    case SL_DIST_MAX: return c10d::ReduceOp::MAX;
    default: throw sl::ArgumentError("unknown reduce op " + std::to_string(op) + " (0 sum, 1 product, 2 min, 3 max)");
  }
}

// Gloo works on dense CPU tensors, NCCL on CUDA tensors of its device: say so before the backend fails obscurely.
void check_device(const Group& g, const at::Tensor& t, const char* what) {
  if (!t.defined()) throw sl::ArgumentError(std::string(what) + " is undefined");
  if (g.kind == SL_DIST_BACKEND_GLOO && !t.device().is_cpu())
    throw sl::ArgumentError(std::string(what) + " is on " + t.device().str() + ": the Gloo group takes CPU tensors (use NCCL for CUDA)");
  if (g.kind == SL_DIST_BACKEND_NCCL && !t.device().is_cuda())
    throw sl::ArgumentError(std::string(what) + " is on " + t.device().str() + ": the NCCL group takes CUDA tensors");
  if (t.is_sparse()) throw sl::ArgumentError(std::string(what) + " is sparse; collectives here take dense tensors");
}

// Waits for a collective; a failure names the operation, the rank and the group, with c10d's own message.
void finish(const Group& g, const c10::intrusive_ptr<c10d::Work>& work, const char* op) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    std::ostringstream m;
    m << op << " failed on rank " << g.rank << " of " << g.size << " (timeout " << g.timeout.count()
      << " ms; a rank that died or never called it shows up here): " << message_of(e);
    throw std::runtime_error(m.str());
  }
}

// Runs an in-place collective on t, through a contiguous buffer when t is not contiguous.
template <typename F>
void in_place(const Group& g, at::Tensor& t, const char* op, F run) {
  c10::NoGradGuard no_grad;  // the tensors may be gradients or leaves that require grad
  at::Tensor buffer = t.is_contiguous() ? t : t.contiguous();
  std::vector<at::Tensor> tensors{buffer};
  finish(g, run(tensors), op);
  if (!buffer.is_same(t)) t.copy_(buffer);
}

std::vector<std::string> key_list(const char* const* keys, int32_t count) {
  if (count < 0) throw sl::ArgumentError("key count is negative");
  if (count > 0 && keys == nullptr) throw sl::ArgumentError("keys is null");
  std::vector<std::string> list;
  for (int32_t i = 0; i < count; ++i) list.push_back(require_key(keys[i]));
  return list;
}

std::string joined(const std::vector<std::string>& keys) {
  std::string s;
  for (const auto& k : keys) s += (s.empty() ? "'" : ", '") + k + "'";
  return s;
}

std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices() {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  // As torch.distributed: GLOO_SOCKET_IFNAME (comma-separated) names the interfaces; otherwise the default device,
  // which binds to this host name's address and falls back to loopback.
  const char* names = std::getenv("GLOO_SOCKET_IFNAME");
  if (names != nullptr && *names != '\0') {
    std::stringstream ss(names);
    std::string name;
    while (std::getline(ss, name, ','))
      if (!name.empty()) devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
  }
  if (devices.empty()) devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return devices;
}

}  // namespace

extern "C" {

sl_status sl_dist_available(int32_t* available, const char** reason) {
  SL_TRY
  SL_OUT(available) = 1;
  if (reason != nullptr) *reason = "";
  SL_CATCH
}

sl_status sl_dist_store_tcp(const char* host, int32_t port, int32_t is_server, int32_t world_size, int64_t timeout_ms,
                            sl_store* out) {
  SL_TRY
  sl::require(out, "out");
  if (host == nullptr || *host == '\0') throw sl::ArgumentError("store host is empty");
  if (port < 0 || port > 65535) throw sl::ArgumentError("store port " + std::to_string(port) + " is out of range");
  if (!is_server && port == 0) throw sl::ArgumentError("a store client needs the server's port; 0 only picks a port for a server");
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = is_server != 0;
  if (world_size > 0) opts.numWorkers = static_cast<std::size_t>(world_size);
  opts.waitWorkers = world_size > 0;
  opts.timeout = to_timeout(timeout_ms, "store timeout");
  auto s = std::make_unique<Store>();
  s->host = host;
  s->port = port;
  try {
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    s->port = tcp->getPort();
    s->store = tcp;
  } catch (const std::exception& e) {
    std::ostringstream m;
    if (is_server)
      m << "cannot host a TCPStore on " << host << ":" << port << " (timeout " << timeout_ms << " ms): " << message_of(e);
    else
      m << "cannot reach the TCPStore at " << host << ":" << port << " within the timeout of " << timeout_ms << " ms: " << message_of(e);
    throw std::runtime_error(m.str());
  }
  *out = reinterpret_cast<sl_store>(s.release());
  SL_CATCH
}

sl_status sl_dist_store_prefix(sl_store store, const char* prefix, sl_store* out) {
  SL_TRY
  sl::require(out, "out");
  auto& s = get_store(store);
  auto view = std::make_unique<Store>();
  view->store = c10::make_intrusive<c10d::PrefixStore>(require_key(prefix), s.store);
  view->host = s.host;
  view->port = s.port;
  *out = reinterpret_cast<sl_store>(view.release());
  SL_CATCH
}

sl_status sl_dist_store_free(sl_store store) {
  SL_TRY
  delete reinterpret_cast<Store*>(store);
  SL_CATCH
}

sl_status sl_dist_store_port(sl_store store, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get_store(store).port;
  SL_CATCH
}

sl_status sl_dist_store_set(sl_store store, const char* key, const uint8_t* value, int64_t length) {
  SL_TRY
  auto& s = get_store(store);
  s.store->set(require_key(key), bytes_of(value, length, "value"));
  SL_CATCH
}

sl_status sl_dist_store_get(sl_store store, const char* key, uint8_t** value, int64_t* length) {
  SL_TRY
  sl::require(value, "value");
  sl::require(length, "length");
  auto& s = get_store(store);
  const auto k = require_key(key);
  std::vector<uint8_t> v;
  try {
    v = s.store->get(k);
  } catch (const std::exception& e) {
    throw std::runtime_error("store get '" + k + "' from " + where(s) + " failed (timeout " +
                             std::to_string(s.store->getTimeout().count()) + " ms): " + message_of(e));
  }
  hand_out(v, value, length);
  SL_CATCH
}

sl_status sl_dist_store_add(sl_store store, const char* key, int64_t delta, int64_t* out) {
  SL_TRY
  sl::require(out, "out");
  auto& s = get_store(store);
  *out = s.store->add(require_key(key), delta);
  SL_CATCH
}

sl_status sl_dist_store_compare_set(sl_store store, const char* key, const uint8_t* expected, int64_t expected_length,
                                    const uint8_t* desired, int64_t desired_length, uint8_t** value, int64_t* length) {
  SL_TRY
  sl::require(value, "value");
  sl::require(length, "length");
  auto& s = get_store(store);
  auto v = s.store->compareSet(require_key(key), bytes_of(expected, expected_length, "expected"),
                               bytes_of(desired, desired_length, "desired"));
  hand_out(v, value, length);
  SL_CATCH
}

sl_status sl_dist_store_wait(sl_store store, const char* const* keys, int32_t count, int64_t timeout_ms) {
  SL_TRY
  auto& s = get_store(store);
  auto list = key_list(keys, count);
  const auto timeout = timeout_ms < 0 ? s.store->getTimeout() : to_timeout(timeout_ms, "wait timeout");
  try {
    s.store->wait(list, timeout);
  } catch (const std::exception& e) {
    throw std::runtime_error("waiting for " + joined(list) + " in " + where(s) + " failed (timeout " +
                             std::to_string(timeout.count()) + " ms): " + message_of(e));
  }
  SL_CATCH
}

sl_status sl_dist_store_check(sl_store store, const char* const* keys, int32_t count, int32_t* out) {
  SL_TRY
  sl::require(out, "out");
  auto& s = get_store(store);
  *out = s.store->check(key_list(keys, count)) ? 1 : 0;
  SL_CATCH
}

sl_status sl_dist_store_delete(sl_store store, const char* key, int32_t* out) {
  SL_TRY
  sl::require(out, "out");
  auto& s = get_store(store);
  *out = s.store->deleteKey(require_key(key)) ? 1 : 0;
  SL_CATCH
}

sl_status sl_dist_buffer_free(uint8_t* buffer) {
  SL_TRY
  std::free(buffer);
  SL_CATCH
}

sl_status sl_dist_process_group_new(sl_store store, int32_t backend, int32_t rank, int32_t world_size, int64_t timeout_ms,
                                    sl_process_group* out) {
  SL_TRY
  sl::require(out, "out");
  auto& s = get_store(store);
  if (world_size < 1) throw sl::ArgumentError("world size must be at least 1, got " + std::to_string(world_size));
  if (rank < 0 || rank >= world_size)
    throw sl::ArgumentError("rank " + std::to_string(rank) + " is out of range for world size " + std::to_string(world_size));
  auto g = std::make_unique<Group>();
  g->kind = backend;
  g->rank = rank;
  g->size = world_size;
  g->timeout = to_timeout(timeout_ms, "process group timeout");
  try {
    if (backend == SL_DIST_BACKEND_GLOO) {
      auto options = c10d::ProcessGroupGloo::Options::create(g->timeout);
      options->devices = gloo_devices();
      options->threads = static_cast<int>(options->devices.size()) * 2;  // torch.distributed's default
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(s.store, rank, world_size, options);
    } else if (backend == SL_DIST_BACKEND_NCCL) {
#ifdef SHARPLENS_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = g->timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(s.store, rank, world_size, options);
#else
      throw sl::ArgumentError("this SharpLens build has no NCCL backend (it needs a CUDA libtorch with NCCL and -DSHARPLENS_CUDA=ON); use Gloo");
#endif
    } else {
      throw sl::ArgumentError("unknown backend " + std::to_string(backend) + " (0 gloo, 1 nccl)");
    }
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    std::ostringstream m;
    m << "rank " << rank << " of " << world_size << " could not join the " << (backend == SL_DIST_BACKEND_NCCL ? "NCCL" : "Gloo")
      << " process group through " << where(s) << " within " << timeout_ms << " ms: " << message_of(e);
    throw std::runtime_error(m.str());
  }
  *out = reinterpret_cast<sl_process_group>(g.release());
  SL_CATCH
}

sl_status sl_dist_process_group_free(sl_process_group group) {
  SL_TRY
  delete reinterpret_cast<Group*>(group);
  SL_CATCH
}

sl_status sl_dist_barrier(sl_process_group group) {
  SL_TRY
  auto& g = get_group(group);
  finish(g, g.backend->barrier(c10d::BarrierOptions()), "barrier");
  SL_CATCH
}

sl_status sl_dist_all_reduce(sl_process_group group, sl_tensor tensor, int32_t op) {
  SL_TRY
  auto& g = get_group(group);
  auto& t = sl::get(tensor);
  check_device(g, t, "all_reduce tensor");
  c10d::AllreduceOptions opts;
  opts.reduceOp = reduce_op(op);
  in_place(g, t, "all_reduce", [&](std::vector<at::Tensor>& ts) { return g.backend->allreduce(ts, opts); });
  SL_CATCH
}

sl_status sl_dist_all_reduce_many(sl_process_group group, const sl_tensor* tensors, int32_t count, int32_t op) {
  SL_TRY
  auto& g = get_group(group);
  auto list = sl::tensor_list(tensors, count, "tensors");
  c10d::AllreduceOptions opts;
  opts.reduceOp = reduce_op(op);
  if (list.empty()) return SL_OK;
  for (size_t i = 0; i < list.size(); ++i) {
    check_device(g, list[i], "all_reduce_many tensor");
    if (list[i].scalar_type() != list[0].scalar_type() || list[i].device() != list[0].device())
      throw sl::ArgumentError("all_reduce_many: tensor " + std::to_string(i) + " is " + std::string(c10::toString(list[i].scalar_type())) +
                              " on " + list[i].device().str() + ", tensor 0 is " + c10::toString(list[0].scalar_type()) + " on " +
                              list[0].device().str() + "; one call reduces one dtype on one device");
  }
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> flat_parts;
  flat_parts.reserve(list.size());
  for (auto& t : list) flat_parts.push_back(t.reshape({-1}));
  std::vector<at::Tensor> buffer{at::cat(flat_parts)};
  finish(g, g.backend->allreduce(buffer, opts), "all_reduce_many");
  int64_t offset = 0;
  for (auto& t : list) {
    const int64_t n = t.numel();
    t.copy_(buffer[0].narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
  SL_CATCH
}

sl_status sl_dist_all_gather(sl_process_group group, sl_tensor input, sl_tensor* out) {
  SL_TRY
  sl::require(out, "out");
  auto& g = get_group(group);
  auto& t = sl::get(input, "input");
  check_device(g, t, "all_gather input");
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> inputs{t.contiguous()};
  // The ranks' rows land directly in one [world, ...] tensor (unbind's rows are contiguous views), not stacked after.
  auto shape = inputs[0].sizes().vec();
  shape.insert(shape.begin(), g.size);
  auto gathered = at::empty(shape, inputs[0].options());
  std::vector<std::vector<at::Tensor>> outputs{gathered.unbind(0)};
  finish(g, g.backend->allgather(outputs, inputs, c10d::AllgatherOptions()), "all_gather");
  *out = sl::new_handle(gathered);
  SL_CATCH
}

sl_status sl_dist_broadcast(sl_process_group group, sl_tensor tensor, int32_t root) {
  SL_TRY
  auto& g = get_group(group);
  auto& t = sl::get(tensor);
  check_device(g, t, "broadcast tensor");
  if (root < 0 || root >= g.size)
    throw sl::ArgumentError("broadcast root " + std::to_string(root) + " is out of range for world size " + std::to_string(g.size));
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  in_place(g, t, "broadcast", [&](std::vector<at::Tensor>& ts) { return g.backend->broadcast(ts, opts); });
  SL_CATCH
}

}  // extern "C"
