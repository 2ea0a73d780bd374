// View<T>: a pointer and a shape of a contiguous tensor, what the differentiable ops' kernels take.
// The binding layer builds it from a torch tensor (data_ptr(), shape, dtype, device, is_contiguous())
// without linking libtorch, so the same kernels serve any torch 2.x; no numpy object reaches them.
// A tensor of another dtype fails to load (pybind11 then tries the other dtype's overload); a tensor on
// another device or a non-contiguous one is a clear error (the Python op layer checks these first and
// names the op).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastcert {

template <typename T>
struct View {
  T* ptr = nullptr;
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0;

  std::int64_t size() const { return numel; }
  int ndim() const { return static_cast<int>(shape.size()); }
  std::int64_t dim(int i) const { return shape.at(static_cast<std::size_t>(i < 0 ? i + ndim() : i)); }
  T* data() const { return ptr; }
  bool empty() const { return numel == 0; }
};

// Throws std::invalid_argument unless v has exactly the given shape.
template <typename T>
inline void expect_shape(const View<T>& v, std::initializer_list<std::int64_t> want, const char* name) {
  bool ok = v.shape.size() == want.size();
  std::size_t k = 0;
  for (auto d : want) ok = ok && v.shape[k++] == d;
  if (!ok) {
    std::string got, exp;
    for (auto d : v.shape) got += std::to_string(d) + ",";
    for (auto d : want) exp += std::to_string(d) + ",";
    throw std::invalid_argument(std::string(name) + ": expected shape [" + exp + "] got [" + got + "]");
  }
}

}  // namespace fastcert

namespace pybind11 {
namespace detail {

inline object& fc_torch_dtype(bool is64) {
  // leaked on purpose: destroying Python objects at process exit is unsafe
  static object* f32 = nullptr;
  static object* f64 = nullptr;
  if (f64 == nullptr) {
    module_ torch = module_::import("torch");
    f32 = new object(torch.attr("float32"));
    f64 = new object(torch.attr("float64"));
  }
  return is64 ? *f64 : *f32;
}

template <typename T>
struct type_caster<fastcert::View<T>> {
  PYBIND11_TYPE_CASTER(fastcert::View<T>, const_name("Tensor"));

  bool load(handle src, bool) {
    if (!hasattr(src, "data_ptr") || !hasattr(src, "is_contiguous")) return false;
    object dt = src.attr("dtype");
    if (!dt.is(fc_torch_dtype(sizeof(T) == 8))) return false;
    std::string dev = str(src.attr("device").attr("type"));
    if (dev != "cpu")
      throw type_error("fastcert's kernel received a tensor on device '" + dev +
                       "'; only CPU kernels are built for this op (move the tensors with .cpu())");
    if (!src.attr("is_contiguous")().cast<bool>())
      throw type_error("fastcert's kernel received a non-contiguous tensor; call .contiguous() first");
    value.shape.clear();
    value.numel = 1;
    for (handle d : src.attr("shape")) {
      value.shape.push_back(d.cast<std::int64_t>());
      value.numel *= value.shape.back();
    }
    value.ptr = reinterpret_cast<T*>(src.attr("data_ptr")().cast<std::intptr_t>());
    return true;
  }

  static handle cast(const fastcert::View<T>&, return_value_policy, handle) {
    throw type_error("fastcert::View cannot be returned to Python (the caller allocates)");
  }
};

}  // namespace detail
}  // namespace pybind11
