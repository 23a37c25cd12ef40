//! The image pipeline: datasets, decoding, augmentation and batching. Knows nothing of models.
