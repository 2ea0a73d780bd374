// View<T>: a pointer and a shape of a contiguous buffer -- what every kernel of the core takes (the certify
// kernels and the differentiable ops' kernels alike). The binding layer builds one from a torch tensor
// (data_ptr(), shape, dtype, device, is_contiguous()) without linking libtorch, so the same kernels serve
// any torch 2.x, or from any object that exports a C-contiguous buffer (Python's buffer protocol, e.g. a
// cached float64 copy of a weight): no numpy object, and no numpy header, reaches a kernel.
// A buffer of another dtype fails to load (pybind11 then tries the other dtype's overload, and in the end
// raises TypeError: never a silent conversion); a tensor on another device or a non-contiguous one is a
// clear error (the Python layers check these first and name the op).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastcert {

template <typename T>
struct View {
  T* ptr = nullptr;
  std::vector<std::int64_t> dims;
  std::int64_t numel = 0;
  bool writeable = true;

  // A view of memory the caller owns (scratch space inside a kernel).
  static View of(T* p, std::vector<std::int64_t> shape) {
    View v;
    v.ptr = p;
    v.dims = std::move(shape);
    v.numel = 1;
    for (auto d : v.dims) v.numel *= d;
    return v;
  }

  std::int64_t size() const { return numel; }
  int ndim() const { return static_cast<int>(dims.size()); }
  std::int64_t dim(int i) const { return dims.at(static_cast<std::size_t>(i < 0 ? i + ndim() : i)); }
  std::int64_t shape(int i) const { return dim(i); }
  T* data() const { return ptr; }
  T* mutable_data() const { return ptr; }
  bool empty() const { return numel == 0; }
};

// Throws std::invalid_argument unless v has exactly the given shape.
template <typename T>
inline void expect_shape(const View<T>& v, std::initializer_list<std::int64_t> want, const char* name) {
  bool ok = v.dims.size() == want.size();
  std::size_t k = 0;
  for (auto d : want) ok = ok && v.dims[k++] == d;
  if (!ok) {
    std::string got, exp;
    for (auto d : v.dims) got += std::to_string(d) + ",";
    for (auto d : want) exp += std::to_string(d) + ",";
    throw std::invalid_argument(std::string(name) + ": expected shape [" + exp + "] got [" + got + "]");
  }
}

}  // namespace fastcert

namespace pybind11 {
namespace detail {

// Interned names and torch's dtype objects, looked up once (leaked on purpose: destroying Python objects
// at process exit is unsafe).
struct FcTorchNames {
  PyObject* dtype;
  PyObject* is_cpu;
  PyObject* device;
  PyObject* type;
  PyObject* is_contiguous;
  PyObject* data_ptr;
  PyObject* shape;
  PyObject* f32 = nullptr;
  PyObject* f64 = nullptr;
  FcTorchNames()
      : dtype(PyUnicode_InternFromString("dtype")),
        is_cpu(PyUnicode_InternFromString("is_cpu")),
        device(PyUnicode_InternFromString("device")),
        type(PyUnicode_InternFromString("type")),
        is_contiguous(PyUnicode_InternFromString("is_contiguous")),
        data_ptr(PyUnicode_InternFromString("data_ptr")),
        shape(PyUnicode_InternFromString("shape")) {}
  PyObject* torch_dtype(bool is64) {
    if (f64 == nullptr) {
      module_ torch = module_::import("torch");
      f32 = object(torch.attr("float32")).release().ptr();
      f64 = object(torch.attr("float64")).release().ptr();
    }
    return is64 ? f64 : f32;
  }
};
inline FcTorchNames& fc_names() {
  static FcTorchNames* n = new FcTorchNames();
  return *n;
}

// The struct-module format of a native float / double buffer ("f" / "d", optionally with a native or
// little-endian prefix on a little-endian machine).
template <typename T>
inline bool fc_format_ok(const char* f) {
  if (f == nullptr) return false;
  if (*f == '@' || *f == '=' || *f == '<') {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    if (*f == '<') return false;
#endif
    ++f;
  }
  return f[0] == (sizeof(T) == 8 ? 'd' : 'f') && f[1] == 0;
}

template <typename T>
struct type_caster<fastcert::View<T>> {
  PYBIND11_TYPE_CASTER(fastcert::View<T>, const_name("Tensor"));

