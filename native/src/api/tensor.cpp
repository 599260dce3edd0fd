// Tensor exports: lifetime, queries, creation, conversion, views and layout.
#include <cstring>

#include "common.h"

using sl::get;
using sl::new_handle;

namespace {

at::TensorOptions options_for(int32_t dtype, int32_t device_type, int32_t device_index) {
  return at::TensorOptions().dtype(sl::to_dtype(dtype)).device(sl::to_device(device_type, device_index));
}

c10::optional<at::Generator> generator_of(sl_generator g) {
  if (g == nullptr) return c10::nullopt;
  return *reinterpret_cast<at::Generator*>(g);
}

}  // namespace

extern "C" {

/* ------------------------------------------------------------------ lifetime and queries */

sl_status sl_tensor_free(sl_tensor t) {
  SL_TRY
  if (t != nullptr) {
    delete reinterpret_cast<at::Tensor*>(t);
    sl::g_live_tensors.fetch_sub(1, std::memory_order_relaxed);
  }
  SL_CATCH
}

sl_status sl_tensor_share(sl_tensor t, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t));
  SL_CATCH
}

sl_status sl_tensor_ndim(sl_tensor t, int64_t* out) {
  SL_TRY
  SL_OUT(out) = get(t).dim();
  SL_CATCH
}

sl_status sl_tensor_shape(sl_tensor t, int64_t* shape) {
  SL_TRY
  const auto& x = get(t);
  if (x.dim() > 0) std::memcpy(sl::require(shape, "shape"), x.sizes().data(), sizeof(int64_t) * x.dim());
  SL_CATCH
}

sl_status sl_tensor_strides(sl_tensor t, int64_t* strides) {
  SL_TRY
  const auto& x = get(t);
  if (x.dim() > 0) std::memcpy(sl::require(strides, "strides"), x.strides().data(), sizeof(int64_t) * x.dim());
  SL_CATCH
}

sl_status sl_tensor_numel(sl_tensor t, int64_t* out) {
  SL_TRY
  SL_OUT(out) = get(t).numel();
  SL_CATCH
}

sl_status sl_tensor_dtype(sl_tensor t, int32_t* out) {
  SL_TRY
  SL_OUT(out) = static_cast<int32_t>(get(t).scalar_type());
  SL_CATCH
}

sl_status sl_tensor_device(sl_tensor t, int32_t* device_type, int32_t* device_index) {
  SL_TRY
  auto d = get(t).device();
  SL_OUT(device_type) = d.is_cuda() ? 1 : d.is_meta() ? 2 : 0;
  SL_OUT(device_index) = d.has_index() ? d.index() : (d.is_cuda() ? 0 : -1);
  SL_CATCH
}

sl_status sl_tensor_is_contiguous(sl_tensor t, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get(t).is_contiguous() ? 1 : 0;
  SL_CATCH
}

sl_status sl_tensor_data_ptr(sl_tensor t, void** out) {
  SL_TRY
  SL_OUT(out) = get(t).data_ptr();
  SL_CATCH
}

sl_status sl_tensor_copy_to_buffer(sl_tensor t, void* dst, int64_t nbytes) {
  SL_TRY
  auto x = get(t).detach().to(at::kCPU).contiguous();
  const int64_t expected = x.numel() * static_cast<int64_t>(x.element_size());
  if (nbytes != expected)
    throw sl::ArgumentError("buffer holds " + std::to_string(nbytes) + " bytes but the tensor needs " +
                            std::to_string(expected));
  if (expected > 0) std::memcpy(sl::require(dst, "destination buffer"), x.data_ptr(), static_cast<size_t>(expected));
  SL_CATCH
}

sl_status sl_tensor_item_double(sl_tensor t, double* out) {
  SL_TRY
  SL_OUT(out) = get(t).item<double>();
  SL_CATCH
}

sl_status sl_tensor_item_int64(sl_tensor t, int64_t* out) {
  SL_TRY
  SL_OUT(out) = get(t).item<int64_t>();
  SL_CATCH
}

sl_status sl_tensor_is_same_storage(sl_tensor a, sl_tensor b, int32_t* out) {
  SL_TRY
  SL_OUT(out) = get(a, "a").is_alias_of(get(b, "b")) ? 1 : 0;
  SL_CATCH
}

/* ------------------------------------------------------------------ creation */

