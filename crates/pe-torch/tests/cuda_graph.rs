//! CUDA graphs and what a captured step needs from this crate.
//!
//! Everywhere: clear errors without CUDA, the autocast cache switch, and the device-side building
//! blocks (tensor learning rate, device-flag unscale, tensor-weight lerp) equal their host-side
//! twins. On a GPU (`#[ignore = "needs CUDA"]`, run with
//! `cargo test --release -p pe-torch --test cuda_graph -- --include-ignored`): a captured graph
//! replays on new inputs, draws fresh random numbers per replay, and fused AdamW/SGD captured with a
//! device learning rate follow a learning rate that changes between replays exactly as eager steps.
use pe_torch::cuda_graph::{CudaGraph, CudaStream};
use pe_torch::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};
use pe_torch::{autocast, cuda, foreach, GradScaler};
use tch::{Device, Kind, Tensor};

/// Tests in this file run one at a time: a capture in the global mode fails if another thread
/// allocates or syncs on the device meanwhile, and equal runs rely on seeding the global generators.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn without_cuda_every_call_is_a_clear_error() {
    let _serial = serial();
    if cuda::is_available() {
        return;
    }
    let errors = [CudaStream::from_pool(Device::Cuda(0)).err(), CudaGraph::new(Device::Cuda(0)).err()];
    for e in errors {
        let msg = e.expect("must fail without CUDA").to_string();
        assert!(msg.contains("CUDA is not available"), "{msg}");
    }
}

#[test]
fn a_cpu_device_is_refused_naming_what_needs_cuda() {
    let _serial = serial();
    let msg = CudaGraph::new(Device::Cpu).err().expect("a CPU graph must be refused").to_string();
    assert!(msg.contains("a CUDA graph needs a CUDA device"), "{msg}");
    let msg = CudaStream::from_pool(Device::Cpu).err().expect("a CPU stream must be refused").to_string();
    assert!(msg.contains("a CUDA stream needs a CUDA device"), "{msg}");
}

#[test]
fn the_autocast_cache_is_off_inside_the_guard_and_restored_after() {
    let _serial = serial();
    assert!(autocast::is_cache_enabled().unwrap(), "libtorch's default is on");
    {
        let _off = autocast::disable_cache().unwrap();
        assert!(!autocast::is_cache_enabled().unwrap());
        {
            let _nested = autocast::disable_cache().unwrap();
            assert!(!autocast::is_cache_enabled().unwrap());
        }
        assert!(!autocast::is_cache_enabled().unwrap(), "the inner guard restores the outer state");
    }
    assert!(autocast::is_cache_enabled().unwrap());
}

/// Three parameters: weights in a decayed group, a bias in another. Values from a formula, not
/// the global generator (tests run in parallel and reseed it).
fn params(device: Device) -> Vec<Tensor> {
    [vec![4, 3], vec![3], vec![5]]
        .into_iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: i64 = shape.iter().product();
            let values = Tensor::arange(n, (Kind::Float, device)).f_mul_scalar(0.37 + i as f64).unwrap();
            values.sin().reshape(shape).set_requires_grad(true)
        })
        .collect()
}

/// Step `step`'s gradients (deterministic, varying with the step).
fn grads_at(params: &[Tensor], step: usize) -> Vec<Tensor> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = p.numel() as i64;
            let phase = Tensor::arange(n, (Kind::Float, p.device())) * (1.3 + step as f64) + i as f64;
            phase.cos().reshape(p.size()) * (1.0 + (step + i) as f64 / 4.0)
        })
        .collect()
}

fn set_grads(params: &[Tensor], grads: &[Tensor]) {
    for (p, g) in params.iter().zip(grads) {
        pe_torch::memory_format::reset_grad(p).unwrap();
        (p * g).sum(Kind::Float).backward();
    }
}

fn groups(params: &[Tensor], lr_tensor: Option<&Tensor>) -> Vec<ParamGroup> {
    let mut groups = vec![
        ParamGroup::new(vec![params[0].shallow_clone(), params[1].shallow_clone()], 0.0, 0.1),
        ParamGroup::new(vec![params[2].shallow_clone()], 0.0, 0.0),
    ];
    for g in &mut groups {
        g.lr_tensor = lr_tensor.map(Tensor::shallow_clone);
    }
    groups
}

