// The op schema, declared once. Kernels register per device in csrc/cpu and csrc/cuda.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import mnv2_fused._C` loads this library, whose static initializers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mnv2_fused, m) {
  // x: (N, Cin, H, W), any memory format. Weights have BN folded in:
  //   w_expand (hidden, Cin), b_expand (hidden)     -- both None when expand_ratio == 1
  //   w_dw (hidden, 3, 3), b_dw (hidden)            -- depthwise 3x3, padding 1
  //   w_proj (Cout, hidden), b_proj (Cout)          -- linear projection
  // Returns (N, Cout, H', W') in x's memory format.
  m.def(
      "inverted_residual(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, "
      "Tensor w_proj, Tensor b_proj, int stride, bool residual) -> Tensor");
  // The same, writing into a preallocated `out` of the output's shape (any strides).
  m.def(
      "inverted_residual_out(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, "
      "Tensor w_proj, Tensor b_proj, int stride, bool residual, Tensor(a!) out) -> ()");
}
