//! The device a run asks for (`train.device`, `pe bench --device`): a typed value, so a bad one is a
//! configuration error naming its key and line, and resolved against this machine once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

/// `"auto"` (CUDA when libtorch sees a GPU), `"cpu"`, `"cuda"` (GPU 0) or `"cuda:N"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => {
                other.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(|| {
                    format!("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {other:?}")
                })
            }
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(choice: DeviceChoice) -> String {
        choice.to_string()
    }
}

impl DeviceChoice {
    /// The libtorch device on this machine; a GPU it does not have is an error.
    pub fn resolve(self) -> anyhow::Result<Device> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(index) => {
                let count = tch::Cuda::device_count();
                anyhow::ensure!(
                    (index as i64) < count,
                    "train.device = \"{self}\" but libtorch sees {count} CUDA device(s) (see `pe info`)"
                );
                Ok(Device::Cuda(index))
            }
        }
    }
}