sl_status sl_tensor_from_data(const void* data, int64_t nbytes, const int64_t* shape, int32_t ndim, int32_t dtype,
                              sl_tensor* out) {
  SL_TRY
  auto t = at::empty(sl::dims_of(shape, ndim), at::TensorOptions().dtype(sl::to_dtype(dtype)));
  const int64_t expected = t.numel() * static_cast<int64_t>(t.element_size());
  if (nbytes != expected)
    throw sl::ArgumentError("data holds " + std::to_string(nbytes) + " bytes but shape " +
                            c10::str(t.sizes()) + " of " + std::string(c10::toString(t.scalar_type())) +
                            " needs " + std::to_string(expected));
  if (expected > 0) std::memcpy(t.data_ptr(), sl::require(data, "data"), static_cast<size_t>(expected));
  SL_OUT(out) = new_handle(std::move(t));
  SL_CATCH
}

sl_status sl_tensor_from_blob(void* data, const int64_t* shape, int32_t ndim, int32_t dtype, void* owner,
                              sl_tensor* out) {
  SL_TRY
  auto type = sl::to_dtype(dtype);
  const auto align = c10::elementSize(type);
  if (reinterpret_cast<uintptr_t>(data) % align != 0)
    throw sl::ArgumentError("from_blob: data is not aligned to the element size " + std::to_string(align));
  auto release = sl::g_release;
  auto t = at::from_blob(
      data, sl::dims_of(shape, ndim),
      [release, owner](void*) {
        if (release != nullptr && owner != nullptr) release(owner);
      },
      at::TensorOptions().dtype(type));
  SL_OUT(out) = new_handle(std::move(t));
  SL_CATCH
}

sl_status sl_tensor_empty(const int64_t* shape, int32_t ndim, int32_t dtype, int32_t device_type,
                          int32_t device_index, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(at::empty(sl::dims_of(shape, ndim), options_for(dtype, device_type, device_index)));
  SL_CATCH
}

sl_status sl_tensor_full(const int64_t* shape, int32_t ndim, double value, int32_t dtype, int32_t device_type,
                         int32_t device_index, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) =
      new_handle(at::full(sl::dims_of(shape, ndim), value, options_for(dtype, device_type, device_index)));
  SL_CATCH
}

sl_status sl_tensor_arange(double start, double end, double step, int32_t dtype, int32_t device_type,
                           int32_t device_index, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(at::arange(start, end, step, options_for(dtype, device_type, device_index)));
  SL_CATCH
}

sl_status sl_tensor_random(int32_t kind, const int64_t* shape, int32_t ndim, int32_t dtype, int32_t device_type,
                           int32_t device_index, sl_generator gen, sl_tensor* out) {
  SL_TRY
  auto opts = options_for(dtype, device_type, device_index);
  auto dims = sl::dims_of(shape, ndim);
  at::Tensor t;
  switch (kind) {
    case 0: t = at::randn(dims, generator_of(gen), opts); break;
    case 1: t = at::rand(dims, generator_of(gen), opts); break;
    default: throw sl::ArgumentError("unknown random kind " + std::to_string(kind));
  }
  SL_OUT(out) = new_handle(std::move(t));
  SL_CATCH
}

sl_status sl_tensor_randint(int64_t low, int64_t high, const int64_t* shape, int32_t ndim, int32_t dtype,
                            int32_t device_type, int32_t device_index, sl_generator gen, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(
      at::randint(low, high, sl::dims_of(shape, ndim), generator_of(gen), options_for(dtype, device_type, device_index)));
  SL_CATCH
}

sl_status sl_tensor_to(sl_tensor t, int32_t dtype, int32_t device_type, int32_t device_index, int32_t copy,
                       sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).to(sl::to_device(device_type, device_index), sl::to_dtype(dtype),
                                     /*non_blocking=*/false, copy != 0));
  SL_CATCH
}

sl_status sl_tensor_clone(sl_tensor t, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).clone());
  SL_CATCH
}

/* ------------------------------------------------------------------ views and layout */

sl_status sl_tensor_reshape(sl_tensor t, const int64_t* shape, int32_t ndim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).reshape(sl::dims_of(shape, ndim)));
  SL_CATCH
}

sl_status sl_tensor_view(sl_tensor t, const int64_t* shape, int32_t ndim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).view(sl::dims_of(shape, ndim)));
  SL_CATCH
}

sl_status sl_tensor_permute(sl_tensor t, const int64_t* dims, int32_t ndim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).permute(sl::dims_of(dims, ndim, "dims")));
  SL_CATCH
}

sl_status sl_tensor_transpose(sl_tensor t, int64_t dim0, int64_t dim1, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).transpose(dim0, dim1));
  SL_CATCH
}

sl_status sl_tensor_narrow(sl_tensor t, int64_t dim, int64_t start, int64_t length, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).narrow(dim, start, length));
  SL_CATCH
}

sl_status sl_tensor_select(sl_tensor t, int64_t dim, int64_t index, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).select(dim, index));
  SL_CATCH
}

