//! Evaluation the way papers report it: per-class metrics and the confusion matrix, per-image
//! predictions, robustness and relabelled sets in their official formats, and the figures.

pub mod figure;
pub mod labels;
pub mod per_class;
pub mod predictions;
pub mod report;
pub mod tally;

/// Classes a confusion figure shows at most (see [`figure`]): enough for the confused groups of
/// ImageNet, few enough to read every label.
pub const FIGURE_CLASSES: usize = 40;
/// Pixels per cell of the TensorBoard confusion image.
pub const RASTER_CELL: usize = 12;
