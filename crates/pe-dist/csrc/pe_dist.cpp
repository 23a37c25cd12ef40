// C shim over libtorch's c10d: TCPStore rendezvous, the Gloo process group, blocking collectives,
// and DDP's gradient Reducer (see src/ffi.rs for the Rust side; NCCL is in pe_dist_nccl.cpp).
//
// Conventions, shared by every function below:
// - A tensor crosses the boundary as `at::Tensor*` (torch-sys's `C_tensor`), borrowed for the call;
//   a tensor list is `(const at::Tensor* const* ptrs, size_t n)`.
// - Stores, groups and reducers are opaque heap handles the caller frees once with pe_dist_*_free.
// - Every function returns nullptr on success or a malloc'd, NUL-terminated error message that the
//   caller releases with `pe_dist_free_error`. C++ exceptions never cross into Rust.
#include "pe_dist.h"

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

struct PeReducer {
  std::shared_ptr<c10d::Reducer> reducer;
  // DDP's Logger: it reads the Reducer's backward compute/communication timers.
  std::shared_ptr<c10d::Logger> logger;
};

namespace pe_dist {

c10::intrusive_ptr<c10d::Store> group_store(const c10::intrusive_ptr<c10d::Store> &store) {
  auto default_pg = c10::make_intrusive<c10d::PrefixStore>("default_pg", store);
  return c10::make_intrusive<c10d::PrefixStore>("0", default_pg);
}

c10::intrusive_ptr<c10d::ProcessGroup> new_group(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                                                 int world) {
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
  pg->setGroupName("0");
  pg->setGroupDesc("default_pg");
  return pg;
}

} // namespace pe_dist

namespace {

using pe_dist::guarded;

using pe_shim::to_vec;

c10d::ReduceOp reduce_op_of(int code) {
  switch (code) {
  case 0:
    return c10d::ReduceOp::SUM;
  case 1:
    return c10d::ReduceOp::MAX;
  case 2:
    return c10d::ReduceOp::MIN;
  default:
    TORCH_CHECK(false, "pe-dist: invalid reduce op code ", code);
  }
}

void require(const void *handle, const char *what) {
  TORCH_CHECK(handle != nullptr, "pe-dist: null ", what, " handle");
}

} // namespace

extern "C" {

void pe_dist_free_error(char *err) { std::free(err); }

// ---------------------------------------------------------------------------------------------
// Store

// A TCPStore at host:port. With `num_workers` > 0 every member checks in and the server (port 0 =
// any free port) waits up to `timeout_ms` until `num_workers` have (itself included), as torch's
// rendezvous does; a client retries connecting until the timeout. `bound_port` receives the port
// actually used.
char *pe_dist_tcp_store(const char *host, uint16_t port, bool is_server, int64_t num_workers,
                        int64_t timeout_ms, PeStore **out, uint16_t *bound_port) {
  return guarded([&] {
    require(host, "host");
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server;
    if (num_workers > 0) {
      opts.numWorkers = static_cast<size_t>(num_workers);
    }
    opts.waitWorkers = num_workers > 0;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(host, opts);
    *bound_port = store->getPort();
    *out = new PeStore{store};
  });
}

void pe_dist_store_free(PeStore *store) { delete store; }

// ---------------------------------------------------------------------------------------------
// Process groups

// A Gloo group on `store`. The transport device binds to `iface` when given (GLOO_SOCKET_IFNAME),
// else to the address `hostname` resolves to when given, else to this host's name (torch's default).
char *pe_dist_group_gloo(PeStore *store, int rank, int world, int64_t timeout_ms, const char *hostname,
                         const char *iface, PeGroup **out) {
  return guarded([&] {
    require(store, "store");
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (iface != nullptr) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (hostname != nullptr) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gstore = pe_dist::group_store(store->store);
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(gstore, rank, world, opts);
    auto pg = pe_dist::new_group(gstore, rank, world);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, backend);
    *out = new PeGroup{pg};
  });
}

void pe_dist_group_free(PeGroup *group) { delete group; }

// ---------------------------------------------------------------------------------------------
// Collectives (each returns once its work is done: Gloo blocks the host, NCCL the current stream)

char *pe_dist_all_reduce(PeGroup *group, const at::Tensor *const *ptrs, size_t n, int op) {
  return guarded([&] {
    require(group, "process group");
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op_of(op);
    // One collective per tensor: c10d's multi-tensor allreduce means "one tensor per local device".
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto &t : to_vec(ptrs, n)) {
      std::vector<at::Tensor> one{t};
      works.push_back(group->pg->allreduce(one, opts));
    }
    for (auto &w : works) {
      w->wait();
    }
  });
}

