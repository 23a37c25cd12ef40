// The one "is CUDA usable here?" check shared by pe-torch's translation units (pe_torch.cpp needs no
// CUDA headers; pe_cuda_graph.cpp does), so every CUDA entry point fails with the same message.
#pragma once

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>

namespace pe_torch {

// Fails clearly without CUDA; otherwise initialises CUDA and its caching allocator the way the
// first CUDA tensor (or Python's torch.cuda._lazy_init) would, so statistics calls are valid even
// before any CUDA allocation.
inline void require_cuda() {
  TORCH_CHECK(at::detail::getCUDAHooks().hasCUDA(),
              "CUDA is not available (no CUDA device, driver or libtorch_cuda in this process)");
  at::globalContext().lazyInitDevice(at::kCUDA);
}

}  // namespace pe_torch
