//! CUDA utilities: consistent with tch on any machine; clear errors without CUDA.
use pe_torch::cuda;
use tch::{Device, Kind, Tensor};

#[test]
fn device_count_agrees_with_tch() {
    assert_eq!(cuda::device_count().unwrap() as i64, tch::Cuda::device_count());
    assert_eq!(cuda::is_available(), tch::Cuda::device_count() > 0);
    cuda::synchronize_device(Device::Cpu).unwrap();
}

#[test]
fn without_cuda_every_call_is_a_clear_error() {
    if cuda::is_available() {
        return;
    }
    let errors = [
        cuda::set_device(0).err(),
        cuda::current_device().err(),
        cuda::max_memory_allocated(0).err(),
        cuda::reset_peak_memory_stats(0).err(),
        cuda::empty_cache().err(),
        cuda::synchronize(0).err(),
    ];
    for e in errors {
        let msg = e.expect("must fail without CUDA").to_string();
        assert!(msg.contains("CUDA is not available"), "{msg}");
    }
}

/// Run on a GPU machine: `cargo test -p pe-torch --test cuda -- --ignored`.
#[test]
#[ignore = "needs CUDA"]
fn with_cuda_peak_memory_tracks_an_allocation() {
    assert!(cuda::is_available(), "this test needs a CUDA device");
    cuda::set_device(0).unwrap();
    assert_eq!(cuda::current_device().unwrap(), 0);
    assert!(cuda::set_device(cuda::device_count().unwrap()).is_err());
    cuda::synchronize(0).unwrap();
    cuda::empty_cache().unwrap();
    cuda::reset_peak_memory_stats(0).unwrap();
    let base = cuda::memory_allocated(0).unwrap();
    let t = Tensor::zeros([64, 1024, 1024], (Kind::Float, Device::Cuda(0))); // 256 MiB
    cuda::synchronize(0).unwrap();
    let peak = cuda::max_memory_allocated(0).unwrap();
    assert!(peak >= base + 256 * 1024 * 1024, "peak {peak} base {base}");
    drop(t);
    cuda::empty_cache().unwrap();
    cuda::reset_peak_memory_stats(0).unwrap();
    assert!(cuda::max_memory_allocated(0).unwrap() < peak);
}
