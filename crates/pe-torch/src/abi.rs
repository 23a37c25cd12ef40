//! The integer codes the C++ shim shares with Rust, numbered as ATen numbers them; csrc/pe_torch.cpp
//! `static_assert`s every value against ATen's own enums, so a renumbering fails the build.

use tch::{Device, Kind};

/// `c10::ScalarType` of the dtypes this crate passes to or reads from the shim.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarType {
    Half = 5,
    Float = 6,
    Double = 7,
    BFloat16 = 15,
}

impl ScalarType {
    pub(crate) fn of_kind(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::Half => Self::Half,
            Kind::Float => Self::Float,
            Kind::Double => Self::Double,
            Kind::BFloat16 => Self::BFloat16,
            _ => return None,
        })
    }

    /// The value for a code the shim wrote (C integers are checked before becoming an enum).
    pub(crate) fn from_code(code: i32) -> Option<Self> {
        [Self::Half, Self::Float, Self::Double, Self::BFloat16].into_iter().find(|t| *t as i32 == code)
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Self::Half => Kind::Half,
            Self::Float => Kind::Float,
            Self::Double => Kind::Double,
            Self::BFloat16 => Kind::BFloat16,
        }
    }
}

/// `c10::DeviceType` of the devices the shim serves.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceType {
    Cpu = 0,
    Cuda = 1,
}

impl DeviceType {
    pub(crate) fn of_device(device: Device) -> Option<Self> {
        match device {
            Device::Cpu => Some(Self::Cpu),
            Device::Cuda(_) => Some(Self::Cuda),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for kind in [Kind::Half, Kind::Float, Kind::Double, Kind::BFloat16] {
            let t = ScalarType::of_kind(kind).unwrap();
            assert_eq!(ScalarType::from_code(t as i32), Some(t));
            assert_eq!(t.kind(), kind);
        }
        assert_eq!(ScalarType::of_kind(Kind::Int), None);
        assert_eq!(ScalarType::from_code(0), None);
    }
}
