//! Calibration of a model's raw probability into the probability the policy
//! reads.
//!
//! The formulas are the contract with the training pipeline, which writes the
//! same figures into `golden.json`; a version whose Rust-side calibrated
//! scores differ from the golden ones by more than 1e-6 is not loaded.
//!
//! - `platt {a, b}`: `p` clamped to `[1e-7, 1 - 1e-7]`, `z = ln(p / (1 - p))`,
//!   `p_cal = 1 / (1 + exp(-(a z + b)))`.
//! - `isotonic {x, y}`: piecewise-linear through the points `(x[i], y[i])`,
//!   `x` non-decreasing, constant beyond both ends (numpy `interp`).
//! - `identity`: the raw probability.

use serde::Deserialize;
use serde::Serialize;

/// Raw probabilities are clamped into `[PROBABILITY_CLAMP, 1 - PROBABILITY_CLAMP]`
/// before the logit of Platt scaling.
pub const PROBABILITY_CLAMP: f64 = 1e-7;

/// Most points an isotonic calibration may have.
pub const ISOTONIC_POINTS_MAX: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Calibration {
    Platt { a: f64, b: f64 },
    Isotonic { x: Vec<f64>, y: Vec<f64> },
    Identity,
}

impl Calibration {
    /// Checks the parameters; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Platt { a, b } => {
                if !a.is_finite() || !b.is_finite() {
                    return Err(format!("platt parameters must be finite, got a={a} b={b}"));
                }
            }
            Self::Isotonic { x, y } => {
                if x.is_empty() || x.len() != y.len() {
                    return Err(format!("isotonic needs as many x as y and at least one point, got {} x and {} y", x.len(), y.len()));
                }
                if x.len() > ISOTONIC_POINTS_MAX {
                    return Err(format!("isotonic has {} points, the limit is {ISOTONIC_POINTS_MAX}", x.len()));
                }
                if let Some(i) = x.iter().chain(y).position(|v| !v.is_finite()) {
                    return Err(format!("isotonic value {i} is not finite"));
                }
                if let Some(i) = x.windows(2).position(|w| w[1] < w[0]) {
                    return Err(format!("isotonic x must be non-decreasing, x[{}] > x[{}]", i, i + 1));
                }
                if let Some(i) = y.iter().position(|v| !(0.0..=1.0).contains(v)) {
                    return Err(format!("isotonic y[{i}] = {} is not a probability", y[i]));
                }
            }
            Self::Identity => {}
        }
        Ok(())
    }

    /// The calibrated probability of a raw one. `raw` must be finite.
    pub fn apply(&self, raw: f64) -> f64 {
        match self {
            Self::Platt { a, b } => {
                let p = raw.clamp(PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP);
                let z = (p / (1.0 - p)).ln();
                1.0 / (1.0 + (-(a * z + b)).exp())
            }
            Self::Isotonic { x, y } => interpolate(x, y, raw),
            Self::Identity => raw,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Self::Platt { .. } => "platt",
            Self::Isotonic { .. } => "isotonic",
            Self::Identity => "identity",
        }
    }
}

/// numpy `interp(v, x, y)`: linear between the two points around `v`,
/// `y[0]` left of `x[0]`, the last `y` right of the last `x`.
fn interpolate(x: &[f64], y: &[f64], v: f64) -> f64 {
    let (Some(&x_first), Some(&x_last)) = (x.first(), x.last()) else {
        return v;
    };
    if v <= x_first {
        return y[0];
    }
    if v >= x_last {
        return y[y.len() - 1];
    }
    // First point strictly right of v; 1 <= right < len because x_first < v < x_last.
    let right = x.partition_point(|&xi| xi <= v);
    let left = right - 1;
    let span = x[right] - x[left];
    if span <= 0.0 {
        return y[right];
    }
    y[left] + (y[right] - y[left]) * (v - x[left]) / span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn platt_matches_the_formula() {
        let cal = Calibration::Platt { a: 1.5, b: -0.25 };
        for p in [0.01f64, 0.2, 0.5, 0.77, 0.999] {
            let z = (p / (1.0 - p)).ln();
            let want = 1.0 / (1.0 + (-(1.5 * z - 0.25f64)).exp());
            assert!(close(cal.apply(p), want), "p={p}");
        }
        // a = 1, b = 0 is the identity on (0, 1).
        let unit = Calibration::Platt { a: 1.0, b: 0.0 };
        assert!(close(unit.apply(0.3), 0.3));
    }

    #[test]
    fn platt_clamps_certain_probabilities() {
        let cal = Calibration::Platt { a: 1.0, b: 0.0 };
        assert!(close(cal.apply(0.0), PROBABILITY_CLAMP));
        assert!((cal.apply(1.0) - (1.0 - PROBABILITY_CLAMP)).abs() < 1e-12);
        assert!(cal.apply(0.0).is_finite() && cal.apply(1.0).is_finite());
    }

    #[test]
    fn isotonic_interpolates_and_clamps_at_the_ends() {
        let cal = Calibration::Isotonic { x: vec![0.1, 0.5, 0.9], y: vec![0.0, 0.4, 1.0] };
        assert!(close(cal.apply(0.0), 0.0));
        assert!(close(cal.apply(0.1), 0.0));
        assert!(close(cal.apply(0.3), 0.2));
        assert!(close(cal.apply(0.5), 0.4));
        assert!(close(cal.apply(0.7), 0.7));
        assert!(close(cal.apply(0.95), 1.0));
        // A vertical step takes the right-hand value, as numpy does.
        let step = Calibration::Isotonic { x: vec![0.0, 0.5, 0.5, 1.0], y: vec![0.0, 0.2, 0.8, 1.0] };
        assert!(close(step.apply(0.5), 0.8));
        assert!(close(step.apply(0.25), 0.1));
    }

    #[test]
    fn identity_returns_the_raw_probability() {
        assert!(close(Calibration::Identity.apply(0.42), 0.42));
    }

    #[test]
    fn parses_the_manifest_forms() {
        let platt: Calibration = serde_json::from_str(r#"{"method":"platt","a":0.5,"b":1.0}"#).expect("platt parses");
        assert_eq!(platt, Calibration::Platt { a: 0.5, b: 1.0 });
        let iso: Calibration = serde_json::from_str(r#"{"method":"isotonic","x":[0,1],"y":[0,1]}"#).expect("isotonic parses");
        assert_eq!(iso, Calibration::Isotonic { x: vec![0.0, 1.0], y: vec![0.0, 1.0] });
        let id: Calibration = serde_json::from_str(r#"{"method":"identity"}"#).expect("identity parses");
        assert_eq!(id, Calibration::Identity);
        assert!(serde_json::from_str::<Calibration>(r#"{"method":"beta"}"#).is_err());
    }

    #[test]
    fn validate_refuses_bad_parameters() {
        assert!(Calibration::Platt { a: f64::NAN, b: 0.0 }.validate().is_err());
        assert!(Calibration::Isotonic { x: vec![], y: vec![] }.validate().is_err());
        assert!(Calibration::Isotonic { x: vec![0.0, 1.0], y: vec![0.0] }.validate().is_err());
        assert!(Calibration::Isotonic { x: vec![0.5, 0.1], y: vec![0.0, 1.0] }.validate().is_err());
        assert!(Calibration::Isotonic { x: vec![0.0, 1.0], y: vec![0.0, 1.5] }.validate().is_err());
        assert!(Calibration::Isotonic { x: vec![0.0, 1.0], y: vec![0.0, 1.0] }.validate().is_ok());
        assert!(Calibration::Platt { a: 1.0, b: 0.0 }.validate().is_ok());
    }
}
