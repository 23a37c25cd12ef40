// Shared between the shim's translation units (pe_dist.cpp: stores, Gloo, collectives, Reducer;
// pe_dist_nccl.cpp: NCCL). See src/ffi.rs for the Rust side.
#pragma once

#include "pe_shim_guard.h"

#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

// Opaque handles owned by Rust (freed exactly once through the matching pe_dist_*_free).
struct PeStore {
  c10::intrusive_ptr<c10d::Store> store;
};
struct PeGroup {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

namespace pe_dist {

using pe_shim::guarded;

// The store layout torch's init_process_group gives the default group: a "default_pg" prefix over
// the rendezvous store, then the group name ("0") as a second prefix.
c10::intrusive_ptr<c10d::Store> group_store(const c10::intrusive_ptr<c10d::Store> &store);

// A ProcessGroup named like torch's default group, not yet given a backend.
c10::intrusive_ptr<c10d::ProcessGroup> new_group(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                                                 int world);

} // namespace pe_dist
