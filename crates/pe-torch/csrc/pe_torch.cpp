// C shim over the libtorch features tch 0.24 does not expose (see src/ffi.rs for the Rust side).
//
// Conventions, shared by every function below:
// - A tensor crosses the boundary as `at::Tensor*` (torch-sys's `C_tensor`); inputs are borrowed
//   (`const at::Tensor*`, never freed here), outputs are written to `at::Tensor** out` as a fresh
//   `new at::Tensor(...)` whose ownership passes to the caller (tch frees it with `delete`).
// - A tensor list is `(const at::Tensor* const* ptrs, size_t n)`.
// - Every function returns nullptr on success or a malloc'd, NUL-terminated error message that the
//   caller must release with `pe_torch_free_error`. C++ exceptions never cross into Rust.
#include "pe_cuda_check.h"
#include "pe_shim_guard.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace {

using pe_shim::guarded;
using pe_torch::require_cuda;

using pe_shim::to_vec;

std::optional<at::Tensor> opt_tensor(const at::Tensor *t) {
  if (t == nullptr || !t->defined()) {
    return std::nullopt;
  }
  return *t;
}

// The codes src/abi.rs and src/memory_format.rs declare as `#[repr(i32)]` enums are ATen's own
// values; these fail the build if ATen renumbers them.
static_assert(static_cast<int>(at::DeviceType::CPU) == 0, "abi.rs DeviceType::Cpu");
static_assert(static_cast<int>(at::DeviceType::CUDA) == 1, "abi.rs DeviceType::Cuda");
static_assert(static_cast<int>(at::ScalarType::Half) == 5, "abi.rs ScalarType::Half");
static_assert(static_cast<int>(at::ScalarType::Float) == 6, "abi.rs ScalarType::Float");
static_assert(static_cast<int>(at::ScalarType::Double) == 7, "abi.rs ScalarType::Double");
static_assert(static_cast<int>(at::ScalarType::BFloat16) == 15, "abi.rs ScalarType::BFloat16");
static_assert(static_cast<int>(at::MemoryFormat::Contiguous) == 0, "MemoryFormat::Contiguous");
static_assert(static_cast<int>(at::MemoryFormat::ChannelsLast) == 2, "MemoryFormat::ChannelsLast");
static_assert(static_cast<int>(at::MemoryFormat::ChannelsLast3d) == 3, "MemoryFormat::ChannelsLast3d");

at::DeviceType device_type_of(int code) {
  TORCH_CHECK(code == static_cast<int>(at::kCPU) || code == static_cast<int>(at::kCUDA),
              "pe-torch: unsupported device type code ", code);
  return static_cast<at::DeviceType>(code);
}

at::ScalarType scalar_type_of(int code) {
  TORCH_CHECK(code >= 0 && code < static_cast<int>(at::ScalarType::NumOptions),
              "pe-torch: invalid scalar type code ", code);
  return static_cast<at::ScalarType>(code);
}

at::MemoryFormat memory_format_of(int code) {
  auto is = [code](at::MemoryFormat f) { return code == static_cast<int>(f); };
  TORCH_CHECK(is(at::MemoryFormat::Contiguous) || is(at::MemoryFormat::ChannelsLast) ||
                  is(at::MemoryFormat::ChannelsLast3d),
              "pe-torch: invalid memory format code ", code);
  return static_cast<at::MemoryFormat>(code);
}

} // namespace

extern "C" {

void pe_torch_free_error(char *err) { std::free(err); }

// ---------------------------------------------------------------------------------------------
// Autocast

char *pe_autocast_state(int device_type, bool *enabled, int *dtype) {
  return guarded([&] {
    auto dt = device_type_of(device_type);
    *enabled = at::autocast::is_autocast_enabled(dt);
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
  });
}

// What `torch.autocast.__enter__` does: set enabled + dtype, increment the nesting count.
char *pe_autocast_enter(int device_type, int dtype) {
  return guarded([&] {
    auto dt = device_type_of(device_type);
    auto st = scalar_type_of(dtype);
    TORCH_CHECK(st == at::kBFloat16 || st == at::kHalf,
                "autocast dtype must be bfloat16 or float16, got ", st);
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::set_autocast_dtype(dt, st);
    at::autocast::increment_nesting();
  });
}

// What `torch.autocast.__exit__` does: decrement the nesting count (clearing the cast cache when
// the outermost region ends) and restore the previous enabled flag and dtype.
char *pe_autocast_exit(int device_type, bool prev_enabled, int prev_dtype) {
  return guarded([&] {
    auto dt = device_type_of(device_type);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dt, prev_enabled);
    at::autocast::set_autocast_dtype(dt, scalar_type_of(prev_dtype));
  });
}

