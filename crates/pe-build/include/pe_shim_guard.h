// What every C++ shim in the workspace (pe-torch, pe-dist) shares: the error convention (an exported
// function returns nullptr on success or a malloc'd message that Rust copies and frees exactly once,
// so no C++ exception ever unwinds into Rust) and how tensor arrays arrive from Rust.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace pe_shim {

// A malloc'd copy of `msg` (nullptr if out of memory).
inline char *dup_error(const char *msg) {
  size_t n = std::strlen(msg);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs `body`; turns any exception into an error string (nullptr on success).
template <typename F> char *guarded(F &&body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error &e) {
    return dup_error(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return dup_error(e.what());
  } catch (...) {
    return dup_error("unknown C++ exception");
  }
}

// The tensors behind `n` borrowed `at::Tensor*` from Rust (handles copied, storage shared).
inline std::vector<at::Tensor> to_vec(const at::Tensor *const *ptrs, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(ptrs[i] != nullptr, "null tensor pointer at index ", i);
    v.push_back(*ptrs[i]);
  }
  return v;
}

}  // namespace pe_shim
