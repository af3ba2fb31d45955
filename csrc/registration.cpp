// The one place where every dv365 schema is declared. Backends add kernels with TORCH_LIBRARY_IMPL in
// their own files; Python adds fake impls and autograd (dv365_ops/<family>.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/cpu_dispatch.h"
#include "deferred_checks.h"
#include "slice_plan.h"

extern "C" {
// How many slice plans this process has built (tests count them to see that plans are reused per program).
static PyObject* dv365_plan_builds(PyObject*, PyObject*) { return PyLong_FromLongLong(dv365::plan::slice_plan_builds()); }

// Deferred data checks (deferred_checks.h): `_set_deferred_checks(on)` returns the previous mode;
// `_check_deferred()` raises RuntimeError naming each op whose kernels flagged bad input since the last check.
static PyObject* dv365_set_deferred_checks(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(dv365::deferred::set_enabled(on != 0));
}
static PyObject* dv365_deferred_checks_enabled(PyObject*, PyObject*) {
  return PyBool_FromLong(dv365::deferred::enabled());
}
static PyObject* dv365_check_deferred(PyObject*, PyObject*) {
  try {
    dv365::deferred::check();
  } catch (const std::exception& e) {
    // c10::Error's what() carries a C++ backtrace; the message alone is what the caller needs
    const auto* c10e = dynamic_cast<const c10::Error*>(&e);
    PyErr_SetString(PyExc_RuntimeError, c10e ? c10e->msg().c_str() : e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// A module init without pybind11, so that `from dv365_ops import _C` loads this library (and runs the static
// registrations below). Its attributes (besides the deferred checks' two above): `cpu_isa`, which copy of the CPU kernels this process runs ("avx2" or
// "baseline", csrc/cpu/cpu_dispatch.h), and `_plan_builds()`, the slice plans built so far (csrc/slice_plan.h).
PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"_plan_builds", dv365_plan_builds, METH_NOARGS, "slice plans built by this process"},
      {"_set_deferred_checks", dv365_set_deferred_checks, METH_O, "set deferred data checks; returns the old mode"},
      {"_deferred_checks_enabled", dv365_deferred_checks_enabled, METH_NOARGS, "whether checks are deferred"},
      {"_check_deferred", dv365_check_deferred, METH_NOARGS, "raise what deferred data checks found"},
      {nullptr, nullptr, 0, nullptr},
  };
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddStringConstant(module, "cpu_isa", dv365::cpu_isa_name()) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(dv365, m) {
  // jagged weighted mean pooling (dv365_ops/jagged.py)
  m.def("jagged_mean_pool(Tensor table, Tensor ids, Tensor offsets, Tensor? weights=None, bool sparse=False) -> Tensor");
  m.def("jagged_mean_pool_backward(Tensor grad, Tensor ids, Tensor offsets, Tensor? weights, SymInt num_rows) -> Tensor");
  m.def("jagged_mean_pool_backward_rows(Tensor grad, Tensor ids, Tensor offsets, Tensor? weights) -> Tensor");

  // token-axis strided mean pooling (dv365_ops/token_pool.py)
  m.def("token_pool(Tensor x, int stride) -> Tensor");
  m.def("token_pool_backward(Tensor grad, int stride, SymInt n) -> Tensor");

  // int4 rowwise codes (dv365_ops/int4.py)
  m.def("int4_quantize(Tensor x, bool half_scale_bias=False) -> Tensor");
  m.def("int4_dequantize(Tensor packed, bool half_scale_bias=False, ScalarType? dtype=None) -> Tensor");

  // multi-slicing (dv365_ops/slicing.py; program layout in dv365_ops/program.py)
  m.def(
      "slice_timeline(Tensor[] ids, Tensor offsets, Tensor ts, Tensor cats, Tensor floats, Tensor request_ts, "
      "Tensor prog_i, Tensor prog_f) -> (Tensor values, Tensor weights, Tensor lengths)");
  m.def(
      "sliced_pool(Tensor[] tables, Tensor[] ids, Tensor offsets, Tensor ts, Tensor cats, Tensor floats, "
      "Tensor request_ts, Tensor prog_i, Tensor prog_f, bool sparse=False) -> (Tensor pooled, Tensor weight_sum)");
  m.def(
      "sliced_pool_backward(Tensor grad, Tensor weight_sum, Tensor[] ids, Tensor offsets, Tensor ts, Tensor cats, "
      "Tensor floats, Tensor request_ts, Tensor prog_i, Tensor prog_f, SymInt[] num_rows) -> Tensor[]");
  m.def(
      "plan_slices(Tensor prog_i, Tensor prog_f, int num_tables, int cat_fields, int float_fields) -> "
      "(Tensor plan_i, Tensor plan_f)");
  m.def(
      "sliced_pool_backward_rows(Tensor grad, Tensor weight_sum, Tensor[] ids, Tensor offsets, Tensor ts, "
      "Tensor cats, Tensor floats, Tensor request_ts, Tensor prog_i, Tensor prog_f) -> Tensor[]");
}
