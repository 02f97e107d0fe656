#pragma once
// An owning device allocation (cudaMalloc / cudaFree) with typed host <-> device copies.
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "ops/cuda/cuda_check.h"

namespace uberlm {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) CUDA_CHECK(cudaMalloc(&data_, bytes));
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    upload(host);
  }
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

  template <typename T>
  void upload(const std::vector<T>& host) {
    if (host.size() * sizeof(T) != bytes_) fail("DeviceBuffer::upload: {} bytes into a buffer of {}", host.size() * sizeof(T), bytes_);
    CUDA_CHECK(cudaMemcpy(data_, host.data(), bytes_, cudaMemcpyHostToDevice));
  }
  template <typename T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    CUDA_CHECK(cudaMemcpy(host.data(), data_, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  void fill_bytes(uint8_t value) { CUDA_CHECK(cudaMemset(data_, value, bytes_)); }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace uberlm
