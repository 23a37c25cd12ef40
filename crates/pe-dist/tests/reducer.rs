//! DDP through c10d's Reducer, 2 Gloo processes each on half of every batch, against one plain
//! (non-distributed) copy of the model on the whole batch computed in the same process.
mod common;

use pe_dist::{Backend, DistEnv, ProcessGroup, Reducer, ReducerOptions};
use pe_torch::memory_format::{convert_conv_weights_, is_channels_last};
use std::time::Duration;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 8;

/// conv (channels_last weights) -> relu -> linear -> relu -> linear; [B, 3, 8, 8] -> [B, 10].
struct Net {
    vs: nn::VarStore,
    body: nn::Sequential,
}

impl Net {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let body = nn::seq()
            .add(nn::conv2d(&p / "conv", 3, 8, 3, nn::ConvConfig { padding: 1, ..Default::default() }))
            .add_fn(|x| x.relu().flatten(1, -1))
            .add(nn::linear(&p / "fc1", 8 * 8 * 8, 32, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&p / "fc2", 32, 10, Default::default()));
        assert_eq!(convert_conv_weights_(&vs).unwrap(), 1);
        Self { vs, body }
    }

    fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
        self.body.forward(x).cross_entropy_for_logits(y)
    }

    fn params(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }
}

/// Batch `step`, identical on every rank: ([BATCH, 3, 8, 8], [BATCH]).
fn batch(step: i64) -> (Tensor, Tensor) {
    tch::manual_seed(1000 + step);
    (
        Tensor::randn([BATCH, 3, 8, 8], (Kind::Float, Device::Cpu)),
        Tensor::randint(10, [BATCH], (Kind::Int64, Device::Cpu)),
    )
}

/// This rank's half of a batch.
fn half(t: &Tensor, env: &DistEnv) -> Tensor {
    t.narrow(0, env.rank as i64 * BATCH / 2, BATCH / 2)
}

fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).map(|(a, b)| f64::try_from((a - b).abs().max()).unwrap()).fold(0.0, f64::max)
}

fn grads(params: &[Tensor]) -> Vec<Tensor> {
    params.iter().map(|p| p.grad().copy()).collect()
}

/// The DDP model and its plain twin, both starting from rank 0's initial parameters.
fn setup(env: &DistEnv, options: &ReducerOptions) -> (ProcessGroup, Net, Net, Reducer) {
    let pg = ProcessGroup::new(env, Backend::Gloo, Duration::from_secs(20)).unwrap();
    // Each rank initialises differently; the broadcast must make them all rank 0's.
    let ddp = Net::new(100 + env.rank as i64);
    let reference = Net::new(100);
    pg.broadcast_coalesced_(&ddp.params(), 0).unwrap();
    assert_eq!(max_diff(&ddp.params(), &reference.params()), 0.0, "broadcast gave rank 0's parameters");
    let reducer = Reducer::new(&pg, &ddp.params(), options).unwrap();
    (pg, ddp, reference, reducer)
}

#[test]
fn reducer_matches_one_process_on_the_full_batch() {
    let Some(env) = common::worker() else {
        common::launch_ranks("reducer_matches_one_process_on_the_full_batch", 2);
        return;
    };
    // Small buckets, so the model's 5 gradients are reduced in several buckets.
    let options =
        ReducerOptions { bucket_cap_bytes: 8 << 10, first_bucket_cap_bytes: 2 << 10, ..Default::default() };
    let (_pg, ddp, reference, mut reducer) = setup(&env, &options);
    assert!(reducer.bucket_count().unwrap() >= 2, "{} buckets", reducer.bucket_count().unwrap());
    let mut opt_ddp = nn::Sgd::default().build(&ddp.vs, 0.1).unwrap();
    let mut opt_ref = nn::Sgd::default().build(&reference.vs, 0.1).unwrap();
    for step in 0..3 {
        let (x, y) = batch(step);
        opt_ddp.zero_grad();
        opt_ref.zero_grad();
        // Buckets are rebuilt in gradient-arrival order once, before the second step's forward.
        assert_eq!(reducer.prepare_for_forward().unwrap(), step == 1, "step {step}");
        let loss = ddp.loss(&half(&x, &env), &half(&y, &env));
        reducer.prepare_for_backward(&[]).unwrap();
        loss.f_backward().unwrap();
        reference.loss(&x, &y).backward();
        let diff = max_diff(&grads(&ddp.params()), &grads(&reference.params()));
        assert!(diff < 1e-5, "step {step}: averaged gradients differ from the full batch's by {diff}");
        opt_ddp.step();
        opt_ref.step();
    }
    reducer.prepare_for_forward().unwrap(); // folds the last step's timings into DDP's averages
    let stats = reducer.comm_stats().unwrap().expect("DDP timed the synchronised steps");
    assert!(stats.all_reduce > Duration::ZERO && stats.backward_compute > Duration::ZERO, "{stats:?}");
    assert!((0.0..=1.0).contains(&stats.hidden_share()), "{stats:?}");
    println!("rank {}: {stats:?}, hidden share {:.2}", env.rank, stats.hidden_share());
    let conv_weight = &ddp.vs.variables()["conv.weight"];
    assert!(is_channels_last(&conv_weight.grad()).unwrap(), "reduced conv gradient keeps channels_last");
    assert!(max_diff(&ddp.params(), &reference.params()) < 1e-5, "the optimizer saw the reduced gradients");
}

#[test]
fn no_sync_micro_batches_accumulate_without_reduction() {
    let Some(env) = common::worker() else {
        common::launch_ranks("no_sync_micro_batches_accumulate_without_reduction", 2);
        return;
    };
    let (_pg, ddp, reference, mut reducer) = setup(&env, &ReducerOptions::default());
    let local = Net::new(100); // this rank alone, on its own halves
    let ((x0, y0), (x1, y1)) = (batch(0), batch(1));

    // Micro-batch 0: no prepare calls, so the hooks leave the gradients local.
    ddp.loss(&half(&x0, &env), &half(&y0, &env)).f_backward().unwrap();
    local.loss(&half(&x0, &env), &half(&y0, &env)).backward();
    let diff = max_diff(&grads(&ddp.params()), &grads(&local.params()));
    assert!(diff < 1e-6, "no_sync gradients were changed ({diff}) instead of left local");
    let full = Net::new(100);
    full.loss(&x0, &y0).backward();
    assert!(max_diff(&grads(&ddp.params()), &grads(&full.params())) > 1e-3, "halves differ from the whole");

    // Micro-batch 1 synchronises: the sum over both micro-batches, averaged over the ranks.
    reducer.prepare_for_forward().unwrap();
    let loss = ddp.loss(&half(&x1, &env), &half(&y1, &env));
    reducer.prepare_for_backward(&[loss.shallow_clone()]).unwrap();
    loss.f_backward().unwrap();
    reference.loss(&x0, &y0).backward();
    reference.loss(&x1, &y1).backward();
    let diff = max_diff(&grads(&ddp.params()), &grads(&reference.params()));
    assert!(diff < 1e-5, "accumulated and reduced gradients differ from the full batches' by {diff}");
}
