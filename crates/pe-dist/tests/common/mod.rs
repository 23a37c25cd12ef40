//! Multi-process test harness: a test re-runs its own test binary as the ranks (a child process
//! runs just that test, which sees `PE_DIST_TEST_WORKER` and plays its rank).
#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pe_dist::{DistEnv, Launch};

pub const WORKER_VAR: &str = "PE_DIST_TEST_WORKER";

/// This process's rank environment when it is a worker started by [`launch_ranks`] or [`spawn_ranks`].
pub fn worker() -> Option<DistEnv> {
    std::env::var_os(WORKER_VAR)?;
    // Two ranks share two cores.
    tch::set_num_threads(1);
    Some(DistEnv::from_env().expect("worker environment").expect("worker without RANK/WORLD_SIZE"))
}

fn test_args(test: &str) -> [&str; 4] {
    [test, "--exact", "--nocapture", "--test-threads=1"]
}

/// Runs `test` as `nproc` ranks through the crate's own launcher; panics if a rank fails.
pub fn launch_ranks(test: &str, nproc: usize) {
    let exe = std::env::current_exe().expect("test binary path");
    match Launch::new(nproc, exe).args(&test_args(test)).env(WORKER_VAR, "1").run() {
        Ok(pe_dist::Ended::Finished) => {}
        Ok(stopped) => panic!("the ranks were stopped: {stopped:?}"),
        Err(e) => panic!("{e} (its panic message is printed above)"),
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct loopback ports nobody listens on right now: all are held at once while chosen,
/// since the kernel may hand a just-released port out again (two `free_port` calls can agree).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("free port"));
    held.map(|l| l.local_addr().expect("free port").port())
}

/// Starts `ranks` of a `world`-sized group running `test`, rank 0 hosting the store on `port`
/// (no agent store), with their output captured.
pub fn spawn_ranks(test: &str, ranks: &[usize], world: usize, port: u16) -> Vec<Child> {
    let exe = std::env::current_exe().expect("test binary path");
    ranks
        .iter()
        .map(|rank| {
            Command::new(&exe)
                .args(test_args(test))
                .env(WORKER_VAR, "1")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning a rank")
        })
        .collect()
}

/// Waits for `child`, killing it after `limit` (so a hang fails the test instead of blocking it).
pub fn wait_within(mut child: Child, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    (child.wait_with_output().expect("collecting a rank's output"), start.elapsed())
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
