//! A training run's internals: the epoch loop, the step engine (and its CUDA-graph form), the data
//! that reaches the device, the run folder with its checkpoints and identity, the observers that
//! report, and the distributed context. The subcommands in [`crate::cmd`] drive them.

pub mod amp;
pub mod batch;
pub mod checkpoint;
pub mod dist;
pub mod ema;
pub mod epoch_loop;
pub mod evaluate;
pub mod grad_norm;
pub mod graphed_step;
pub mod init_weights;
pub mod loss;
pub mod metrics;
pub mod observers;
pub mod optimizer;
pub mod param_groups;
pub mod run_folder;
pub mod run_identity;
pub mod schedule;
pub mod step_engine;
pub mod stop;
pub mod teacher;
pub mod tensorboard;
pub mod trained;
pub mod weight_average;
