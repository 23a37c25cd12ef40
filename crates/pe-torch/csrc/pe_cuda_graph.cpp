// CUDA graphs (`at::cuda::CUDAGraph`) and the side streams capture needs, for src/cuda_graph.rs.
// A translation unit of its own because its headers pull in CUDA's (the nvidia-* wheels' CUDA 13
// headers, found by pe-build); pe_torch.cpp stays free of them. Same conventions as pe_torch.cpp:
// every function returns nullptr or a malloc'd error message (pe_shim_guard.h), handles are
// opaque heap objects that Rust frees exactly once with the matching `_free`.
//
// Built with PE_TORCH_NO_CUDA (a libtorch without libtorch_cuda.so), every function is a stub that
// fails with the same "CUDA is not available" message a CPU-only machine gets at run time.
#include "pe_cuda_check.h"
#include "pe_shim_guard.h"

#include <cstdint>

using pe_shim::guarded;

#ifdef PE_TORCH_NO_CUDA

struct PeCudaStream {};
struct PeStreamGuard {};
struct PeCudaGraph {};

namespace {
char *no_cuda() {
  return guarded([] {
    TORCH_CHECK(false, "CUDA is not available (pe-torch was built against a libtorch without CUDA)");
  });
}
}  // namespace

extern "C" {
char *pe_cuda_stream_from_pool(int64_t, PeCudaStream **) { return no_cuda(); }
void pe_cuda_stream_free(PeCudaStream *) {}
char *pe_cuda_stream_enter(const PeCudaStream *, PeStreamGuard **) { return no_cuda(); }
char *pe_cuda_stream_exit(PeStreamGuard *) { return no_cuda(); }
char *pe_cuda_graph_new(int64_t, PeCudaGraph **) { return no_cuda(); }
void pe_cuda_graph_free(PeCudaGraph *) {}
char *pe_cuda_graph_capture_begin(PeCudaGraph *) { return no_cuda(); }
char *pe_cuda_graph_capture_end(PeCudaGraph *) { return no_cuda(); }
char *pe_cuda_graph_replay(PeCudaGraph *) { return no_cuda(); }
char *pe_cuda_graph_reset(PeCudaGraph *) { return no_cuda(); }
}

#else

#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>

// A stream from c10's per-device pool (what `torch.cuda.Stream()` hands out).
struct PeCudaStream {
  c10::cuda::CUDAStream stream;
};

// The stream that was current before `pe_cuda_stream_enter`, restored (with the current device) by
// the StreamGuard when this is deleted. The device-generic guards (c10::StreamGuard, DeviceGuard)
// reach CUDA through libc10_cuda's registered implementation; c10/cuda's inline guards would call
// the CUDA runtime from this file and need libcudart at link time.
struct PeStreamGuard {
  explicit PeStreamGuard(c10::cuda::CUDAStream side)
      : side(side), previous(c10::cuda::getCurrentCUDAStream(side.device_index())), guard(side) {}
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStream previous;
  c10::StreamGuard guard;
};

struct PeCudaGraph {
  c10::DeviceIndex device;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
};

namespace {

c10::DeviceIndex checked_device(int64_t index) {
  pe_torch::require_cuda();
  auto count = c10::cuda::device_count();
  TORCH_CHECK(index >= 0 && index < count, "CUDA device index ", index, " out of range (",
              static_cast<int>(count), " devices)");
  return static_cast<c10::DeviceIndex>(index);
}

// `waiter.wait_stream(done)`: work queued on `waiter` from now on starts after everything already
// queued on `done` (an event, no host wait).
void wait_stream(const c10::cuda::CUDAStream &waiter, const c10::cuda::CUDAStream &done) {
  c10::Event event(c10::DeviceType::CUDA);
  event.record(done);
  event.block(waiter);
}

}  // namespace

extern "C" {

char *pe_cuda_stream_from_pool(int64_t device, PeCudaStream **out) {
  return guarded([&] {
    auto index = checked_device(device);
    *out = new PeCudaStream{c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)};
  });
}

void pe_cuda_stream_free(PeCudaStream *stream) { delete stream; }

// `with torch.cuda.stream(side)` preceded by `side.wait_stream(current)`: the side stream becomes
// current (and its device the current device) and starts after what is already queued.
char *pe_cuda_stream_enter(const PeCudaStream *stream, PeStreamGuard **out) {
  return guarded([&] {
    TORCH_CHECK(stream != nullptr, "pe-torch: null stream handle");
    auto current = c10::cuda::getCurrentCUDAStream(stream->stream.device_index());
    wait_stream(stream->stream, current);
    *out = new PeStreamGuard(stream->stream);
  });
}

// Leaves the side stream: the previous stream waits for everything queued on the side stream, then
// becomes current again. Always frees the guard, even when the wait fails.
char *pe_cuda_stream_exit(PeStreamGuard *guard) {
  std::unique_ptr<PeStreamGuard> owned(guard);
  return guarded([&] {
    TORCH_CHECK(owned != nullptr, "pe-torch: null stream guard");
    wait_stream(owned->previous, owned->side);
  });
}

char *pe_cuda_graph_new(int64_t device, PeCudaGraph **out) {
  return guarded([&] {
    auto index = checked_device(device);
    c10::DeviceGuard device_guard(c10::Device(c10::kCUDA, index));
    *out = new PeCudaGraph{index, std::make_unique<at::cuda::CUDAGraph>(/*keep_graph=*/false)};
  });
}

void pe_cuda_graph_free(PeCudaGraph *graph) { delete graph; }

// What `torch.cuda.graph.__enter__` does after making the side stream current: wait for the device
// to go idle, then begin capturing into a private memory pool ({0, 0} asks CUDAGraph for a fresh
// one) in the global capture mode. CUDAGraph registers the default CUDA generator, so RNG ops read
// their philox seed/offset from device tensors it refreshes at each replay.
char *pe_cuda_graph_capture_begin(PeCudaGraph *graph) {
  return guarded([&] {
    TORCH_CHECK(graph != nullptr, "pe-torch: null CUDA graph handle");
    TORCH_CHECK(c10::cuda::current_device() == graph->device, "capture must run on CUDA device ",
                static_cast<int>(graph->device), " (the graph's), current is ",
                static_cast<int>(c10::cuda::current_device()));
    c10::cuda::device_synchronize();
    graph->graph->capture_begin(/*pool=*/{0, 0}, cudaStreamCaptureModeGlobal);
  });
}

// Ends the capture on the current (capturing) stream and instantiates the executable graph.
char *pe_cuda_graph_capture_end(PeCudaGraph *graph) {
  return guarded([&] {
    TORCH_CHECK(graph != nullptr, "pe-torch: null CUDA graph handle");
    graph->graph->capture_end();
  });
}

// Launches the whole graph on the current stream of the graph's device.
char *pe_cuda_graph_replay(PeCudaGraph *graph) {
  return guarded([&] {
    TORCH_CHECK(graph != nullptr, "pe-torch: null CUDA graph handle");
    c10::DeviceGuard device_guard(c10::Device(c10::kCUDA, graph->device));
    graph->graph->replay();
  });
}

// Frees the executable graph and releases its private pool; the object cannot capture again
// (CUDAGraph's rule), the Rust side creates a new one.
char *pe_cuda_graph_reset(PeCudaGraph *graph) {
  return guarded([&] {
    TORCH_CHECK(graph != nullptr, "pe-torch: null CUDA graph handle");
    c10::DeviceGuard device_guard(c10::Device(c10::kCUDA, graph->device));
    graph->graph->reset();
  });
}

}  // extern "C"

#endif  // PE_TORCH_NO_CUDA
