//! DPM-Solver++(2M): the multistep second-order solver of Lu et al. (2022) in its data-prediction
//! form, as diffusers' `DPMSolverMultistepScheduler` runs it with `algorithm_type="dpmsolver++"`,
//! `solver_order=2`, `solver_type="midpoint"` and its defaults (linspace timesteps, first-order
//! first and last steps, the last step to sigma = 0). Each step converts the model output to an
//! x0 prediction, so the same solver serves eps, x0 and v models.
//!
//! In the solver's variables, with sigma_t = sqrt((1 - abar_t) / abar_t):
//! alpha = 1 / sqrt(1 + sigma^2), s = sigma * alpha, lambda = ln(alpha / s) = -ln(sigma), and
//! with h = lambda_next - lambda_now,
//!   first order:  x_next = (s_next / s_now) x - alpha_next (e^-h - 1) D0
//!   second order: x_next = (s_next / s_now) x - alpha_next (e^-h - 1) (D0 + D1 / 2),
//!   D0 = x0_now, D1 = (x0_now - x0_prev) h / h_prev.

use tch::Tensor;

use crate::diffusion::Schedule;

/// The solver's state over one sampling run: the timesteps, their sigmas, and the previous x0
/// prediction. [`DpmSolverPp2m::step`] is called once per timestep, in order.
#[derive(Debug)]
pub struct DpmSolverPp2m<'a> {
    timesteps: Vec<i64>,
    /// sigma of each timestep, then 0 (the end of sampling).
    sigmas: Vec<f64>,
    schedule: &'a Schedule,
    previous: Option<Tensor>,
    index: usize,
}

/// `np.linspace(0, last, n + 1).round()[::-1][:-1]`, numpy's rounding (half to even) included.
fn linspace_timesteps(last: f64, steps: usize) -> Vec<i64> {
    let step = last / steps as f64;
    let mut t: Vec<i64> = (0..=steps)
        .map(|i| {
            let v = if i == steps { last } else { i as f64 * step };
            v.round_ties_even() as i64
        })
        .collect();
    t.reverse();
    t.pop();
    t
}

impl<'a> DpmSolverPp2m<'a> {
    /// A run of `steps` steps (at least 1, at most the schedule's timesteps) over `schedule`.
    pub fn new(schedule: &'a Schedule, steps: usize) -> Self {
        let n = schedule.timesteps();
        let steps = steps.clamp(1, n);
        let timesteps = linspace_timesteps((n - 1) as f64, steps);
        let ac = schedule.alphas_cumprod();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| ((1.0 - ac[t as usize]) / ac[t as usize]).sqrt())
            .collect();
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            schedule,
            previous: None,
            index: 0,
        }
    }

    /// The timesteps the model is evaluated at, noisiest first.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// alpha and s (= sigma * alpha) of sigma.
    fn alpha_s(sigma: f64) -> (f64, f64) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    /// One step: `x` at `timesteps()[i]` and the model's output there give `x` at the next
    /// timestep (after the last one: the sample). Panics if called more often than there are
    /// timesteps (a caller's loop error, not a data error).
    pub fn step(&mut self, model_output: &Tensor, x: &Tensor) -> Tensor {
        let i = self.index;
        assert!(
            i < self.timesteps.len(),
            "DPM-Solver++: more steps than timesteps"
        );
        let (sigma_now, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
        let (alpha_now, s_now) = Self::alpha_s(sigma_now);
        // alpha and s are sqrt(alpha-bar) and sqrt(1 - alpha-bar) of the timestep.
        let d0 = self.schedule.x0_of(model_output, x, alpha_now, s_now);
        let (alpha_next, s_next) = Self::alpha_s(sigma_next);
        // lambda = -ln(sigma); at sigma = 0, h is infinite and e^-h is 0: the step lands on x0.
        let h = sigma_now.ln() - sigma_next.ln();
        let e = (-h).exp() - 1.0;
        let last = i + 1 == self.timesteps.len();
        let out = match (&self.previous, last) {
            (Some(prev), false) => {
                let h_prev = self.sigmas[i - 1].ln() - sigma_now.ln();
                let d1 = (&d0 - prev) * (h / h_prev);
                x * (s_next / s_now) - (&d0 + d1 * 0.5) * (alpha_next * e)
            }
            _ => x * (s_next / s_now) - &d0 * (alpha_next * e),
        };
        self.previous = Some(d0);
        self.index += 1;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_are_numpys_rounded_linspace() {
        // np.linspace(0, 999, 11).round()[::-1][:-1]: 499.5 rounds to 500 (half to even).
        assert_eq!(
            linspace_timesteps(999.0, 10),
            vec![999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        assert_eq!(linspace_timesteps(999.0, 1), vec![999]);
    }
}
