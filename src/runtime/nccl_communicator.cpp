#include "runtime/nccl_communicator.h"

#ifdef UBERLM_WITH_CUDA
#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

namespace uberlm {

namespace {

// The NCCL entry points we use, resolved from the shared library once.
struct NcclLibrary {
  decltype(&ncclCommInitAll) comm_init_all = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclGetVersion) get_version = nullptr;

  static const NcclLibrary& get() {
    static const NcclLibrary library = open();
    return library;
  }

  void check(ncclResult_t status, const char* what) const {
    if (status != ncclSuccess) fail("NCCL {} failed: {} (code {})", what, error_string(status), static_cast<int>(status));
  }

 private:
  static NcclLibrary open() {
    const char* configured = std::getenv("UBERLM_NCCL_LIBRARY");
    const std::string path = configured && *configured ? configured : "libnccl.so.2";
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      fail("--tensor-parallel needs NCCL: dlopen({}) failed: {}; put libnccl.so.2 on LD_LIBRARY_PATH or name the file "
           "in UBERLM_NCCL_LIBRARY",
           path, dlerror());
    }
    NcclLibrary library;
    auto resolve = [&](auto& function, const char* name) {
      function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(handle, name));
      if (!function) fail("NCCL library {} has no symbol {}", path, name);
    };
    resolve(library.comm_init_all, "ncclCommInitAll");
    resolve(library.comm_destroy, "ncclCommDestroy");
    resolve(library.all_reduce, "ncclAllReduce");
    resolve(library.all_gather, "ncclAllGather");
    resolve(library.error_string, "ncclGetErrorString");
    resolve(library.get_version, "ncclGetVersion");
    int version = 0;
    library.check(library.get_version(&version), "ncclGetVersion");
    spdlog::info("tensor parallel: NCCL {} from {}", version, path);
    return library;
  }
};

}  // namespace

std::vector<std::unique_ptr<NcclCommunicator>> NcclCommunicator::create_group(int size) {
  int devices = 0;
  CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (size < 1 || size > devices) {
    fail("--tensor-parallel {}: needs {} GPUs, {} visible", size, size, devices);
  }
  // NVLink multicast (NVLS) can take a shared host's GPUs out of service; keep it off whatever the caller set.
  const char* nvls = std::getenv("NCCL_NVLS_ENABLE");
  if (nvls && std::string(nvls) != "0") spdlog::warn("tensor parallel: NCCL_NVLS_ENABLE={} overridden to 0", nvls);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  // Connections made at init, not at a collective's first use, which may be inside a graph capture.
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  const NcclLibrary& nccl = NcclLibrary::get();
  std::vector<ncclComm_t> comms(size, nullptr);
  std::vector<int> device_list(size);
  for (int r = 0; r < size; ++r) device_list[r] = r;
  nccl.check(nccl.comm_init_all(comms.data(), size, device_list.data()), "ncclCommInitAll");
  std::vector<std::unique_ptr<NcclCommunicator>> group;
  for (int r = 0; r < size; ++r) group.emplace_back(new NcclCommunicator(comms[r], r, size));
  return group;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_) NcclLibrary::get().comm_destroy(comm_);
}

void NcclCommunicator::all_reduce_sum(float* data, int64_t count, cudaStream_t stream) const {
  const NcclLibrary& nccl = NcclLibrary::get();
  nccl.check(nccl.all_reduce(data, data, static_cast<size_t>(count), ncclFloat32, ncclSum, comm_, stream),
             "ncclAllReduce");
}

void NcclCommunicator::all_gather(const float* local, float* gathered, int64_t count, cudaStream_t stream) const {
  const NcclLibrary& nccl = NcclLibrary::get();
  nccl.check(nccl.all_gather(local, gathered, static_cast<size_t>(count), ncclFloat32, comm_, stream),
             "ncclAllGather");
}

}  // namespace uberlm
#endif
