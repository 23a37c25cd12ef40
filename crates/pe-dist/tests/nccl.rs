//! The NCCL backend on this machine's GPUs (one rank per GPU, at most 2; one GPU gives a world of
//! 1, which still runs NCCL's communicator, the collectives and the Reducer on CUDA).
//!
//! Run on a CUDA machine with: `cargo test -p pe-dist --test nccl -- --ignored`
mod common;

use pe_dist::{Backend, ProcessGroup, ReduceOp, Reducer, ReducerOptions};
use std::time::Duration;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| f64::try_from((a.grad() - b.grad()).abs().max()).unwrap())
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "needs CUDA"]
fn nccl_collectives_and_reducer() {
    let Some(env) = common::worker() else {
        let gpus = tch::Cuda::device_count() as usize;
        assert!(gpus > 0, "no CUDA device");
        common::launch_ranks("nccl_collectives_and_reducer", gpus.min(2));
        return;
    };
    let pg = ProcessGroup::new(&env, Backend::Nccl, Duration::from_secs(60)).unwrap();
    let device = pg.device();
    assert_eq!(device, Device::Cuda(env.local_rank));
    let world = env.world_size as i64;

    let t = Tensor::from_slice(&[env.rank as f32 + 1.0, 1.0]).to_device(device);
    pg.all_reduce_(&[t.shallow_clone()], ReduceOp::Sum).unwrap();
    let want = [(world * (world + 1) / 2) as f32, world as f32];
    assert_eq!(Vec::<f32>::try_from(t.to_device(Device::Cpu)).unwrap(), want);
    let b = Tensor::from_slice(&[env.rank as i64 + 5]).to_device(device);
    pg.broadcast_coalesced_(&[b.shallow_clone()], 0).unwrap();
    assert_eq!(i64::try_from(b.to_device(Device::Cpu)).unwrap(), 5);
    pg.barrier().unwrap();
    pg.check_same("a constant", 42).unwrap();

    // Each rank's slice through the Reducer vs one model on the whole batch.
    let build = |seed: i64| {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let net = nn::seq()
            .add(nn::conv2d(vs.root() / "conv", 3, 4, 3, Default::default()))
            .add_fn(|x| x.relu().flatten(1, -1))
            .add(nn::linear(vs.root() / "fc", 4 * 6 * 6, 10, Default::default()));
        (vs, net)
    };
    let (vs, net) = build(7 + env.rank as i64);
    let (ref_vs, ref_net) = build(7);
    pg.broadcast_coalesced_(&vs.trainable_variables(), 0).unwrap();
    let mut reducer = Reducer::new(&pg, &vs.trainable_variables(), &ReducerOptions::default()).unwrap();
    let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let mut ref_opt = nn::Sgd::default().build(&ref_vs, 0.1).unwrap();
    let per_rank = 4;
    for step in 0..3 {
        tch::manual_seed(100 + step);
        let x = Tensor::randn([per_rank * world, 3, 8, 8], (Kind::Float, device));
        let y = Tensor::randint(10, [per_rank * world], (Kind::Int64, device));
        opt.zero_grad();
        ref_opt.zero_grad();
        reducer.prepare_for_forward().unwrap();
        let mine = |t: &Tensor| t.narrow(0, env.rank as i64 * per_rank, per_rank);
        let loss = net.forward(&mine(&x)).cross_entropy_for_logits(&mine(&y));
        reducer.prepare_for_backward(&[]).unwrap();
        loss.f_backward().unwrap();
        ref_net.forward(&x).cross_entropy_for_logits(&y).backward();
        let diff = max_diff(&vs.trainable_variables(), &ref_vs.trainable_variables());
        assert!(diff < 1e-5, "step {step}: gradients differ by {diff}");
        opt.step();
        ref_opt.step();
    }
}
