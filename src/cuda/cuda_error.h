#pragma once
// Turning CUDA and cuBLAS status codes into qlora::Error with a message a user can act on.
// Every CUDA runtime and cuBLAS call in src/cuda goes through one of these.
#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "base/error.h"

namespace qlora::cuda {

// Throws Error("cuda: <what>: <CUDA's name and message>") unless e == cudaSuccess.
void check_cuda(cudaError_t e, const char* what);
// Throws Error("cublas: <what>: <status>") unless s == CUBLAS_STATUS_SUCCESS.
void check_cublas(cublasStatus_t s, const char* what);
// Checks the last kernel launch (its configuration) right after it.
void check_launch(const char* kernel);

// "NVIDIA H200 (cuda:0, sm_90, 139.8 GiB)"; throws Error when the device does not exist.
std::string describe_device(int device);
// Number of CUDA devices usable by this process (0 when there is no driver or no GPU:
// never throws).
int device_count();
// Free and total bytes of the current device (cudaMemGetInfo).
void memory_info(size_t* free_bytes, size_t* total_bytes);

}  // namespace qlora::cuda

#define QLORA_CUDA_CHECK(expr) ::qlora::cuda::check_cuda((expr), #expr)
#define QLORA_CUBLAS_CHECK(expr) ::qlora::cuda::check_cublas((expr), #expr)
