//! Learning rate as a function of the optimizer step (per-step warmup, then cosine or steps).

use crate::config::{ScheduleConfig, ScheduleKind};

/// The per-step schedule of one run.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: ScheduleConfig,
    peak_lr: f64,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Schedule {
    pub fn new(config: &ScheduleConfig, peak_lr: f64, steps_per_epoch: usize, epochs: usize) -> Self {
        Self { config: config.clone(), peak_lr, steps_per_epoch, total_steps: steps_per_epoch * epochs }
    }

    fn warmup_steps(&self) -> usize {
        (self.config.warmup_epochs * self.steps_per_epoch as f64).round() as usize
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let warmup = self.warmup_steps();
        if step < warmup {
            let t = step as f64 / warmup as f64;
            return self.config.warmup_lr + (self.peak_lr - self.config.warmup_lr) * t;
        }
        match self.config.name {
            ScheduleKind::Constant => self.peak_lr,
            ScheduleKind::Cosine => {
                let span = (self.total_steps - warmup).max(1) as f64;
                let t = ((step - warmup) as f64 / span).min(1.0);
                let min = self.config.min_lr;
                min + 0.5 * (self.peak_lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            ScheduleKind::Step => {
                let epoch = step as f64 / self.steps_per_epoch as f64;
                let decays = (epoch / self.config.decay_epochs).floor();
                (self.peak_lr * self.config.decay_rate.powf(decays)).max(self.config.min_lr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: ScheduleKind) -> ScheduleConfig {
        ScheduleConfig {
            name,
            warmup_epochs: 2.0,
            warmup_lr: 0.0,
            min_lr: 0.0,
            decay_epochs: 3.0,
            decay_rate: 0.1,
        }
    }

    #[test]
    fn linear_warmup_then_cosine_to_min_lr() {
        // 10 steps per epoch, 12 epochs: 20 warmup steps, 100 cosine steps.
        let s = Schedule::new(&config(ScheduleKind::Cosine), 1.0, 10, 12);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(10) - 0.5).abs() < 1e-12);
        assert!((s.lr(20) - 1.0).abs() < 1e-12);
        // Half-way through the cosine: (1 + cos(π/2)) / 2 = 0.5.
        assert!((s.lr(70) - 0.5).abs() < 1e-12);
        assert!((s.lr(45) - 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos())).abs() < 1e-12);
        assert!(s.lr(119) < 1e-3 && s.lr(120) == 0.0);
    }

    #[test]
    fn cosine_ends_at_min_lr() {
        let s = Schedule::new(&ScheduleConfig { min_lr: 1e-5, ..config(ScheduleKind::Cosine) }, 0.1, 5, 10);
        assert!((s.lr(50) - 1e-5).abs() < 1e-15);
    }

    #[test]
    fn step_decay_every_decay_epochs() {
        let s =
            Schedule::new(&ScheduleConfig { warmup_epochs: 0.0, ..config(ScheduleKind::Step) }, 0.1, 10, 9);
        assert!((s.lr(29) - 0.1).abs() < 1e-15);
        assert!((s.lr(30) - 0.01).abs() < 1e-15);
        assert!((s.lr(60) - 0.001).abs() < 1e-15);
    }
}
