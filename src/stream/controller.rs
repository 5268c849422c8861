//! Real-time budget controller: picks the CoDA reduction factor r for the next step so that
//! compute time / audio time stays under the budget.

#[derive(Debug, Clone)]
pub struct BudgetController {
    /// Reduction factors available, ascending (1 = dense when CoDA is off or allowed).
    choices: Vec<f64>,
    index: usize,
    pub budget: f64,
    /// Exponential average of compute / audio per step.
    pub load: f64,
    /// A fixed r chosen by the user (None = automatic).
    pub fixed: Option<f64>,
    adaptive: bool,
}

impl BudgetController {
    /// `choices` empty means the encoder has no conditional layers: nothing to adapt.
    pub fn new(mut choices: Vec<f64>, budget: f64, start: f64) -> Self {
        choices.sort_by(f64::total_cmp);
        choices.dedup();
        let adaptive = choices.len() > 1;
        if choices.is_empty() {
            choices.push(1.0);
        }
        let index = choices.iter().position(|&r| r >= start).unwrap_or(choices.len() - 1);
        Self { choices, index, budget, load: 0.0, fixed: None, adaptive }
    }

    pub fn can_adapt(&self) -> bool {
        self.adaptive
    }

    pub fn reduction(&self) -> f64 {
        self.fixed.unwrap_or(self.choices[self.index])
    }

    /// Record one step (compute seconds for `audio_s` seconds of new audio) and choose r.
    pub fn observe(&mut self, compute_s: f64, audio_s: f64) -> f64 {
        let ratio = compute_s / audio_s.max(1e-3);
        self.load = if self.load == 0.0 { ratio } else { 0.7 * self.load + 0.3 * ratio };
        if self.adaptive && self.fixed.is_none() {
            if self.load > self.budget && self.index + 1 < self.choices.len() {
                // Falling behind: cheaper encoder.
                self.index += 1;
            } else if self.load < 0.5 * self.budget && self.index > 0 {
                // Plenty of room: more accurate encoder.
                self.index -= 1;
            }
        }
        self.reduction()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_r_when_behind_and_lowers_it_with_room() {
        let mut c = BudgetController::new(vec![2.0, 4.0, 8.0], 0.5, 2.0);
        assert_eq!(c.reduction(), 2.0);
        for _ in 0..5 {
            c.observe(0.9, 1.0);
        }
        assert_eq!(c.reduction(), 8.0);
        for _ in 0..10 {
            c.observe(0.05, 1.0);
        }
        assert_eq!(c.reduction(), 2.0);
    }

    #[test]
    fn without_coda_it_cannot_adapt() {
        let mut c = BudgetController::new(vec![], 0.5, 4.0);
        assert!(!c.can_adapt());
        c.observe(2.0, 1.0);
        assert_eq!(c.reduction(), 1.0);
    }
}