// `torch.is_autocast_cache_enabled()` / `torch._C._set_autocast_cache_enabled(...)` (thread-local).
char *pe_autocast_cache_enabled(bool *enabled) {
  return guarded([&] { *enabled = at::autocast::is_autocast_cache_enabled(); });
}

char *pe_autocast_set_cache_enabled(bool enabled) {
  return guarded([&] { at::autocast::set_autocast_cache_enabled(enabled); });
}

// ---------------------------------------------------------------------------------------------
// GradScaler kernels

char *pe_amp_foreach_non_finite_check_and_unscale(const at::Tensor *const *grads, size_t n,
                                                  const at::Tensor *found_inf,
                                                  const at::Tensor *inv_scale) {
  return guarded([&] {
    auto list = to_vec(grads, n);
    at::Tensor fi = *found_inf;
    at::_amp_foreach_non_finite_check_and_unscale_(list, fi, *inv_scale);
  });
}

// ---------------------------------------------------------------------------------------------
// Memory format

char *pe_contiguous_format(const at::Tensor *t, int format, at::Tensor **out) {
  return guarded([&] { *out = new at::Tensor(t->contiguous(memory_format_of(format))); });
}

char *pe_is_contiguous_format(const at::Tensor *t, int format, bool *out) {
  return guarded([&] { *out = t->is_contiguous(memory_format_of(format)); });
}

char *pe_suggest_memory_format(const at::Tensor *t, int *out) {
  return guarded([&] { *out = static_cast<int>(t->suggest_memory_format()); });
}

// `param.data = new_data` in Python: the variable keeps its identity (and its VarStore entry)
// while its storage and strides are replaced.
char *pe_set_data(const at::Tensor *t, const at::Tensor *new_data) {
  return guarded([&] {
    at::Tensor var = *t;
    var.set_data(*new_data);
  });
}

// `param.grad = None`.
char *pe_reset_grad(const at::Tensor *t) {
  return guarded([&] {
    at::Tensor var = *t;
    var.mutable_grad().reset();
  });
}

// ---------------------------------------------------------------------------------------------
// Fused optimizers. Parameters are updated in place with grad mode off, exactly as
// torch.optim's `fused=True` paths call these kernels under `torch.no_grad()`.

char *pe_fused_adamw(const at::Tensor *const *params, const at::Tensor *const *grads,
                     const at::Tensor *const *exp_avgs, const at::Tensor *const *exp_avg_sqs,
                     const at::Tensor *const *steps, size_t n, double lr, const at::Tensor *lr_tensor,
                     double beta1, double beta2, double weight_decay, double eps,
                     const at::Tensor *grad_scale, const at::Tensor *found_inf) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    auto p = to_vec(params, n);
    auto g = to_vec(grads, n);
    auto m = to_vec(exp_avgs, n);
    auto v = to_vec(exp_avg_sqs, n);
    auto s = to_vec(steps, n);
    auto fi = opt_tensor(found_inf);
    at::_foreach_add_(s, 1);
    if (lr_tensor != nullptr) {
      // The learning rate is read on the device: nothing of it is baked into a captured graph.
      at::_fused_adamw_(p, g, m, v, {}, s, *lr_tensor, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false, opt_tensor(grad_scale), fi);
    } else {
      at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                        /*maximize=*/false, opt_tensor(grad_scale), fi);
    }
    if (fi.has_value()) {
      // A skipped step must not advance the bias-correction counters (torch.optim does the same).
      auto fi_scalar = fi->reshape({}).to(at::kFloat);
      for (auto &step : s) {
        step.sub_(fi_scalar);
      }
    }
  });
}

char *pe_fused_sgd(const at::Tensor *const *params, const at::Tensor *const *grads,
                   const at::Tensor *const *momentum_buffers, size_t n, double lr,
                   const at::Tensor *lr_tensor, double momentum,
                   double weight_decay, bool nesterov, bool is_first_step,
                   const at::Tensor *grad_scale, const at::Tensor *found_inf) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    auto p = to_vec(params, n);
    auto g = to_vec(grads, n);
    std::vector<at::Tensor> bufs;
    if (momentum != 0.0) {
      bufs = to_vec(momentum_buffers, n);
    }
    if (lr_tensor != nullptr) {
      at::_fused_sgd_(p, g, bufs, weight_decay, momentum, *lr_tensor, /*dampening=*/0.0, nesterov,
                      /*maximize=*/false, is_first_step, opt_tensor(grad_scale), opt_tensor(found_inf));
    } else {
      at::_fused_sgd_(p, g, bufs, weight_decay, momentum, lr, /*dampening=*/0.0, nesterov,
                      /*maximize=*/false, is_first_step, opt_tensor(grad_scale), opt_tensor(found_inf));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor (`torch._foreach_*`) kernels: one launch per list chunk instead of one or two per
// tensor, the way torch.nn.utils.clip_grad_norm_ and timm's ModelEmaV3 call them.

// `torch._foreach_lerp_(selfs, ends, weight)`: selfs[i] += weight * (ends[i] - selfs[i]).
char *pe_foreach_lerp_(const at::Tensor *const *selfs, const at::Tensor *const *ends, size_t n,
                       double weight) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    auto a = to_vec(selfs, n);
    at::_foreach_lerp_(a, to_vec(ends, n), weight);
  });
}

