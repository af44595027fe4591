// Python module paratriton._C_cuda: module.cpp's entry point and build information for the CUDA kernels
// (cuda_ops.cu, ops paratriton_cuda::<op>), a module of its own so that the CPU module never depends on CUDA.
#define PARATRITON_MODULE_NAME _C_cuda
#include "module.cpp"
