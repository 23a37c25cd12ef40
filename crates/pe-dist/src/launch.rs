//! A one-machine torchrun: spawns N ranks of a program with torchrun's environment, forwards
//! Ctrl-C to them, and when one fails terminates the others and reports which rank failed.
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ffi, Error, Result};

/// How long ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// Timeout of the launcher's own store operations (ranks use their own process-group timeout).
const STORE_TIMEOUT_MS: i64 = 30 * 60 * 1000;

/// Pids of running ranks of every launch in this process, to which Ctrl-C is forwarded.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static CTRL_C: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// What to launch: `nproc` copies of `program args...`, ranks 0..nproc on this machine.
#[derive(Debug, Clone)]
pub struct Launch {
    nproc: usize,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

/// Runs `nproc` ranks of `program args...` (see [`Launch::run`]).
pub fn launch(nproc: usize, program: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>]) -> Result<()> {
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
    /// waits for all of them. Ctrl-C is forwarded once to every rank (they run in their own process
    /// group, so the terminal's SIGINT reaches only the launcher). When a rank exits non-zero the
    /// others get SIGTERM (SIGKILL after 5 s) and the error names the first failed rank.
    pub fn run(&self) -> Result<()> {
        if self.nproc == 0 {
            return Err(Error::Launch("--nproc must be at least 1".into()));
        }
        install_ctrl_c()?;
        let host = CString::new("127.0.0.1").map_err(|e| Error::Launch(e.to_string()))?;
        let (_store, port) = ffi::tcp_store(&host, 0, true, -1, STORE_TIMEOUT_MS)
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
            let child = command.spawn().map_err(|e| {
                Error::Launch(format!("starting rank {rank}: {}: {e}", self.program.to_string_lossy()))
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
    fn wait(&mut self) -> Result<()> {
        loop {
            let mut running = 0;
            for rank in 0..self.0.len() {
                let Some(status) = self.poll(rank)? else {
                    running += usize::from(self.0[rank].is_some());
                    continue;
                };
                if !status.success() {
                    let pid = self.0[rank].as_ref().map_or(0, Child::id);
                    self.reap(rank);
                    self.terminate_all();
                    return Err(Error::RankFailed { rank, pid, status });
                }
                self.reap(rank);
            }
            if running == 0 {
                return Ok(());
            }
            thread::sleep(POLL);
        }
    }

    /// The exit status of `rank` if it has just exited.
    fn poll(&mut self, rank: usize) -> Result<Option<std::process::ExitStatus>> {
        match self.0[rank].as_mut() {
            Some(child) => {
                child.try_wait().map_err(|e| Error::Launch(format!("waiting for rank {rank}: {e}")))
            }
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
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline
            && self.0.iter_mut().flatten().any(|c| matches!(c.try_wait(), Ok(None)))
        {
            thread::sleep(POLL);
        }
        self.kill_all();
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

/// Installs (once per process) the Ctrl-C handler that forwards SIGINT to every running rank.
fn install_ctrl_c() -> Result<()> {
    CTRL_C
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                for &pid in lock_running().iter() {
                    ffi::send_signal(pid, libc::SIGINT);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::Launch(format!("installing the Ctrl-C handler: {e}")))
}
