//! DPM-Solver++(2M): the multistep second-order solver of Lu et al. (2022) in its data-prediction
//! form, as diffusers' `DPMSolverMultistepScheduler` runs it with `algorithm_type="dpmsolver++"`,
//! `solver_order=2`, `solver_type="midpoint"` and its defaults (linspace timesteps, first-order
//! first and last steps, the last step to sigma = 0). Each step converts the model output to an
//! x0 prediction, so the same solver serves eps, x0 and v models.
//!
//! [`Spacing::Karras`] is the same scheduler with `use_karras_sigmas=True` ("DPM++ 2M Karras"):
//! the sigmas of Karras et al. (2022), rho = 7, from the schedule's largest to its smallest
//! sigma, each evaluated at the timestep its sigma interpolates to. Its last model call is at
//! t = 0, where linspace's is at about a fifth of the schedule for 5 steps: a few-step sample
//! ends on a prediction from a nearly clean input.
//!
//! In the solver's variables, with sigma_t = sqrt((1 - abar_t) / abar_t):
//! alpha = 1 / sqrt(1 + sigma^2), s = sigma * alpha, lambda = ln(alpha / s) = -ln(sigma), and
//! with h = lambda_next - lambda_now,
//!   first order:  x_next = (s_next / s_now) x - alpha_next (e^-h - 1) D0
//!   second order: x_next = (s_next / s_now) x - alpha_next (e^-h - 1) (D0 + D1 / 2),
//!   D0 = x0_now, D1 = (x0_now - x0_prev) h / h_prev.

use tch::Tensor;

use crate::diffusion::Schedule;

/// Where the solver's steps fall on the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Timesteps evenly spaced from the last to the first (diffusers' "linspace").
    Linspace,
    /// Karras et al.'s sigmas (diffusers' `use_karras_sigmas=True`).
    Karras,
}

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

/// Karras et al.'s `steps` sigmas from `max` down to `min` (rho = 7), as diffusers'
/// `_convert_to_karras`.
fn karras_sigmas(min: f64, max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (lo, hi) = (min.powf(1.0 / RHO), max.powf(1.0 / RHO));
    (0..steps)
        .map(|i| {
            let ramp = if steps == 1 {
                0.0
            } else {
                i as f64 / (steps - 1) as f64
            };
            (hi + ramp * (lo - hi)).powf(RHO)
        })
        .collect()
}

/// The fractional timestep whose log-sigma `sigma` interpolates to in `log_sigmas` (increasing,
/// one per timestep), as diffusers' `_sigma_to_t`: linear between the two neighbours, clamped
/// to the schedule's ends.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let x = sigma.max(1e-10).ln();
    let below = log_sigmas.iter().rposition(|&l| l <= x).unwrap_or(0);
    let low = below.min(log_sigmas.len() - 2);
    let w = (log_sigmas[low] - x) / (log_sigmas[low] - log_sigmas[low + 1]);
    low as f64 + w.clamp(0.0, 1.0)
}

impl<'a> DpmSolverPp2m<'a> {
    /// A run of `steps` steps (at least 1, at most the schedule's timesteps) over `schedule`.
    pub fn new(schedule: &'a Schedule, steps: usize, spacing: Spacing) -> Self {
        let n = schedule.timesteps();
        let steps = steps.clamp(1, n);
        let sigma_of: Vec<f64> = schedule
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let (timesteps, mut sigmas) = match spacing {
            Spacing::Linspace => {
                let t = linspace_timesteps((n - 1) as f64, steps);
                let s = t.iter().map(|&t| sigma_of[t as usize]).collect();
                (t, s)
            }
            Spacing::Karras => {
                let s = karras_sigmas(sigma_of[0], sigma_of[n - 1], steps);
                let log_sigmas: Vec<f64> = sigma_of.iter().map(|s| s.ln()).collect();
                let t = s
                    .iter()
                    .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even() as i64)
                    .collect();
                (t, s)
            }
        };
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

    #[test]
    fn karras_sigmas_run_from_max_to_min_and_map_back_to_their_timesteps() {
        let s = karras_sigmas(0.03, 15.0, 5);
        assert!(
            (s[0] - 15.0).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-12,
            "{s:?}"
        );
        assert!(s.windows(2).all(|w| w[0] > w[1]), "{s:?}");
        let one = karras_sigmas(0.03, 15.0, 1);
        assert!(one.len() == 1 && (one[0] - 15.0).abs() < 1e-9, "{one:?}");
        // log-sigmas 0, 1, 2, 3 at timesteps 0..4: e^1.25 sits a quarter past timestep 1.
        let ls = [0.0, 1.0, 2.0, 3.0];
        assert!((sigma_to_t(1.25f64.exp(), &ls) - 1.25).abs() < 1e-12);
        assert_eq!(sigma_to_t(1e-3, &ls), 0.0);
        assert_eq!(sigma_to_t(100.0, &ls), 3.0);
    }
}
