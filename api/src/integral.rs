//! Integers as JSON Schema reads them: `3` and `3.0` are the same integer
//! (a schema's `"type": "integer"` accepts both), so a request field that
//! the schema calls an integer accepts a number with no fraction.

use serde::de::{Deserializer, Error, Unexpected};
use serde::Deserialize;

/// A JSON number that must be a whole number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Whole(u64),
    Negative(i64),
    Real(f64),
}

/// Deserializes an optional integer field, accepting `3.0` for `3`.
pub fn option<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    match Option::<Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => whole_of::<D::Error, T>(n).map(Some),
    }
}

/// Deserializes an integer field, accepting `3.0` for `3`.
pub fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    whole_of::<D::Error, T>(Number::deserialize(d)?)
}

/// Deserializes a list of integers, accepting `3.0` for `3`.
pub fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    Vec::<Number>::deserialize(d)?
        .into_iter()
        .map(whole_of::<D::Error, T>)
        .collect()
}

fn whole_of<E: Error, T: TryFrom<u64>>(n: Number) -> Result<T, E> {
    let whole = match n {
        Number::Whole(u) => u,
        Number::Negative(i) => {
            return Err(E::invalid_value(
                Unexpected::Signed(i),
                &"a whole number from 0",
            ))
        }
        // Whole and within u64: exact, as f64 holds every such integer
        // below 2^53 and the range check below catches the rest.
        Number::Real(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => f as u64,
        Number::Real(f) => return Err(E::invalid_value(Unexpected::Float(f), &"a whole number")),
    };
    T::try_from(whole)
        .map_err(|_| E::invalid_value(Unexpected::Unsigned(whole), &"a smaller number"))
}

#[cfg(test)]
mod tests {
    use crate::NewSettings;

    fn read(json: &str) -> Result<NewSettings, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn whole_numbers_read_with_or_without_a_fraction() {
        let s = read(r#"{"commit_interval_secs": 1347.0, "voters": 5}"#).expect("valid");
        assert_eq!((s.commit_interval_secs, s.voters), (Some(1347), Some(5)));
        let s = read(r#"{"commit_interval_secs": null}"#).expect("valid");
        assert_eq!(s.commit_interval_secs, None);
        assert_eq!(read("{}").expect("valid"), NewSettings::default());
    }

    #[test]
    fn fractions_negatives_and_overflows_are_refused() {
        for bad in [
            r#"{"commit_interval_secs": 1.5}"#,
            r#"{"commit_interval_secs": -1}"#,
            r#"{"commit_interval_secs": -1.0}"#,
            r#"{"voters": 256}"#,
            r#"{"voters": 3e300}"#,
            r#"{"voters": "3"}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}
