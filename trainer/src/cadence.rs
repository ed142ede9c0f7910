//! When periodic work is due: every N steps (0: never), and always at the run's last step and
//! at a stop, so the final state is checked, validated and logged.

/// The step being finished, as periodic work sees it.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    /// The step just taken (1-based).
    pub step: u64,
    /// The run's last step.
    pub total: u64,
    /// A stop was requested at this step.
    pub stop: bool,
}

impl Due {
    /// Whether work done every `every` steps (0: never) runs now.
    pub fn every(&self, every: u64) -> bool {
        every > 0 && (self.step % every == 0 || self.step == self.total || self.stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_every_n_steps_at_the_end_and_at_a_stop_never_for_zero() {
        let at = |step, stop| Due {
            step,
            total: 10,
            stop,
        };
        assert!(at(4, false).every(2) && !at(3, false).every(2));
        assert!(at(10, false).every(4) && at(3, true).every(4));
        assert!(!at(10, true).every(0));
    }
}
