//! Ctrl-C under the launcher: the launcher survives it and forwards exactly one SIGINT to each rank.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const TEST: &str = "ctrl_c_reaches_every_rank_once";
/// Set in the process that plays the launcher (so a SIGINT to it does not hit the test harness).
const LAUNCHER_VAR: &str = "PE_DIST_TEST_LAUNCHER";

#[test]
fn ctrl_c_reaches_every_rank_once() {
    if let Some(env) = common::worker() {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        ctrlc::set_handler(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        println!("ready {}", env.rank);
        let start = Instant::now();
        while count.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(300)); // room for a second, unwanted SIGINT
        std::process::exit(if count.load(Ordering::SeqCst) == 1 { 0 } else { 10 });
    }
    if std::env::var_os(LAUNCHER_VAR).is_some() {
        common::launch_ranks(TEST, 2);
        return;
    }
    let mut launcher = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(LAUNCHER_VAR, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the ranks' output to the end on another thread (a closed pipe would fail them) and
    // signal once both are ready.
    let stdout = BufReader::new(launcher.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            // libtest may print "test NAME ... " before it on the same line.
            if line.contains("ready ") {
                let _ = tx.send(());
            }
        }
    });
    let ready = (0..2).filter(|_| rx.recv_timeout(Duration::from_secs(20)).is_ok()).count();
    assert_eq!(ready, 2, "both ranks started");
    assert!(pe_dist_test_kill(launcher.id()), "signalling the launcher");
    let (output, took) = common::wait_within(launcher, Duration::from_secs(20));
    assert!(
        output.status.success(),
        "launcher after Ctrl-C: {} (a rank saw no or two SIGINTs)",
        output.status
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// SIGINT to `pid`, as a terminal's Ctrl-C would deliver it to the launcher.
fn pe_dist_test_kill(pid: u32) -> bool {
    Command::new("kill").args(["-INT", &pid.to_string()]).status().is_ok_and(|s| s.success())
}
