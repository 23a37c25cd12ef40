//! The image pipeline: datasets, decoding, augmentation and batching. Knows nothing of models.
//!
//! Data flow: [`index::ImageFolder`] lists `(path, class)` pairs once (cached), [`sampler`] orders an
//! epoch for one rank, [`loader::Loader`] decodes and augments samples on a rayon pool with
//! [`transforms::Transform`] into uint8 NCHW [`loader::Batch`]es, and [`mixup::Mixup`] mixes a batch
//! and produces soft targets. [`fashion_mnist::prepare`] turns Debian's IDX files into an ImageFolder,
//! [`imagenet::prepare`] the ImageNet archives, and [`shards`] packs an ImageFolder into tar shards
//! that the loader streams instead, as it streams WebDataset shards from anywhere ([`wds`]); [`source`]
//! is what a loader reads from.
pub mod atomic_file;
pub mod config;
pub mod decode;
pub mod error;
pub mod fashion_mnist;
pub mod imagenet;
pub mod index;
pub mod loader;
pub mod mixup;
pub mod rng;
pub mod sampler;
pub mod shards;
pub mod source;
pub mod transforms;
pub mod wds;

pub use config::{DataConfig, DataFormat};
pub use error::{Error, Result};
pub use imagenet::{read_class_names, CLASS_NAMES_FILE};
pub use index::{ImageFolder, IndexCache};
pub use loader::{BadFile, BadFileReport, Batch, Loader, LoaderOptions, Split};
pub use mixup::{MixPlan, Mixup};
pub use transforms::Transform;
