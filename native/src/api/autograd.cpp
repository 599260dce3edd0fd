// Autograd exports: requires_grad, gradients, backward, autograd::grad and gradient hooks whose
// callbacks run managed code.
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/variable.h>

#include <memory>

#include "common.h"

using sl::get;
using sl::new_handle;

namespace {

// Owns a hook's managed user data: when libtorch drops the hook (removal, or the tensor's autograd
// metadata dying) the last copy of the shared_ptr goes and the managed side is told to release it.
struct HookContext {
  HookContext(sl_grad_hook_fn f, void* user, sl_release_fn rel) : fn(f), user_data(user), release(rel) {}
  HookContext(const HookContext&) = delete;
  HookContext& operator=(const HookContext&) = delete;
  sl_grad_hook_fn fn;
  void* user_data;
  sl_release_fn release;
  ~HookContext() {
    if (release != nullptr && user_data != nullptr) release(user_data);
  }
};

// Identifies a registered hook without keeping its tensor alive.
struct HookRef {
  HookRef(const at::Tensor& t, unsigned pos) : impl(t.getIntrusivePtr()), position(pos) {}
  c10::weak_intrusive_ptr<c10::TensorImpl> impl;
  unsigned position;
  bool removed = false;
};

at::Tensor run_hook(const HookContext& ctx, const at::Tensor& grad) {
  sl_tensor replacement = nullptr;
  int64_t exception_id = 0;
  // The callee owns the handle it receives.
  const int32_t rc = ctx.fn(ctx.user_data, new_handle(grad), &replacement, &exception_id);
  if (rc != 0) {
    if (replacement != nullptr) sl_tensor_free(replacement);
    throw sl::ManagedCallbackError(exception_id);
  }
  if (replacement == nullptr) return at::Tensor();  // undefined: keep the gradient
  at::Tensor result = *reinterpret_cast<at::Tensor*>(replacement);
  sl_tensor_free(replacement);
  return result;
}

}  // namespace

extern "C" {

sl_status sl_tensor_requires_grad(sl_tensor t, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get(t).requires_grad() ? 1 : 0;
  SL_CATCH
}

sl_status sl_tensor_set_requires_grad(sl_tensor t, int32_t requires_grad) {
  SL_TRY
  get(t).set_requires_grad(requires_grad != 0);
  SL_CATCH
}

sl_status sl_tensor_is_leaf(sl_tensor t, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get(t).is_leaf() ? 1 : 0;
  SL_CATCH
}

sl_status sl_tensor_grad(sl_tensor t, sl_tensor* out) {
  SL_TRY
  const auto& g = get(t).grad();
  SL_OUT(out) = g.defined() ? new_handle(g) : nullptr;
  SL_CATCH
}

sl_status sl_tensor_set_grad(sl_tensor t, sl_tensor grad) {
  SL_TRY
  get(t).mutable_grad() = grad == nullptr ? at::Tensor() : get(grad, "grad");
  SL_CATCH
}

sl_status sl_tensor_backward(sl_tensor t, sl_tensor gradient, int32_t retain_graph, int32_t create_graph) {
  SL_TRY
  auto& x = get(t);
  at::Tensor g = gradient == nullptr ? at::Tensor() : get(gradient, "gradient");
  c10::optional<bool> retain;
  if (retain_graph) retain = true;
  torch::autograd::backward({x}, {g}, retain, create_graph != 0);
  SL_CATCH
}

sl_status sl_tensor_detach(sl_tensor t, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).detach());
  SL_CATCH
}

sl_status sl_autograd_grad(const sl_tensor* outputs, int32_t n_outputs, const sl_tensor* grad_outputs,
                           const sl_tensor* inputs, int32_t n_inputs, int32_t retain_graph, int32_t create_graph,
                           int32_t allow_unused, sl_tensor* grads) {
  SL_TRY
  auto outs = sl::tensor_list(outputs, n_outputs, "outputs");
  auto ins = sl::tensor_list(inputs, n_inputs, "inputs");
  std::vector<at::Tensor> gouts(outs.size());
  if (grad_outputs != nullptr)
    for (size_t i = 0; i < outs.size(); ++i)
      if (grad_outputs[i] != nullptr) gouts[i] = get(grad_outputs[i], "grad_output");
  sl::require(grads, "grads");
  c10::optional<bool> retain;
  if (retain_graph) retain = true;
  auto result = torch::autograd::grad(outs, ins, gouts, retain, create_graph != 0, allow_unused != 0);
  std::vector<sl_tensor> handles;
  handles.reserve(result.size());
  for (auto& g : result) handles.push_back(g.defined() ? new_handle(std::move(g)) : nullptr);
  for (size_t i = 0; i < handles.size(); ++i) grads[i] = handles[i];
  SL_CATCH
}

sl_status sl_tensor_register_hook(sl_tensor t, sl_grad_hook_fn fn, void* user_data, sl_hook* out) {
  SL_TRY
  // The context owns user_data from the first line on: on any failure below its destructor releases it,
  // so the caller never frees user_data itself.
  auto ctx = std::make_shared<HookContext>(fn, user_data, sl::g_release);
  auto& x = get(t);
  sl::require(out, "out");
  if (fn == nullptr) throw sl::ArgumentError("hook function is null");
  if (!x.requires_grad())
    throw sl::ArgumentError("cannot register a gradient hook on a tensor that does not require grad");
  const unsigned position = x.register_hook([ctx](const at::Tensor& grad) { return run_hook(*ctx, grad); });
  *out = reinterpret_cast<sl_hook>(new HookRef(x, position));
  SL_CATCH
}

sl_status sl_hook_remove(sl_hook hook) {
  SL_TRY
  auto* h = reinterpret_cast<HookRef*>(sl::require(hook, "hook"));
  if (h->removed) return SL_OK;
  h->removed = true;
  auto impl = h->impl.lock();
  if (impl) at::Tensor(std::move(impl)).remove_hook(h->position);
  SL_CATCH
}

sl_status sl_hook_free(sl_hook hook) {
  SL_TRY
  delete reinterpret_cast<HookRef*>(hook);
  SL_CATCH
}

}  // extern "C"
