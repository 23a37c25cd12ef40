//! Stop requests from outside the process: Ctrl-C (SIGINT), SIGTERM (what SLURM, Kubernetes and
//! torchrun's agent send to stop a job) and SIGUSR1 (SLURM's `--signal=USR1@SECONDS`, sent ahead
//! of the time limit). Each asks the run to finish its step, save a checkpoint and exit with
//! 128 + the signal's number (130, 143, 138).
//!
//! A Ctrl-C while a stop is already under way ends the process at once. That exit happens inside
//! the signal handler with `_exit`, which runs no destructors: a normal `exit` would tear down
//! libtorch's statics while the training thread is still inside a backward pass, and segfault.
//! A repeated SIGTERM or SIGUSR1 only repeats the request: under SLURM a rank can get SIGTERM both
//! from the job step and forwarded by `pe launch`, and must not lose its checkpoint to that.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The signals that ask a run to stop.
const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGUSR1];

/// Whether (and by which signal) the run was asked to stop. Cloning shares the request.
#[derive(Clone, Default)]
pub struct StopRequest {
    /// Set inside the signal handler, so the loop sees it at its next check.
    requested: Arc<AtomicBool>,
    /// The first stop signal received (0 = none yet); it decides the exit code.
    first: Arc<AtomicI32>,
}

impl StopRequest {
    /// Installs the handlers for this process (call once); a second Ctrl-C then exits 130 at once.
    pub fn install() -> Result<Self> {
        let request = Self::default();
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&request.requested))
            .context("installing the Ctrl-C handler")?;
        for signal in STOP_SIGNALS {
            signal_hook::flag::register(signal, Arc::clone(&request.requested))
                .with_context(|| format!("installing the {} handler", name(signal)))?;
        }
        // The handler itself may only set flags; a thread says what the signal does.
        let mut signals =
            signal_hook::iterator::Signals::new(STOP_SIGNALS).context("watching for stop signals")?;
        let first = Arc::clone(&request.first);
        std::thread::Builder::new()
            .name("pe-stop-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    announce(
                        signal,
                        first.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok(),
                    );
                }
            })
            .context("starting the signal thread")?;
        Ok(request)
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// 128 + the first stop signal's number, the shell's convention for "ended by that signal".
    pub fn exit_code(&self) -> u8 {
        let signal = match self.first.load(Ordering::SeqCst) {
            0 => SIGINT,
            signal => signal,
        };
        128 + signal as u8
    }
}

fn announce(signal: i32, first: bool) {
    let code = 128 + signal;
    if first {
        eprintln!(
            "\n{}: saving a checkpoint after this step, then exiting {code} (Ctrl-C again to abort)",
            name(signal)
        );
    } else if signal != SIGINT {
        eprintln!("{}: already stopping after this step", name(signal));
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "interrupt (SIGINT)",
        SIGTERM => "SIGTERM",
        SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}
