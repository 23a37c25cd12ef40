//! The image pipeline: datasets, decoding, augmentation and batching. Knows nothing of models.
pub mod decode;
pub mod error;
pub mod rng;

pub use error::{Error, Result};
