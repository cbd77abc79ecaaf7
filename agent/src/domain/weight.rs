//! Filament weights held as whole milligrams so that reservations and deductions add up exactly.
//!
//! JSON carries grams as numbers; whole grams are written back as integers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest weight accepted anywhere: 1,000 kg of filament is far beyond any spool or job.
const MAX_MILLIGRAMS: u64 = 1_000_000_000;

/// A weight in grams, stored as milligrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Grams(u64);

impl Grams {
    pub const ZERO: Grams = Grams(0);

    pub fn from_milligrams(mg: u64) -> Grams {
        Grams(mg)
    }

    pub fn milligrams(self) -> u64 {
        self.0
    }

    /// Converts a JSON number of grams; `None` for negative, non-finite or absurdly large values.
    pub fn from_grams_f64(g: f64) -> Option<Grams> {
        if !g.is_finite() || g < 0.0 {
            return None;
        }
        let mg = (g * 1000.0).round();
        if mg > MAX_MILLIGRAMS as f64 {
            return None;
        }
        Some(Grams(mg as u64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    pub fn saturating_sub(self, other: Grams) -> Grams {
        Grams(self.0.saturating_sub(other.0))
    }

    pub fn checked_add(self, other: Grams) -> Option<Grams> {
        self.0.checked_add(other.0).map(Grams)
    }
}

impl std::fmt::Display for Grams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{} g", self.0 / 1000)
        } else {
            write!(f, "{} g", self.as_f64())
        }
    }
}

impl Serialize for Grams {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(1000) {
            s.serialize_u64(self.0 / 1000)
        } else {
            s.serialize_f64(self.as_f64())
        }
    }
}

impl<'de> Deserialize<'de> for Grams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Grams, D::Error> {
        let g = f64::deserialize(d)?;
        Grams::from_grams_f64(g).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "weight must be a number of grams between 0 and {}, got {g}",
                MAX_MILLIGRAMS / 1000
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_grams_serialize_as_integers_and_fractions_keep_their_digits() {
        assert_eq!(
            serde_json::to_string(&Grams::from_grams_f64(1000.0).unwrap()).unwrap(),
            "1000"
        );
        assert_eq!(
            serde_json::to_string(&Grams::from_grams_f64(5.02).unwrap()).unwrap(),
            "5.02"
        );
        let sum = Grams::from_grams_f64(1000.0)
            .unwrap()
            .saturating_sub(Grams::from_grams_f64(5.02).unwrap());
        assert_eq!(serde_json::to_string(&sum).unwrap(), "994.98");
    }

    #[test]
    fn negative_and_non_finite_weights_are_refused() {
        assert!(Grams::from_grams_f64(-0.5).is_none());
        assert!(Grams::from_grams_f64(f64::NAN).is_none());
        assert!(Grams::from_grams_f64(f64::INFINITY).is_none());
        assert!(Grams::from_grams_f64(2e9).is_none());
        assert!(serde_json::from_str::<Grams>("-1").is_err());
    }
}