// selfs[i] += weight * (ends[i] - selfs[i]) with a 0-dim tensor `weight` that stays on the device
// (libtorch's _foreach_lerp_ takes only host scalars or per-element weight lists).
char *pe_foreach_lerp_tensor_(const at::Tensor *const *selfs, const at::Tensor *const *ends, size_t n,
                              const at::Tensor *weight) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    auto a = to_vec(selfs, n);
    auto diff = at::_foreach_sub(to_vec(ends, n), a);
    at::_foreach_mul_(diff, *weight);
    at::_foreach_add_(a, diff);
  });
}

// `torch._foreach_norm(tensors, 2, dtype=float32)`: each tensor's L2 norm, written to out[0..n).
char *pe_foreach_norm(const at::Tensor *const *tensors, size_t n, at::Tensor **out) {
  return guarded([&] {
    auto norms = at::_foreach_norm(to_vec(tensors, n), 2, at::kFloat);
    for (size_t i = 0; i < n; ++i) {
      out[i] = new at::Tensor(std::move(norms[i]));
    }
  });
}

// `torch._foreach_mul_(tensors, factor)` with a 0-dim tensor factor: no host read of the factor.
char *pe_foreach_mul_(const at::Tensor *const *tensors, size_t n, const at::Tensor *factor) {
  return guarded([&] {
    c10::AutoGradMode no_grad(false);
    auto list = to_vec(tensors, n);
    at::_foreach_mul_(list, *factor);
  });
}

// ---------------------------------------------------------------------------------------------
// CUDA utilities, reached through libtorch's device-generic hooks and allocator interface so the
// shim needs no CUDA headers and links on CPU-only builds.

char *pe_cuda_device_count(int64_t *out) {
  return guarded([&] {
    *out = at::detail::getCUDAHooks().hasCUDA() ? at::detail::getCUDAHooks().deviceCount() : 0;
  });
}

char *pe_cuda_set_device(int64_t index) {
  return guarded([&] {
    require_cuda();
    auto count = at::detail::getCUDAHooks().deviceCount();
    TORCH_CHECK(index >= 0 && index < count, "CUDA device index ", index, " out of range (",
                count, " devices)");
    c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(
        at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
  });
}

char *pe_cuda_current_device(int64_t *out) {
  return guarded([&] {
    require_cuda();
    *out = c10::impl::getDeviceGuardImpl(at::kCUDA)->getDevice().index();
  });
}

char *pe_cuda_memory_stats(int64_t index, int64_t *allocated, int64_t *max_allocated,
                           int64_t *reserved, int64_t *max_reserved) {
  return guarded([&] {
    require_cuda();
    auto stats = c10::getDeviceAllocator(at::kCUDA)->getDeviceStats(
        static_cast<c10::DeviceIndex>(index));
    constexpr auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[agg].current;
    *max_allocated = stats.allocated_bytes[agg].peak;
    *reserved = stats.reserved_bytes[agg].current;
    *max_reserved = stats.reserved_bytes[agg].peak;
  });
}

char *pe_cuda_reset_peak_memory_stats(int64_t index) {
  return guarded([&] {
    require_cuda();
    c10::getDeviceAllocator(at::kCUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(index));
  });
}

char *pe_cuda_empty_cache() {
  return guarded([&] {
    require_cuda();
    c10::getDeviceAllocator(at::kCUDA)->emptyCache();
  });
}

char *pe_cuda_synchronize(int64_t index) {
  return guarded([&] {
    require_cuda();
    c10::impl::getDeviceGuardImpl(at::kCUDA)->synchronizeDevice(
        static_cast<c10::DeviceIndex>(index));
  });
}

} // extern "C"

// ---------------------------------------------------------------------------------------------
// TorchScript files.

// Loads the module at `in_path`, freezes it in eval mode and writes it to `out_path`: what
// `torch.jit.freeze` does in Python (attributes inlined as constants, then the frozen-graph passes,
// which fold BatchNorm into the preceding convolution and constant-fold the rest).
extern "C" char *pe_jit_freeze_file(const char *in_path, const char *out_path) {
  return guarded([&] {
    torch::jit::Module module = torch::jit::load(in_path);
    module.eval();
    torch::jit::freeze(module).save(out_path);
  });
}

