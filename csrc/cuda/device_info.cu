// Placeholder translation unit so that FASTCERT_CUDA=ON/AUTO exercises the CUDA toolchain from
// day one. The CUDA bound kernels arrive in a later issue; nothing is exported from here yet.
#include <cuda_runtime.h>

extern "C" int fastcert_cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}
