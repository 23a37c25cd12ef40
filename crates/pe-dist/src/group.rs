//! A c10d process group (Gloo or NCCL) rendezvoused through a TCPStore, and its blocking collectives.
use std::ffi::CString;
use std::str::FromStr;
use std::time::Duration;

use tch::{Device, Tensor};

use crate::{ffi, DistEnv, Error, Result};

/// torch DDP's chunk size for broadcasting module state (`broadcast_bucket_size`).
pub const BROADCAST_BUCKET_BYTES: usize = 250 * 1024 * 1024;

/// The c10d backend that carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, TCP between processes.
    Gloo,
    /// CUDA tensors, one GPU per process (`LOCAL_RANK`).
    Nccl,
}

impl Backend {
    /// The backend for tensors on `device`: NCCL for CUDA, Gloo otherwise (what torch picks).
    pub fn for_device(device: tch::Device) -> Self {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(Error::Invalid(format!("unknown c10d backend {other:?} (expected gloo or nccl)"))),
        }
    }
}

/// The reductions [`ProcessGroup::all_reduce_`] offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    /// The shim's code (csrc/pe_dist.cpp `reduce_op_of`).
    fn code(self) -> i32 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// One process's membership in the default process group, as `init_process_group` makes it.
pub struct ProcessGroup {
    group: ffi::Group,
    /// Kept so the rendezvous store outlives every use of the group.
    _store: ffi::Store,
    rank: usize,
    world_size: usize,
    backend: Backend,
    device: Device,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .field("device", &self.device)
            .finish()
    }
}

/// Waits until something accepts connections at `host:port`, for at most `timeout`; returns the
/// time left.
fn wait_for_server(host: &str, port: u16, timeout: Duration) -> std::result::Result<Duration, String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::from("nothing listens there");
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!("no server answered within {timeout:?} ({last})"));
        }
        match (host, port).to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
                        Ok(_) => return Ok(deadline.saturating_duration_since(std::time::Instant::now())),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            Err(e) => last = format!("resolving {host}: {e}"),
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

impl ProcessGroup {
    /// Rendezvous at `MASTER_ADDR:MASTER_PORT` and build the backend. `timeout` bounds the
    /// rendezvous (a missing rank, an unreachable store) and every collective after it. For Gloo,
    /// `GLOO_SOCKET_IFNAME` picks the network interface, as in torch.
    pub fn new(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<Self> {
        let world =
            i32::try_from(env.world_size).map_err(|_| Error::Invalid("WORLD_SIZE too large".into()))?;
        let rank = env.rank as i32; // below world_size (DistEnv validates)
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        let host = cstring("MASTER_ADDR", &env.master_addr)?;
        let role = if env.hosts_store() { "hosting" } else { "connecting to" };
        let what = || {
            format!(
                "rank {rank}/{world}: {role} the TCPStore at {}:{} (timeout {timeout:?})",
                env.master_addr, env.master_port
            )
        };
        // A client waits for the server itself: c10d's own connect retries back off past the
        // timeout (2-3 times it, measured), and the rest of the rendezvous gets what is left.
        let store_timeout_ms = if env.hosts_store() {
            timeout_ms
        } else {
            let left = wait_for_server(&env.master_addr, env.master_port, timeout)
                .map_err(|message| Error::c10d(what(), message))?;
            i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1)
        };
        let (store, _) =
            ffi::tcp_store(&host, env.master_port, env.hosts_store(), world.into(), store_timeout_ms)
                .map_err(|m| Error::c10d(what(), m))?;
        let what =
            format!("rank {rank}/{world}: creating the {backend:?} process group (timeout {timeout:?})");
        let (group, device) = match backend {
            Backend::Gloo => {
                let iface =
                    std::env::var("GLOO_SOCKET_IFNAME").ok().map(|v| cstring("GLOO_SOCKET_IFNAME", &v));
                let iface = iface.transpose()?;
                // One machine: bind to the loopback the store uses; otherwise to this host's name.
                let hostname = env.master_is_loopback().then_some(&host);
                let group = ffi::group_gloo(&store, rank, world, timeout_ms, hostname, iface.as_ref())
                    .map_err(|m| Error::c10d(what, m))?;
                (group, Device::Cpu)
            }
            Backend::Nccl => {
                let group = ffi::group_nccl(&store, rank, world, timeout_ms, env.local_rank as i64)
                    .map_err(|m| Error::c10d(what, m))?;
                (group, Device::Cuda(env.local_rank))
            }
        };
        Ok(Self { group, _store: store, rank: env.rank, world_size: env.world_size, backend, device })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where this group's tensors live: CPU for Gloo, `cuda:LOCAL_RANK` for NCCL.
    pub fn device(&self) -> Device {
        self.device
    }

    pub(crate) fn handle(&self) -> &ffi::Group {
        &self.group
    }

    fn failed(&self, what: &str, message: String) -> Error {
        Error::c10d(format!("rank {}/{}: {what}", self.rank, self.world_size), message)
    }

    /// Reduces each tensor in place across all ranks (one collective per tensor).
    pub fn all_reduce_(&self, tensors: &[Tensor], op: ReduceOp) -> Result<()> {
        self.group.all_reduce(tensors, op.code()).map_err(|m| self.failed(&format!("all_reduce({op:?})"), m))
    }

    /// Overwrites `tensors` with rank `root`'s values, packed into 250 MB chunks as DDP does for
    /// module parameters and buffers. Autograd does not see the copy.
    pub fn broadcast_coalesced_(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(Error::Invalid(format!(
                "broadcast root {root} is not a rank of {}",
                self.world_size
            )));
        }
        self.group
            .broadcast_coalesced(tensors, BROADCAST_BUCKET_BYTES, root as i32)
            .map_err(|m| self.failed(&format!("broadcast_coalesced from rank {root}"), m))
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        self.group.barrier().map_err(|m| self.failed("barrier", m))
    }

    /// Checks every rank holds the same `value` (e.g. a hash of the resolved config): all-reduces
    /// its minimum and maximum and fails on every rank, naming `what`, if they differ.
    pub fn check_same(&self, what: &str, value: u64) -> Result<()> {
        // Bit-cast so the whole u64 range survives the i64 tensor; equality is all that matters.
        let v = value as i64;
        let min = Tensor::from_slice(&[v]).to_device(self.device);
        let max = min.copy();
        self.all_reduce_(std::slice::from_ref(&min), ReduceOp::Min)?;
        self.all_reduce_(std::slice::from_ref(&max), ReduceOp::Max)?;
        let (min, max) = (i64::try_from(&min)? as u64, i64::try_from(&max)? as u64);
        if min != max {
            return Err(Error::Mismatch { what: what.to_owned(), min, max });
        }
        Ok(())
    }
}

fn cstring(var: &'static str, value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| Error::BadEnv {
        var,
        value: value.to_owned(),
        expected: "free of NUL bytes".into(),
    })
}
