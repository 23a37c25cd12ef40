//! Failures must surface as clear errors within the timeout, never as hangs: a killed peer, a
//! missing rank, a busy store port, and a failing rank under the launcher.
mod common;

use pe_dist::{Backend, DistEnv, Error, Launch, ProcessGroup, ReduceOp, Reducer, ReducerOptions};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const TIMEOUT: Duration = Duration::from_secs(3);

fn env(rank: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        world_size: 2,
        local_rank: rank,
        local_world_size: 2,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        use_agent_store: false,
    }
}

/// Runs `f`, returning its result and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[test]
fn killed_peer_makes_the_survivor_fail_within_the_timeout() {
    let Some(env) = common::worker() else {
        let children = common::spawn_ranks(
            "killed_peer_makes_the_survivor_fail_within_the_timeout",
            &[0, 1],
            2,
            common::free_port(),
        );
        let mut outputs = children.into_iter().map(|c| common::wait_within(c, Duration::from_secs(60)));
        let ((survivor, took), (killed, _)) = (outputs.next().unwrap(), outputs.next().unwrap());
        let log = common::text(&survivor.stdout) + &common::text(&survivor.stderr);
        let killed_log = common::text(&killed.stdout) + &common::text(&killed.stderr);
        assert_eq!(killed.status.signal(), Some(libc::SIGKILL), "rank 1 was not killed:\n{killed_log}");
        assert!(survivor.status.success(), "rank 0 did not report the failure as expected:\n{log}");
        assert!(took < Duration::from_secs(30), "rank 0 took {took:?}");
        return;
    };
    let pg = ProcessGroup::new(&env, Backend::Gloo, TIMEOUT).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = nn::linear(vs.root(), 4, 2, Default::default());
    let mut reducer = Reducer::new(&pg, &vs.trainable_variables(), &ReducerOptions::default()).unwrap();
    let step = |reducer: &mut Reducer| -> pe_dist::Result<()> {
        reducer.prepare_for_forward()?;
        let loss = model.forward(&Tensor::ones([3, 4], (Kind::Float, Device::Cpu))).sum(Kind::Float);
        reducer.prepare_for_backward(&[])?;
        Ok(loss.f_backward()?)
    };
    // Two good steps: the buckets are rebuilt at the second, so the failing one is a plain step.
    step(&mut reducer).unwrap();
    step(&mut reducer).unwrap();
    if env.rank == 1 {
        let pid = std::process::id().to_string();
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        unreachable!("SIGKILL did not stop rank 1");
    }
    // The survivor's next training step and collective fail (not hang), naming what failed.
    let (result, took) = timed(|| step(&mut reducer));
    let err = result.expect_err("a training step with a dead peer succeeded");
    println!("step error after {took:?}: {err}");
    assert!(took < TIMEOUT + Duration::from_secs(2), "the step took {took:?}");
    let (result, took) =
        timed(|| pg.all_reduce_(&[Tensor::ones([4], (Kind::Float, Device::Cpu))], ReduceOp::Sum));
    let err = result.expect_err("an all-reduce with a dead peer succeeded").to_string();
    println!("all_reduce error after {took:?}: {err}");
    assert!(err.contains("rank 0/2: all_reduce(Sum)"), "{err}");
    assert!(took < TIMEOUT + Duration::from_secs(2), "the all-reduce took {took:?}");
}

#[test]
fn a_missing_rank_times_out_naming_the_store() {
    // Rank 0 waits for rank 1 to join its store; rank 1 finds no store to connect to. Both give up
    // after about the timeout (the client used to take 2-3 timeouts: c10d's own retries). The
    // ports differ, or rank 1 could find rank 0's store.
    let timeout = Duration::from_secs(1);
    let ports = common::free_ports::<2>();
    let alone = |rank: usize| {
        std::thread::spawn(move || {
            let port = ports[rank];
            let (result, took) = timed(|| ProcessGroup::new(&env(rank, port), Backend::Gloo, timeout));
            let err = result.expect_err("a group without its peer was created").to_string();
            println!("rank {rank} alone, after {took:?}: {err}");
            let role = if rank == 0 { "hosting" } else { "connecting to" };
            let want = format!("rank {rank}/2: {role} the TCPStore at 127.0.0.1:{port} (timeout 1s)");
            assert!(err.starts_with(&want), "{err}");
            // The store's server counts its wait in whole seconds: up to one more than asked.
            assert!(took >= timeout && took < timeout + Duration::from_millis(1500), "took {took:?}");
        })
    };
    for rank in [alone(0), alone(1)] {
        rank.join().unwrap();
    }
}

#[test]
fn a_busy_port_is_reported_at_once() {
    let busy = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (result, took) = timed(|| ProcessGroup::new(&env(0, port), Backend::Gloo, TIMEOUT));
    let err = result.expect_err("a store on a busy port was created").to_string();
    println!("busy port, after {took:?}: {err}");
    assert!(err.contains(&format!("TCPStore at 127.0.0.1:{port}")), "{err}");
    assert!(err.contains("EADDRINUSE") || err.contains("address already in use"), "{err}");
    assert!(took < TIMEOUT, "took {took:?}");
}

#[test]
fn launch_reports_the_failed_rank_and_stops_the_others() {
    if let Some(env) = common::worker() {
        if env.rank == 1 {
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_secs(60));
        unreachable!("rank 0 was not terminated");
    }
    let exe = std::env::current_exe().unwrap();
    let args = ["launch_reports_the_failed_rank_and_stops_the_others", "--exact", "--nocapture"];
    let (result, took) = timed(|| Launch::new(2, exe).args(&args).env(common::WORKER_VAR, "1").run());
    match result {
        Err(Error::RankFailed { rank, status, .. }) => {
            assert_eq!((rank, status.code()), (1, Some(3)));
        }
        other => panic!("expected rank 1 to fail, got {other:?}"),
    }
    let err = pe_dist::launch(0, "true", &[] as &[&str]).unwrap_err().to_string();
    assert!(err.contains("--nproc must be at least 1"), "{err}");
    assert!(took < Duration::from_secs(30), "the launcher took {took:?} to stop rank 0");
}
