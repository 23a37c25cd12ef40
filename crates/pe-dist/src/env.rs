//! The torchrun environment of one rank: who it is and where the rendezvous store lives.
use std::net::IpAddr;

use crate::{Error, Result};

/// What torchrun (or [`crate::launch`]) tells each process through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// `RANK`: this process's index among all processes.
    pub rank: usize,
    /// `WORLD_SIZE`: how many processes train together.
    pub world_size: usize,
    /// `LOCAL_RANK`: index on this machine, also the CUDA device NCCL uses.
    pub local_rank: usize,
    /// `LOCAL_WORLD_SIZE`: processes on this machine.
    pub local_world_size: usize,
    /// `MASTER_ADDR`: host of the TCPStore.
    pub master_addr: String,
    /// `MASTER_PORT`: port of the TCPStore.
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: the launcher hosts the store, so every rank (rank 0
    /// included) connects to it as a client.
    pub use_agent_store: bool,
}

impl DistEnv {
    /// Reads the process environment; `None` when neither `RANK` nor `WORLD_SIZE` is set (a plain,
    /// single-process run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// As [`DistEnv::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        if lookup("RANK").is_none() && lookup("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let get = |var: &'static str| lookup(var).ok_or(Error::MissingEnv { var });
        let number = |var: &'static str| -> Result<usize> {
            let value = get(var)?;
            value.trim().parse().map_err(|_| Error::BadEnv { var, value, expected: "a number".into() })
        };
        let env = DistEnv {
            rank: number("RANK")?,
            world_size: number("WORLD_SIZE")?,
            local_rank: number("LOCAL_RANK")?,
            local_world_size: number("LOCAL_WORLD_SIZE")?,
            master_addr: get("MASTER_ADDR")?,
            master_port: {
                let value = get("MASTER_PORT")?;
                value.trim().parse().map_err(|_| Error::BadEnv {
                    var: "MASTER_PORT",
                    value,
                    expected: "a port number (0-65535)".into(),
                })?
            },
            // torch compares against str(True).
            use_agent_store: lookup("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True"),
        };
        env.validate()?;
        Ok(Some(env))
    }

    fn validate(&self) -> Result<()> {
        let bad = |var: &'static str, value: usize, expected: String| {
            Err(Error::BadEnv { var, value: value.to_string(), expected })
        };
        if self.world_size == 0 {
            return bad("WORLD_SIZE", 0, "at least 1".into());
        }
        if self.rank >= self.world_size {
            return bad("RANK", self.rank, format!("below WORLD_SIZE={}", self.world_size));
        }
        if self.local_world_size == 0 || self.local_world_size > self.world_size {
            return bad("LOCAL_WORLD_SIZE", self.local_world_size, format!("in 1..={}", self.world_size));
        }
        if self.local_rank >= self.local_world_size {
            return bad(
                "LOCAL_RANK",
                self.local_rank,
                format!("below LOCAL_WORLD_SIZE={}", self.local_world_size),
            );
        }
        if self.master_addr.trim().is_empty() {
            return Err(Error::BadEnv {
                var: "MASTER_ADDR",
                value: self.master_addr.clone(),
                expected: "a host name or address".into(),
            });
        }
        Ok(())
    }

    /// Whether this rank hosts the TCPStore (rank 0, unless the launcher's agent store does).
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.use_agent_store
    }

    /// Whether `MASTER_ADDR` names this machine's loopback (a single-machine run).
    pub fn master_is_loopback(&self) -> bool {
        self.master_addr == "localhost" || self.master_addr.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    const FULL: [(&str, &str); 6] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn absent_means_single_process() {
        assert_eq!(DistEnv::from_lookup(lookup(&[])).unwrap(), None);
    }

    #[test]
    fn reads_torchrun_variables() {
        let env = DistEnv::from_lookup(lookup(&FULL)).unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank, env.master_port), (1, 2, 1, 29500));
        assert!(!env.use_agent_store && !env.hosts_store() && env.master_is_loopback());
        let mut agent = FULL.to_vec();
        agent[0] = ("RANK", "0");
        agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        let env = DistEnv::from_lookup(lookup(&agent)).unwrap().unwrap();
        assert!(env.use_agent_store && !env.hosts_store());
    }

    #[test]
    fn names_the_missing_or_malformed_variable() {
        let missing = DistEnv::from_lookup(lookup(&FULL[..5])).unwrap_err().to_string();
        assert!(missing.contains("MASTER_PORT is not set"), "{missing}");
        let mut bad = FULL.to_vec();
        bad[5] = ("MASTER_PORT", "70000");
        let msg = DistEnv::from_lookup(lookup(&bad)).unwrap_err().to_string();
        assert!(msg.contains("MASTER_PORT=\"70000\" is not a port number"), "{msg}");
        bad[5] = ("MASTER_PORT", "29500");
        bad[0] = ("RANK", "2");
        let msg = DistEnv::from_lookup(lookup(&bad)).unwrap_err().to_string();
        assert!(msg.contains("RANK=\"2\" is not below WORLD_SIZE=2"), "{msg}");
    }
}
