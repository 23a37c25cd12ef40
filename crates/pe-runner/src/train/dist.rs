//! This process's place in a run: rank, world size, local rank, and the c10d process group that
//! connects the ranks (none in a one-process run). Launched by torchrun or `pe launch`, a process
//! learns its place from torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, ...).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use pe_dist::{DistEnv, ProcessGroup, ReduceOp, Reducer, ReducerOptions};

use crate::config::DistBackend;
use crate::train::step_engine::{GradSync, StepEngine};

pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// The rank on this machine: which GPU the process uses.
    pub local_rank: usize,
    group: Option<Rc<ProcessGroup>>,
}

impl Dist {
    /// A run of one process.
    pub fn single() -> Self {
        Self { rank: 0, world: 1, local_rank: 0, group: None }
    }

    /// Joins the ranks torchrun's environment names (a one-process run when it names none) with
    /// `backend` for `device`, each collective waiting at most `timeout` for the others, and
    /// checks that every rank resolved the same recipe.
    pub fn from_env(
        backend: DistBackend,
        timeout: Duration,
        device: Device,
        resolved_recipe: &str,
    ) -> Result<Self> {
        let Some(env) = DistEnv::from_env()? else { return Ok(Self::single()) };
        let group = ProcessGroup::new(&env, backend.resolve(device), timeout)?;
        let mut hasher = DefaultHasher::new();
        resolved_recipe.hash(&mut hasher);
        group.check_same(
            "the resolved recipe (a --set or file that differs between ranks?)",
            hasher.finish(),
        )?;
        Ok(Self {
            rank: env.rank,
            world: env.world_size,
            local_rank: env.local_rank,
            group: Some(Rc::new(group)),
        })
    }

    /// The device of this rank: with several processes on CUDA, GPU `LOCAL_RANK`.
    pub fn device(&self, configured: Device) -> Device {
        match configured {
            Device::Cuda(_) if self.world > 1 => Device::Cuda(self.local_rank),
            other => other,
        }
    }

    /// Rank 0 writes logs, TensorBoard and checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum of `values` over all ranks.
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let Some(group) = &self.group else { return Ok(()) };
        let tensor = Tensor::from_slice(values).to_kind(Kind::Double).to_device(group.device());
        group.all_reduce_(std::slice::from_ref(&tensor), ReduceOp::Sum)?;
        let summed = Vec::<f64>::try_from(&tensor.to_device(Device::Cpu))?;
        values.copy_from_slice(&summed);
        Ok(())
    }

    /// Whether any rank says `flag` (e.g. "Ctrl-C was pressed"), so that all stop at the same step.
    pub fn any(&self, flag: bool) -> Result<bool> {
        let mut value = [f64::from(u8::from(flag))];
        self.sum(&mut value)?;
        Ok(value[0] > 0.0)
    }

    /// Makes every rank's engine start from rank 0's weights, buffers and EMA (as DDP does at
    /// construction), then installs DDP's gradient Reducer in the engine.
    pub fn join_engine(&self, engine: &mut StepEngine) -> Result<()> {
        let Some(group) = &self.group else { return Ok(()) };
        let state: Vec<Tensor> = engine.named_state().into_iter().map(|(_, t)| t).collect();
        tch::no_grad(|| group.broadcast_coalesced_(&state, 0)).context("broadcasting rank 0's model")?;
        if let Some(ema) = engine.ema_named_state() {
            let ema_state: Vec<Tensor> = ema.into_iter().map(|(_, t)| t).collect();
            tch::no_grad(|| group.broadcast_coalesced_(&ema_state, 0))
                .context("broadcasting rank 0's EMA")?;
        }
        let (names, params): (Vec<String>, Vec<Tensor>) = engine.trainable_parameters().into_iter().unzip();
        let options = ReducerOptions { param_names: names, ..ReducerOptions::default() };
        let reducer = Reducer::new(group, &params, &options)?;
        let buffers = engine.buffers();
        engine.set_grad_sync(Box::new(DdpSync { group: group.clone(), reducer, buffers }))?;
        Ok(())
    }

    /// Gives every rank rank 0's BatchNorm statistics (and EMA). Each rank's forward updates its
    /// own from its own batch; DDP overwrites them before the next forward, and so do we before
    /// evaluating or saving, so every shard is evaluated by the same model, the one rank 0 saves.
    pub fn sync_buffers(&self, engine: &StepEngine) -> Result<()> {
        let Some(group) = &self.group else { return Ok(()) };
        let mut buffers = engine.buffers();
        if let Some(ema) = engine.ema_named_state() {
            buffers.extend(ema.into_iter().map(|(_, t)| t));
        }
        if !buffers.is_empty() {
            tch::no_grad(|| group.broadcast_coalesced_(&buffers, 0))
                .context("broadcasting rank 0's buffers")?;
        }
        Ok(())
    }

    /// Fails unless every rank holds bit-identical parameters and buffers: data-parallel ranks must
    /// never drift apart. Called after [`Dist::sync_buffers`] whenever a checkpoint is written.
    pub fn check_in_sync(&self, engine: &StepEngine) -> Result<()> {
        let Some(group) = &self.group else { return Ok(()) };
        let mut hasher = DefaultHasher::new();
        for (name, tensor) in engine.named_state() {
            name.hash(&mut hasher);
            let host = tensor.to_device(Device::Cpu).contiguous().to_kind(Kind::Double);
            Vec::<f64>::try_from(&host.flatten(0, -1))?.iter().for_each(|v| v.to_bits().hash(&mut hasher));
        }
        Ok(group.check_same("the model's parameters and buffers across ranks", hasher.finish())?)
    }
}

/// torch DDP's behaviour per reducing micro-batch: rank 0's buffers (BatchNorm running statistics)
/// are broadcast before the forward (`broadcast_buffers=True`), and the Reducer's hooks all-reduce
/// gradient buckets during backward.
struct DdpSync {
    group: Rc<ProcessGroup>,
    reducer: Reducer,
    buffers: Vec<Tensor>,
}

impl GradSync for DdpSync {
    fn before_forward(&mut self) -> Result<()> {
        if !self.buffers.is_empty() {
            tch::no_grad(|| self.group.broadcast_coalesced_(&self.buffers, 0))?;
        }
        self.reducer.prepare_for_forward()?;
        Ok(())
    }

    fn before_backward(&mut self, loss: &Tensor) -> Result<()> {
        Ok(self.reducer.prepare_for_backward(std::slice::from_ref(loss))?)
    }

    fn hidden_share(&self) -> Result<Option<f64>> {
        Ok(self.reducer.comm_stats()?.map(|stats| stats.hidden_share()))
    }
}
