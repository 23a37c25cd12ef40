//! A one-machine torchrun: spawns N ranks of a program with torchrun's environment, forwards
//! stop signals (Ctrl-C, SIGTERM, SIGUSR1) to them, and when one fails terminates the others and
//! reports which rank failed.
use std::ffi::{OsStr, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ffi, Error, Result};

/// How long ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// The exit code of a rank that refused its configuration (`pe`'s convention: nothing started).
const INVALID_CONFIGURATION: i32 = 2;
/// Timeout of the launcher's own store operations (ranks use their own process-group timeout).
const STORE_TIMEOUT_MS: i64 = 30 * 60 * 1000;

/// Signals forwarded to the ranks: what a terminal (Ctrl-C), SLURM, Kubernetes or torchrun's agent
/// (SIGTERM) and SLURM's `--signal` (SIGUSR1) send to stop a job.
const FORWARDED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1];

/// Pids of running ranks of every launch in this process, to which stop signals are forwarded.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The first stop signal this process forwarded (0 = none).
static FIRST_FORWARDED: AtomicI32 = AtomicI32::new(0);
static FORWARDING: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// How a launch ended when no rank failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every rank exited 0.
    Finished,
    /// A stop signal was forwarded and the ranks stopped as asked (exit 128 + a stop signal, or 0):
    /// exit with `code`, 128 + the first signal forwarded (130 for Ctrl-C, 143 for SIGTERM).
    Stopped { code: u8 },
}

/// What to launch: `nproc` copies of `program args...`, ranks 0..nproc on this machine.
#[derive(Debug, Clone)]
pub struct Launch {
    nproc: usize,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

/// Runs `nproc` ranks of `program args...` (see [`Launch::run`]).
pub fn launch(nproc: usize, program: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>]) -> Result<Ended> {
    Launch::new(nproc, program).args(args).run()
}

impl Launch {
    pub fn new(nproc: usize, program: impl AsRef<OsStr>) -> Self {
        Self { nproc, program: program.as_ref().to_owned(), args: Vec::new(), envs: Vec::new() }
    }

