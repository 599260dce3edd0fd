// Built-in hook actions that run natively, so a hook point using them never calls back into managed code:
// slot tables that gradient hooks fill during backward (caching gradients at every hook point costs one
// stored reference each, not a managed transition), and ablation of selected heads and positions.
#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"

using sl::get;
using sl::new_handle;

namespace {

// Tensors written by gradient hooks and read by the managed cache. Hooks hold a shared_ptr, so a table freed
// by its owner stays valid for any graph that still holds one of its hooks.
struct SlotTable {
  explicit SlotTable(int32_t count) : slots(static_cast<size_t>(count)) {}
  std::mutex mutex;  // autograd may run hooks on its worker threads
  std::vector<at::Tensor> slots;
  int64_t version = 0;  // counts stores, so a reader can skip the table when nothing arrived
};

struct SlotsHandle {
  std::shared_ptr<SlotTable> table;
};

SlotTable& table_of(sl_slots s) {
  return *reinterpret_cast<SlotsHandle*>(sl::require(s, "slots"))->table;
}

size_t checked_slot(const SlotTable& t, int32_t slot) {
  if (slot < 0 || static_cast<size_t>(slot) >= t.slots.size())
    throw sl::ArgumentError("slot " + std::to_string(slot) + " is outside the table of " + std::to_string(t.slots.size()));
  return static_cast<size_t>(slot);
}

// A boolean mask over dimension `dim` of x (size n) selecting `indices` (negative counts from the end), shaped to
// broadcast against x; undefined when every entry is selected.
at::Tensor selection_mask(const at::Tensor& x, int32_t dim, const int64_t* indices, int32_t count, const char* what) {
  if (count < 0) return at::Tensor();
  if (dim < 0 || dim >= x.dim())
    throw sl::ArgumentError(std::string(what) + " dimension " + std::to_string(dim) + " does not exist in a tensor of shape " +
                            c10::str(x.sizes()));
  if (count > 0 && indices == nullptr) throw sl::ArgumentError(std::string(what) + " indices are null");
  const int64_t n = x.size(dim);
  std::vector<uint8_t> selected(static_cast<size_t>(n), 0);
  for (int32_t i = 0; i < count; ++i) {
    const int64_t index = indices[i] < 0 ? indices[i] + n : indices[i];
    if (index < 0 || index >= n)
      throw sl::ArgumentError(std::string(what) + " index " + std::to_string(indices[i]) + " is out of range for dimension " +
                              std::to_string(dim) + " of size " + std::to_string(n) + " (shape " + c10::str(x.sizes()) + ")");
    selected[static_cast<size_t>(index)] = 1;
  }
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[static_cast<size_t>(dim)] = n;
  return at::tensor(selected, at::TensorOptions().dtype(at::kByte)).to(at::kBool).to(x.device()).view(shape);
}

}  // namespace

extern "C" {

sl_status sl_slots_new(int32_t count, sl_slots* out) {
  SL_TRY
  if (count < 0) throw sl::ArgumentError("slot count must be non-negative, got " + std::to_string(count));
  SL_OUT(out) = reinterpret_cast<sl_slots>(new SlotsHandle{std::make_shared<SlotTable>(count)});
  SL_CATCH
}

sl_status sl_slots_free(sl_slots slots) {
  SL_TRY
  delete reinterpret_cast<SlotsHandle*>(slots);
  SL_CATCH
}

sl_status sl_slots_capture_grad(sl_slots slots, int32_t slot, sl_tensor t) {
  SL_TRY
  auto table = reinterpret_cast<SlotsHandle*>(sl::require(slots, "slots"))->table;
  const size_t index = checked_slot(*table, slot);
  auto& x = get(t);
  if (!x.requires_grad())
    throw sl::ArgumentError("cannot capture the gradient of a tensor that does not require grad");
  x.register_hook([table, index](const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(table->mutex);
    table->slots[index] = grad.detach();
    ++table->version;
    return at::Tensor();  // keep the gradient
  });
  SL_CATCH
}

sl_status sl_slots_version(sl_slots slots, int64_t* out) {
  SL_TRY
  auto& table = table_of(slots);
  std::lock_guard<std::mutex> lock(table.mutex);
  SL_OUT(out) = table.version;
  SL_CATCH
}

sl_status sl_slots_take(sl_slots slots, int32_t slot, sl_tensor* out) {
  SL_TRY
  auto& table = table_of(slots);
  const size_t index = checked_slot(table, slot);
  sl::require(out, "out");
  at::Tensor value;
  {
    std::lock_guard<std::mutex> lock(table.mutex);
    value = std::move(table.slots[index]);
    table.slots[index] = at::Tensor();
  }
  *out = value.defined() ? new_handle(std::move(value)) : nullptr;
  SL_CATCH
}

sl_status sl_ablate(sl_tensor x, int32_t head_dim, const int64_t* heads, int32_t n_heads, int32_t pos_dim,
                    const int64_t* positions, int32_t n_positions, sl_tensor value, sl_tensor* out) {
  SL_TRY
  const auto& t = get(x, "x");
  auto mask = selection_mask(t, head_dim, heads, n_heads, "head");
  auto by_position = selection_mask(t, pos_dim, positions, n_positions, "position");
  if (!mask.defined()) mask = by_position;
  else if (by_position.defined()) mask = mask.logical_and(by_position);
  auto replacement = value == nullptr ? at::zeros({}, t.options()) : get(value, "value");
  if (replacement.device() != t.device() || replacement.scalar_type() != t.scalar_type())
    throw sl::ArgumentError("ablation value must be " + std::string(c10::toString(t.scalar_type())) + " on " + t.device().str() +
                            " like the activation, got " + c10::toString(replacement.scalar_type()) + " on " +
                            replacement.device().str());
  if (value != nullptr) {
    // Broadcast only value to x, never the other way: the result must keep the activation's shape.
    bool broadcasts = replacement.dim() <= t.dim();
    for (int64_t i = 1; broadcasts && i <= replacement.dim(); ++i) {
      const int64_t r = replacement.size(-i);
      broadcasts = r == 1 || r == t.size(-i);
    }
    if (!broadcasts)
      throw sl::ArgumentError("ablation value of shape " + c10::str(replacement.sizes()) +
                              " does not broadcast to the activation's shape " + c10::str(t.sizes()));
  }
  SL_OUT(out) = new_handle(mask.defined() ? at::where(mask, replacement, t) : replacement.expand_as(t).clone());
  SL_CATCH
}

}  // extern "C"
