// The NCCL process group (one GPU per process), kept apart from pe_dist.cpp because its headers pull
// in CUDA's. Same conventions as pe_dist.cpp.
#include "pe_dist.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

extern "C" {

// An NCCL group on `store` bound to CUDA device `device_index` (torchrun's LOCAL_RANK), which also
// becomes this thread's current device. Collectives time out after `timeout_ms` (NCCL's watchdog).
char *pe_dist_group_nccl(PeStore *store, int rank, int world, int64_t timeout_ms, int64_t device_index,
                         PeGroup **out) {
  return pe_dist::guarded([&] {
    TORCH_CHECK(store != nullptr, "pe-dist: null store handle");
    TORCH_CHECK(at::detail::getCUDAHooks().hasCUDA(),
                "the NCCL backend needs CUDA, which is not available in this process");
    auto devices = c10::cuda::device_count();
    TORCH_CHECK(device_index >= 0 && device_index < devices, "LOCAL_RANK ", device_index,
                " has no CUDA device (this machine has ", static_cast<int>(devices), ")");
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto gstore = pe_dist::group_store(store->store);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(gstore, rank, world, opts);
    auto pg = pe_dist::new_group(gstore, rank, world);
    pg->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index)));
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, backend);
    *out = new PeGroup{pg};
  });
}

} // extern "C"