    pub fn args(mut self, args: &[impl AsRef<OsStr>]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An extra environment variable for every rank.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Hosts the rendezvous store on a free loopback port (torchrun's agent store, so no port can
    /// be taken between choosing and binding it), starts the ranks with `RANK`, `LOCAL_RANK`,
    /// `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
    /// `TORCHELASTIC_USE_AGENT_STORE=True` and, unless set, `OMP_NUM_THREADS` = cores / nproc, and
    /// waits for all of them. Every SIGINT, SIGTERM and SIGUSR1 the launcher gets is forwarded to
    /// every rank (they run in their own process group, so the terminal's Ctrl-C reaches only the
    /// launcher); ranks that then stop as asked end the launch with [`Ended::Stopped`]. When a rank
    /// fails, the others get SIGTERM (SIGKILL after 5 s) and the error names the first failed rank.
    pub fn run(&self) -> Result<Ended> {
        if self.nproc == 0 {
            return Err(Error::NoRanks);
        }
        forward_stop_signals()?;
        let host = c"127.0.0.1";
        let (_store, port) = ffi::tcp_store(host, 0, true, -1, STORE_TIMEOUT_MS)
            .map_err(|m| Error::c10d("launch: hosting the rendezvous TCPStore on 127.0.0.1", m))?;
        let threads = self.omp_threads();
        let mut ranks = Ranks(Vec::with_capacity(self.nproc));
        for rank in 0..self.nproc {
            let mut command = Command::new(&self.program);
            command
                .args(&self.args)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", self.nproc.to_string())
                .env("LOCAL_WORLD_SIZE", self.nproc.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("TORCHELASTIC_USE_AGENT_STORE", "True")
                .envs(threads.iter().map(|t| ("OMP_NUM_THREADS", t)))
                .envs(self.envs.iter().map(|(k, v)| (k, v)))
                .process_group(0);
            ffi::terminate_with_parent(&mut command);
            let child = command.spawn().map_err(|error| Error::StartRank {
                rank,
                program: self.program.clone().into(),
                error,
            })?;
            ranks.push(child);
        }
        ranks.wait()
    }

    /// `OMP_NUM_THREADS` for the ranks unless the caller's environment sets it: the cores shared out.
    fn omp_threads(&self) -> Option<String> {
        let set = std::env::var_os("OMP_NUM_THREADS").is_some()
            || self.envs.iter().any(|(k, _)| k == "OMP_NUM_THREADS");
        let cores = thread::available_parallelism().map_or(1, usize::from);
        (!set).then(|| (cores / self.nproc).max(1).to_string())
    }
}

/// The running ranks; any still running when this is dropped (an early return) are killed.
struct Ranks(Vec<Option<Child>>);

impl Ranks {
    fn push(&mut self, child: Child) {
        lock_running().push(child.id());
        self.0.push(Some(child));
    }

    /// Waits for all ranks; on the first failure, terminates the rest and returns it.
    fn wait(&mut self) -> Result<Ended> {
        loop {
            let mut running = 0;
            for rank in 0..self.0.len() {
                let Some(status) = self.poll(rank)? else {
                    running += usize::from(self.0[rank].is_some());
                    continue;
                };
                if !status.success() && !stopped_as_asked(status) {
                    let pid = self.0[rank].as_ref().map_or(0, Child::id);
                    self.reap(rank);
                    if status.code() == Some(INVALID_CONFIGURATION) {
                        // Every rank read the same recipe and refuses it too; only rank 0 says
                        // why, so it must not be terminated before it has.
                        self.let_exit(GRACE);
                    }
                    self.terminate_all();
                    return Err(Error::RankFailed { rank, pid, status });
                }
                self.reap(rank);
            }
            if running == 0 {
                return Ok(match FIRST_FORWARDED.load(Ordering::SeqCst) {
                    0 => Ended::Finished,
                    signal => Ended::Stopped { code: 128 + signal as u8 },
                });
            }
            thread::sleep(POLL);
        }
    }

    /// The exit status of `rank` if it has just exited.
    fn poll(&mut self, rank: usize) -> Result<Option<ExitStatus>> {
        match self.0[rank].as_mut() {
            Some(child) => child.try_wait().map_err(|error| Error::WaitRank { rank, error }),
            None => Ok(None),
        }
    }

    /// Forgets an exited rank, so its pid is never signalled again.
    fn reap(&mut self, rank: usize) {
        if let Some(child) = self.0[rank].take() {
            lock_running().retain(|&pid| pid != child.id());
        }
    }

    /// SIGTERM to every running rank, SIGKILL to those still running after the grace period.
    fn terminate_all(&mut self) {
        for child in self.0.iter().flatten() {
            ffi::send_signal(child.id(), libc::SIGTERM);
        }
        self.let_exit(GRACE);
        self.kill_all();
    }

    /// Waits up to `limit` for every rank to exit by itself.
    fn let_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline
            && self.0.iter_mut().flatten().any(|c| matches!(c.try_wait(), Ok(None)))
        {
            thread::sleep(POLL);
        }
    }

    fn kill_all(&mut self) {
        for rank in 0..self.0.len() {
            if let Some(child) = self.0[rank].as_mut() {
                // Errors mean it already exited; wait() reaps it either way.
                let _ = child.kill();
                let _ = child.wait();
            }
            self.reap(rank);
        }
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn lock_running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    // A panic while holding the lock leaves a valid Vec; keep using it.
    RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a rank's non-zero `status` is its answer to a forwarded stop signal: 128 + the signal
/// (it saved and stopped), or killed by it (it had not installed its handlers yet).
fn stopped_as_asked(status: ExitStatus) -> bool {
    if FIRST_FORWARDED.load(Ordering::SeqCst) == 0 {
        return false;
    }
    let by_signal = status.code().map_or(status.signal(), |code| code.checked_sub(128));
    by_signal.is_some_and(|signal| FORWARDED.contains(&signal))
}

/// Starts (once per process) the thread that forwards every stop signal to every running rank.
fn forward_stop_signals() -> Result<()> {
    FORWARDING
        .get_or_init(|| {
            let mut signals = signal_hook::iterator::Signals::new(FORWARDED).map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("pe-launch-signals".into())
                .spawn(move || {
                    for signal in signals.forever() {
                        let _ =
                            FIRST_FORWARDED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
                        for &pid in lock_running().iter() {
                            ffi::send_signal(pid, signal);
                        }
                    }
                })
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Signals)
}
