//! Stop signals under the launcher: it survives Ctrl-C and SIGTERM, forwards exactly one of each to
//! every rank, and exits as the ranks did (128 + the signal) when they stop as asked.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

const TEST: &str = "stop_signals_reach_every_rank_once_and_the_launcher_exits_as_they_did";
/// Set in the process that plays the launcher (so a signal to it does not hit the test harness).
const LAUNCHER_VAR: &str = "PE_DIST_TEST_LAUNCHER";
/// The signal a run of the test sends.
const SIGNAL_VAR: &str = "PE_DIST_TEST_SIGNAL";

#[test]
fn stop_signals_reach_every_rank_once_and_the_launcher_exits_as_they_did() {
    if common::worker().is_some() {
        let signal: i32 = std::env::var(SIGNAL_VAR).unwrap().parse().unwrap();
        let mut signals = signal_hook::iterator::Signals::new([signal]).unwrap();
        println!("ready");
        let (start, mut count) = (Instant::now(), 0);
        while count == 0 && start.elapsed() < Duration::from_secs(30) {
            count += signals.pending().count();
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(300)); // room for a second, unwanted signal
        count += signals.pending().count();
        // A rank that stopped as asked exits 128 + the signal, as `pe train` does.
        std::process::exit(if count == 1 { 128 + signal } else { 10 });
    }
    if std::env::var_os(LAUNCHER_VAR).is_some() {
        let exe = std::env::current_exe().unwrap();
        let args = [TEST, "--exact", "--nocapture", "--test-threads=1"];
        let code = match pe_dist::Launch::new(2, exe).args(&args).env(common::WORKER_VAR, "1").run() {
            Ok(pe_dist::Ended::Stopped { code }) => i32::from(code),
            Ok(pe_dist::Ended::Finished) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
        std::process::exit(code);
    }
    for (signal, name) in [(SIGINT, "-INT"), (SIGTERM, "-TERM")] {
        let mut launcher = Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(LAUNCHER_VAR, "1")
            .env(SIGNAL_VAR, signal.to_string())
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
                if line.contains("ready") {
                    let _ = tx.send(());
                }
            }
        });
        let ready = (0..2).filter(|_| rx.recv_timeout(Duration::from_secs(20)).is_ok()).count();
        assert_eq!(ready, 2, "both ranks started");
        let sent = Command::new("kill").args([name, &launcher.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "signalling the launcher");
        let (output, took) = common::wait_within(launcher, Duration::from_secs(20));
        assert_eq!(
            output.status.code(),
            Some(128 + signal),
            "launcher after kill {name}: {} (a rank saw no or two signals, or the launcher died)",
            output.status
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
}
