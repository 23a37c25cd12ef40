//! Gloo collectives between 2 processes on loopback: all-reduce, coalesced broadcast, barrier and
//! the cross-rank equality check, with values computed by hand.
mod common;

use pe_dist::{Backend, Error, ProcessGroup, ReduceOp};
use std::time::Duration;
use tch::{Kind, Tensor};

#[test]
fn all_reduce_broadcast_barrier_and_check_same() {
    let Some(env) = common::worker() else {
        common::launch_ranks("all_reduce_broadcast_barrier_and_check_same", 2);
        return;
    };
    assert!(env.use_agent_store, "launch hosts the store");
    let pg = ProcessGroup::new(&env, Backend::Gloo, Duration::from_secs(20)).unwrap();
    assert_eq!((pg.rank(), pg.world_size(), pg.device()), (env.rank, 2, tch::Device::Cpu));
    let r = env.rank as f64;

    // Rank 0 holds [1, 2, 3] and 10, rank 1 holds [2, 4, 6] and 20.
    let floats = || Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
    let ints = || Tensor::from_slice(&[10i64 * (env.rank as i64 + 1)]);
    let expect =
        |t: &Tensor, want: &[f64]| assert_eq!(Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap(), want);
    let (a, b) = (floats(), ints());
    pg.all_reduce_(&[a.shallow_clone(), b.shallow_clone()], ReduceOp::Sum).unwrap();
    expect(&a, &[3.0, 6.0, 9.0]);
    expect(&b, &[30.0]);
    let (a, b) = (floats(), ints());
    pg.all_reduce_(&[a.shallow_clone()], ReduceOp::Max).unwrap();
    pg.all_reduce_(&[b.shallow_clone()], ReduceOp::Min).unwrap();
    expect(&a, &[2.0, 4.0, 6.0]);
    expect(&b, &[10.0]);

    // Mixed dtypes and shapes, and a leaf that requires grad (as module parameters are).
    let w = (Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)) * (r + 5.0)).set_requires_grad(true);
    let buf = Tensor::from_slice(&[env.rank as i64 + 7, 8]);
    let half = Tensor::from_slice(&[r + 0.5]).to_kind(Kind::Half);
    pg.broadcast_coalesced_(&[w.shallow_clone(), buf.shallow_clone(), half.shallow_clone()], 0).unwrap();
    expect(&w.flatten(0, -1), &[5.0; 6]);
    expect(&buf, &[7.0, 8.0]);
    expect(&half, &[0.5]);
    assert!(w.requires_grad() && w.is_leaf(), "broadcast keeps parameters leaves");
    let from_rank_1 = Tensor::from_slice(&[env.rank as i64]);
    pg.broadcast_coalesced_(&[from_rank_1.shallow_clone()], 1).unwrap();
    expect(&from_rank_1, &[1.0]);
    assert!(matches!(pg.broadcast_coalesced_(&[from_rank_1], 2), Err(Error::Invalid(_))));

    pg.barrier().unwrap();
    pg.check_same("the config hash", 0xdead_beef_f00d_cafe).unwrap();
    match pg.check_same("the config hash", u64::MAX - env.rank as u64) {
        Err(Error::Mismatch { what, min, max }) => {
            assert_eq!((what.as_str(), min, max), ("the config hash", u64::MAX - 1, u64::MAX));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}
