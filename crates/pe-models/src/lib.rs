//! Models built from `pe-layers`: torchvision ResNets, timm DeiT/ViT, and their PE variants;
//! a registry of named presets; parameter/MAC accounting; PyTorch-compatible weight files.

pub mod accounting;
pub mod convert;
pub mod error;
pub mod init;
pub mod model;
pub mod pretrained;
pub mod registry;
pub mod resnet;
pub mod vit;
pub mod weights;

pub use accounting::{Cost, CostSheet};
pub use error::Error;
pub use model::{Model, ModelConfig};
pub use registry::{preset, presets, Preset};
pub use resnet::{ResNet, ResNetConfig};
pub use vit::{Heads, Vit, VitConfig};
