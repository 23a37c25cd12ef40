// The error convention of every C++ shim in the workspace (pe-torch, pe-dist): an exported function
// returns nullptr on success or a malloc'd message that Rust copies and frees exactly once, so no
// C++ exception ever unwinds into Rust.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

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

}  // namespace pe_shim
