//! The `pe` runner as a library: experiment configs, the training loop and the subcommands,
//! so integration tests can drive the same code the binary runs.

pub mod amp;
pub mod analyze_cmd;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod dist;
pub mod ema;
pub mod eval_cmd;
pub mod evaluate;
pub mod forward;
pub mod grad_norm;
pub mod graphed_step;
pub mod info;
pub mod launch_cmd;
pub mod loss;
pub mod metrics;
pub mod observers;
pub mod optimizer;
pub mod param_groups;
pub mod prepare;
pub mod run_folder;
pub mod run_identity;
pub mod schedule;
pub mod step_engine;
pub mod stop;
pub mod summary;
pub mod tensorboard;
pub mod train;
