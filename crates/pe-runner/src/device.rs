//! Choosing the training device from the `train.device` string.

use tch::Device;

/// Parses "auto", "cpu", "cuda" or "cuda:N"; "auto" is CUDA when libtorch sees a GPU.
pub fn parse(text: &str) -> Result<Device, String> {
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device {other:?}")),
    }
}

/// Parses and checks the device exists on this machine.
pub fn resolve(text: &str) -> anyhow::Result<Device> {
    let device = parse(text).map_err(anyhow::Error::msg)?;
    if let Device::Cuda(index) = device {
        let count = tch::Cuda::device_count();
        anyhow::ensure!(
            (index as i64) < count,
            "train.device = {text:?} but libtorch sees {count} CUDA device(s) (see `pe info`)"
        );
    }
    Ok(device)
}