  bool load(handle src, bool) {
    PyObject* o = src.ptr();
    if (o == nullptr || o == Py_None) return false;
    if (PyObject_CheckBuffer(o)) return load_buffer(o);
    return load_tensor(o);
  }

  static handle cast(const fastcert::View<T>&, return_value_policy, handle) {
    throw type_error("fastcert::View cannot be returned to Python (the caller allocates)");
  }

 private:
  void set_shape(const Py_ssize_t* shp, int nd) {
    value.dims.assign(shp, shp + nd);
    value.numel = 1;
    for (auto d : value.dims) value.numel *= d;
  }

  bool load_buffer(PyObject* o) {
    Py_buffer b;
    if (PyObject_GetBuffer(o, &b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
      PyErr_Clear();  // not C-contiguous, or no such buffer: this overload does not apply
      return false;
    }
    const bool ok = b.itemsize == static_cast<Py_ssize_t>(sizeof(T)) && fc_format_ok<T>(b.format);
    if (ok) {
      value.ptr = static_cast<T*>(b.buf);
      value.writeable = !b.readonly;
      if (b.ndim == 0) set_shape(nullptr, 0);
      else set_shape(b.shape, b.ndim);
    }
    // the exporter keeps the memory alive as long as the object, which the caller holds for the call
    PyBuffer_Release(&b);
    return ok;
  }

  bool load_tensor(PyObject* o) {
    FcTorchNames& n = fc_names();
    object dt = reinterpret_steal<object>(PyObject_GetAttr(o, n.dtype));
    if (!dt) {
      PyErr_Clear();
      return false;
    }
    if (dt.ptr() != n.torch_dtype(sizeof(T) == 8)) return false;
    object cpu = reinterpret_steal<object>(PyObject_GetAttr(o, n.is_cpu));
    if (!cpu) throw error_already_set();
    if (cpu.ptr() != Py_True) {
      object dev = reinterpret_steal<object>(PyObject_GetAttr(o, n.device));
      std::string name = dev ? str(dev.attr("type")).cast<std::string>() : std::string("?");
      throw type_error("fastcert's kernel received a tensor on device '" + name +
                       "'; only CPU kernels are built for this op (move the tensors with .cpu())");
    }
    object contig = reinterpret_steal<object>(PyObject_CallMethodNoArgs(o, n.is_contiguous));
    if (!contig) throw error_already_set();
    if (contig.ptr() != Py_True)
      throw type_error("fastcert's kernel received a non-contiguous tensor; call .contiguous() first");
    object shp = reinterpret_steal<object>(PyObject_GetAttr(o, n.shape));
    if (!shp || !PyTuple_Check(shp.ptr())) throw type_error("fastcert's kernel: the tensor's shape is not a tuple");
    const Py_ssize_t nd = PyTuple_GET_SIZE(shp.ptr());
    value.dims.resize(static_cast<std::size_t>(nd));
    value.numel = 1;
    for (Py_ssize_t i = 0; i < nd; ++i) {
      const long long d = PyLong_AsLongLong(PyTuple_GET_ITEM(shp.ptr(), i));
      if (d == -1 && PyErr_Occurred()) throw error_already_set();
      value.dims[static_cast<std::size_t>(i)] = d;
      value.numel *= d;
    }
    object p = reinterpret_steal<object>(PyObject_CallMethodNoArgs(o, n.data_ptr));
    if (!p) throw error_already_set();
    value.ptr = reinterpret_cast<T*>(static_cast<std::intptr_t>(PyLong_AsLongLong(p.ptr())));
    value.writeable = true;
    return true;
  }
};

}  // namespace detail
}  // namespace pybind11