fn optimizer(kind: &str, groups: Vec<ParamGroup>) -> Box<dyn Optimizer> {
    match kind {
        "adamw" => Box::new(AdamW::new(groups, AdamWConfig::default()).unwrap()),
        _ => Box::new(Sgd::new(groups, SgdConfig { momentum: 0.9, nesterov: true }).unwrap()),
    }
}

/// Learning rates exactly representable in float32, so a float32 lr tensor equals the host value.
const LRS: [f64; 4] = [0.5, 0.25, 0.125, 0.0625];

#[test]
fn a_device_learning_rate_steps_exactly_like_the_host_value() {
    let _serial = serial();
    for kind in ["adamw", "sgd"] {
        let host_params = params(Device::Cpu);
        let dev_params = params(Device::Cpu);
        let lr = Tensor::zeros([], (Kind::Float, Device::Cpu));
        let mut host = optimizer(kind, groups(&host_params, None));
        let mut dev = optimizer(kind, groups(&dev_params, Some(&lr)));
        for (step, value) in LRS.into_iter().enumerate() {
            for g in 0..host.groups().len() {
                host.set_lr(g, value);
            }
            let _ = lr.shallow_clone().fill_(value);
            let grads = grads_at(&host_params, step);
            set_grads(&host_params, &grads);
            set_grads(&dev_params, &grads);
            host.step().unwrap();
            dev.step().unwrap();
        }
        for (a, b) in host_params.iter().zip(&dev_params) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff == 0.0, "{kind}: device-lr parameters differ from host-lr ones by {diff}");
        }
    }
}

fn refs(v: &[Tensor]) -> Vec<&Tensor> {
    v.iter().collect()
}

#[test]
fn lerp_with_a_tensor_weight_equals_lerp_with_the_scalar() {
    let _serial = serial();
    let ends = grads_at(&params(Device::Cpu), 1);
    let a: Vec<Tensor> = params(Device::Cpu).iter().map(Tensor::detach).collect();
    let b: Vec<Tensor> = a.iter().map(Tensor::copy).collect();
    foreach::lerp_(&refs(&a), &refs(&ends), 0.25).unwrap();
    foreach::lerp_tensor_(&refs(&b), &refs(&ends), &Tensor::from(0.25f32)).unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert!((a - b).abs().max().double_value(&[]) < 1e-6);
    }
    // A zero weight leaves them unchanged (an EMA step skipped on the device).
    let before: Vec<Tensor> = b.iter().map(Tensor::copy).collect();
    foreach::lerp_tensor_(&refs(&b), &refs(&ends), &Tensor::from(0.0f32)).unwrap();
    for (x, y) in b.iter().zip(&before) {
        assert!(x.equal(y));
    }
}

