#pragma once
// Functions that headers share between host code (any compiler) and CUDA kernels are marked UBERLM_HOST_DEVICE.
#ifdef __CUDACC__
#define UBERLM_HOST_DEVICE __host__ __device__
#else
#define UBERLM_HOST_DEVICE
#endif