char *pe_dist_broadcast_coalesced(PeGroup *group, const at::Tensor *const *ptrs, size_t n,
                                  size_t buffer_bytes, int root) {
  return guarded([&] {
    require(group, "process group");
    // Parameters are leaves that require grad: overwrite their data, not their autograd history.
    c10::AutoGradMode no_grad(false);
    auto tensors = to_vec(ptrs, n);
    c10d::broadcast_coalesced(group->pg, tensors, buffer_bytes, root);
  });
}

char *pe_dist_barrier(PeGroup *group) {
  return guarded([&] {
    require(group, "process group");
    group->pg->barrier()->wait();
  });
}

// ---------------------------------------------------------------------------------------------
// Reducer (torch DDP's gradient all-reduce, bucketed and overlapped with backward)

char *pe_dist_reducer_new(PeGroup *group, const at::Tensor *const *ptrs, size_t n, const char *const *names,
                          int64_t bucket_cap_bytes, int64_t first_bucket_cap_bytes,
                          bool gradient_as_bucket_view, PeReducer **out) {
  return guarded([&] {
    require(group, "process group");
    TORCH_CHECK(bucket_cap_bytes > 0 && first_bucket_cap_bytes > 0, "pe-dist: bucket caps must be positive");
    auto params = to_vec(ptrs, n);
    std::unordered_map<size_t, std::string> param_names;
    if (names != nullptr) {
      for (size_t i = 0; i < n; ++i) {
        param_names.emplace(i, names[i]);
      }
    }
    // DDP checks every rank holds the same parameter shapes before bucketing them.
    c10d::verify_params_across_processes(group->pg, params, std::nullopt);
    std::vector<bool> expect_sparse(n, false);
    auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(
        params, {static_cast<size_t>(first_bucket_cap_bytes), static_cast<size_t>(bucket_cap_bytes)},
        expect_sparse);
    // Reversed: gradients arrive roughly in reverse parameter order, so the first bucket to fill
    // (and start its all-reduce) holds the last parameters.
    std::reverse(buckets.begin(), buckets.end());
    std::reverse(limits.begin(), limits.end());
    std::vector<int64_t> limits_i64(limits.begin(), limits.end());
    auto reducer = std::make_shared<c10d::Reducer>(
        params, std::move(buckets), group->pg, std::move(expect_sparse), bucket_cap_bytes,
        /*find_unused_parameters=*/false, gradient_as_bucket_view, std::move(param_names),
        first_bucket_cap_bytes, /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
        std::move(limits_i64));
    auto logger = std::make_shared<c10d::Logger>(reducer);
    reducer->set_logger(logger);
    *out = new PeReducer{reducer, logger};
  });
}

// Before a synchronised forward, in DDP's order: reset per-iteration state, then rebuild the buckets
// in the order gradients arrived during the first backward (once; a collective when it happens, so
// every rank calls this at the same step).
char *pe_dist_reducer_prepare_for_forward(PeReducer *r, bool *rebuilt) {
  return guarded([&] {
    require(r, "reducer");
    // As DDP's forward: fold the previous step's timings into the averages (on sampled steps).
    r->logger->set_runtime_stats_and_log();
    r->reducer->prepare_for_forward();
    *rebuilt = r->reducer->rebuild_buckets();
  });
}

char *pe_dist_reducer_prepare_for_backward(PeReducer *r, const at::Tensor *const *ptrs, size_t n) {
  return guarded([&] {
    require(r, "reducer");
    r->reducer->prepare_for_backward(to_vec(ptrs, n));
  });
}

char *pe_dist_reducer_bucket_count(PeReducer *r, size_t *out) {
  return guarded([&] {
    require(r, "reducer");
    *out = r->reducer->get_grad_buckets(/*return_zero_tensors=*/true).size();
  });
}

// DDP's averages over the sampled steps so far (the first 10, then every 100th), in ns: backward
// compute, gradient all-reduce, and the part of the all-reduce that ran during backward compute.
// All zero before any sampled step has finished.
char *pe_dist_reducer_comm_stats(PeReducer *r, int64_t *compute_ns, int64_t *comm_ns, int64_t *overlap_ns) {
  return guarded([&] {
    require(r, "reducer");
    auto ints = r->logger->get_ddp_logging_data().ints_map;
    auto get = [&](const char *key) {
      auto it = ints.find(key);
      return it == ints.end() ? int64_t{0} : it->second;
    };
    *compute_ns = get("avg_backward_compute_time");
    *comm_ns = get("avg_backward_comm_time");
    *overlap_ns = get("avg_backward_compute_comm_overlap_time");
  });
}

// The Reducer's destructor may throw (it is noexcept(false)); swallow that into the error string.
char *pe_dist_reducer_free(PeReducer *r) {
  // The Logger goes first (declared last): DDP deletes it before the Reducer.
  return guarded([&] { delete r; });
}

} // extern "C"