sl_status sl_tensor_slice(sl_tensor t, int64_t dim, int64_t start, int64_t end, int64_t step, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).slice(dim, start, end, step));
  SL_CATCH
}

sl_status sl_tensor_unsqueeze(sl_tensor t, int64_t dim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).unsqueeze(dim));
  SL_CATCH
}

sl_status sl_tensor_squeeze(sl_tensor t, int32_t has_dim, int64_t dim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(has_dim ? get(t).squeeze(dim) : get(t).squeeze());
  SL_CATCH
}

sl_status sl_tensor_expand(sl_tensor t, const int64_t* shape, int32_t ndim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).expand(sl::dims_of(shape, ndim)));
  SL_CATCH
}

sl_status sl_tensor_contiguous(sl_tensor t, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).contiguous());
  SL_CATCH
}

sl_status sl_tensor_flatten(sl_tensor t, int64_t start_dim, int64_t end_dim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).flatten(start_dim, end_dim));
  SL_CATCH
}

sl_status sl_tensor_index_select(sl_tensor t, int64_t dim, sl_tensor index, sl_tensor* out) {
  SL_TRY
  const auto& x = get(t);
  const auto& i = get(index, "index");
  if (!x.is_meta()) {
    SL_OUT(out) = new_handle(x.index_select(dim, i));
  } else {
    // libtorch 1.13 has no meta kernel for index_select; advanced indexing along dim gives the same shape and has one.
    if (i.dim() > 1) throw sl::ArgumentError("index_select's index must be 1-D, got " + c10::str(i.sizes()));
    const int64_t d = c10::maybe_wrap_dim(dim, x.dim());
    SL_OUT(out) = new_handle(at::index(x.transpose(0, d), {i.reshape({-1})}).transpose(0, d));  // a 0-d index keeps its dim, as index_select does
  }
  SL_CATCH
}

sl_status sl_tensor_gather(sl_tensor t, int64_t dim, sl_tensor index, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).gather(dim, get(index, "index")));
  SL_CATCH
}

sl_status sl_tensor_scatter(sl_tensor t, int64_t dim, sl_tensor index, sl_tensor src, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).scatter(dim, get(index, "index"), get(src, "src")));
  SL_CATCH
}

sl_status sl_tensor_masked_fill(sl_tensor t, sl_tensor mask, double value, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(get(t).masked_fill(get(mask, "mask"), value));
  SL_CATCH
}

sl_status sl_tensor_where(sl_tensor condition, sl_tensor a, sl_tensor b, sl_tensor* out) {
  SL_TRY
  const auto &c = get(condition, "condition"), &x = get(a, "a"), &y = get(b, "b");
  if (!c.is_meta()) {
    SL_OUT(out) = new_handle(at::where(c, x, y));
  } else {
    // libtorch 1.13 has no meta kernel for where: the same shape, dtype and graph from arithmetic (meta has no values,
    // so the arithmetic's NaN behaviour does not matter there).
    // Bool operands compute in uint8 (bool has no subtraction) and come back as bool.
    const auto type = at::result_type(x, y);
    const auto calc = type == at::kBool ? at::kByte : type;
    const auto pick = c.to(calc);
    SL_OUT(out) = new_handle((x.to(calc) * pick + y.to(calc) * (1 - pick)).to(type));
  }
  SL_CATCH
}

sl_status sl_tensor_cat(const sl_tensor* tensors, int32_t count, int64_t dim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(at::cat(sl::tensor_list(tensors, count, "tensors"), dim));
  SL_CATCH
}

sl_status sl_tensor_stack(const sl_tensor* tensors, int32_t count, int64_t dim, sl_tensor* out) {
  SL_TRY
  SL_OUT(out) = new_handle(at::stack(sl::tensor_list(tensors, count, "tensors"), dim));
  SL_CATCH
}

sl_status sl_tensor_split_sizes(sl_tensor t, const int64_t* sizes, int32_t count, int64_t dim, sl_tensor* outs) {
  SL_TRY
  auto parts = get(t).split_with_sizes(sl::dims_of(sizes, count, "sizes"), dim);
  sl::require(outs, "outs");
  // Allocate every handle before publishing any, so a failure leaks nothing.
  std::vector<sl_tensor> handles;
  handles.reserve(parts.size());
  try {
    for (auto& p : parts) handles.push_back(new_handle(std::move(p)));
  } catch (...) {
    for (auto h : handles) sl_tensor_free(h);
    throw;
  }
  for (size_t i = 0; i < handles.size(); ++i) outs[i] = handles[i];
  SL_CATCH
}

}  // extern "C"