#[test]
fn unscaling_on_the_device_equals_unscale_and_keeps_the_flag_on_the_device() {
    let _serial = serial();
    for overflow in [false, true] {
        let grads = |scale: f64| {
            let mut g =
                vec![Tensor::from_slice(&[2.0f32, -4.0]) * scale, Tensor::from_slice(&[8.0f32]) * scale];
            if overflow {
                g[1] = Tensor::from_slice(&[f32::INFINITY]);
            }
            g
        };
        let (mut host, mut dev) = (GradScaler::new(true), GradScaler::new(true));
        let (gh, gd) = (grads(65536.0), grads(65536.0));
        let found = host.unscale_(&gh).unwrap();
        let flag = dev.unscale_on_device_(&gd).unwrap().expect("an enabled scaler returns its flag");
        assert_eq!(found, overflow);
        assert_eq!(flag.double_value(&[]) > 0.0, overflow);
        assert!(gh[0].equal(&gd[0]));
        host.update().unwrap();
        dev.update().unwrap();
        assert_eq!(host.scale_value(), dev.scale_value(), "the scale updates alike");
    }
    assert!(GradScaler::new(false).unscale_on_device_(&[]).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// On a GPU

fn cuda() -> Device {
    assert!(cuda::is_available(), "this test needs a CUDA device (run it on a GPU machine)");
    Device::Cuda(0)
}

#[test]
#[ignore = "needs CUDA"]
fn a_graph_replays_on_new_inputs_with_fresh_random_numbers() {
    let _serial = serial();
    let device = cuda();
    let stream = CudaStream::from_pool(device).unwrap();
    let input = Tensor::zeros([1024], (Kind::Float, device));
    // Warm-up on the capture stream, as the recipe asks.
    {
        let _on = stream.enter().unwrap();
        let _ = &input * 2.0 + Tensor::rand([1024], (Kind::Float, device));
    }
    let mut graph = CudaGraph::new(device).unwrap();
    let output = graph
        .capture(&stream, || -> pe_torch::Result<Tensor> {
            Ok(&input * 2.0 + Tensor::rand([1024], (Kind::Float, device)))
        })
        .unwrap();
    assert!(graph.is_captured());
    let replay = |value: f64, seed: i64| -> Tensor {
        let _ = input.shallow_clone().fill_(value);
        tch::manual_seed(seed);
        graph.replay().unwrap();
        output.to_device(Device::Cpu)
    };
    let a = replay(3.0, 1);
    let noise = &a - 6.0;
    let (lo, hi) = (noise.min().double_value(&[]), noise.max().double_value(&[]));
    assert!(
        (0.0..1.0).contains(&lo) && hi < 1.0,
        "replay must compute 2·x + U[0,1): got noise in [{lo}, {hi}]"
    );
    let b = replay(3.0, 2);
    assert!(!a.equal(&b), "a replay after another seed must draw other random numbers");
    let c = replay(3.0, 1);
    assert!(a.equal(&c), "the same seed before a replay must draw the same random numbers");
    let d = replay(-1.0, 1);
    assert!((&d - &a + 8.0).abs().max().double_value(&[]) < 1e-5, "replay must read the new input");
    graph.reset().unwrap();
    assert!(!graph.is_captured());
    assert!(graph.replay().is_err(), "a reset graph has nothing to replay");
}

#[test]
#[ignore = "needs CUDA"]
fn fused_optimizers_captured_with_a_device_lr_follow_a_changing_lr() {
    let _serial = serial();
    let device = cuda();
    for kind in ["adamw", "sgd"] {
        let eager_params = params(device);
        let graph_params = params(device);
        let lr = Tensor::zeros([], (Kind::Float, device));
        let mut eager = optimizer(kind, groups(&eager_params, None));
        let mut graphed = optimizer(kind, groups(&graph_params, Some(&lr)));
        let grads: Vec<Vec<Tensor>> = (0..6).map(|step| grads_at(&eager_params, step)).collect();
        let stream = CudaStream::from_pool(device).unwrap();
        let static_grads: Vec<Tensor> = graph_params.iter().map(Tensor::zeros_like).collect();
        let mut graph = CudaGraph::new(device).unwrap();
        for (step, g) in grads.iter().enumerate() {
            let value = LRS[step % LRS.len()] / 8.0;
            for i in 0..eager.groups().len() {
                eager.set_lr(i, value);
            }
            set_grads(&eager_params, g);
            eager.step().unwrap();
            let _ = lr.shallow_clone().fill_(value);
            for (s, g) in static_grads.iter().zip(g) {
                s.shallow_clone().copy_(g);
            }
            if step == 0 {
                // First step eagerly on the side stream (creates the optimizer state), gradients are
                // the static tensors from then on.
                set_grads(&graph_params, &static_grads);
                let on = stream.enter().unwrap();
                graphed.step().unwrap();
                on.exit().unwrap();
                continue;
            }
            if !graph.is_captured() {
                // Gradients feed from the static tensors through a copy inside the graph.
                graph
                    .capture(&stream, || -> pe_torch::Result<()> {
                        tch::no_grad(|| {
                            for (p, s) in graph_params.iter().zip(&static_grads) {
                                let mut grad = p.grad();
                                grad.copy_(s);
                            }
                        });
                        graphed.step()
                    })
                    .unwrap();
            }
            graph.replay().unwrap();
        }
        for (a, b) in eager_params.iter().zip(&graph_params) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{kind}: graph-replayed parameters differ from eager by {diff}");
        }
    }
}
