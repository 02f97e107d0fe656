#pragma once
// NCCL communicators for tensor parallelism within one process: rank r drives GPU r from its own thread.
// libnccl is opened at run time (dlopen of libnccl.so.2, or the file UBERLM_NCCL_LIBRARY names), so that
// binaries which never use tensor parallelism do not depend on its 200 MB shared library; a missing
// library is an Error when a communicator is made. NVLink multicast is kept off (NCCL_NVLS_ENABLE=0).
#ifdef UBERLM_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

struct ncclComm;

namespace uberlm {

class NcclCommunicator {
 public:
  // One communicator per device 0..size-1 of this process (ncclCommInitAll); element r is rank r.
  static std::vector<std::unique_ptr<NcclCommunicator>> create_group(int size);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return rank_; }
  // Enqueued on `stream`, so they may be captured into the rank's CUDA graph; every rank must make the
  // same calls in the same order.
  // data [count] becomes the sum over the ranks, in place.
  void all_reduce_sum(float* data, int64_t count, cudaStream_t stream) const;
  // gathered [size, count] = each rank's local [count], in rank order.
  void all_gather(const float* local, float* gathered, int64_t count, cudaStream_t stream) const;

 private:
  NcclCommunicator(ncclComm* comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ncclComm* comm_;
  int rank_, size_;
};

}  // namespace uberlm
#endif
