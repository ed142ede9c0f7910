//! Deserialisation helpers that give messages a user can act on.

use serde::{Deserialize, Deserializer};

/// A list of non-negative integers, with "expected a list of integers" on anything else.
pub(crate) fn int_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let items = v
        .as_array()
        .ok_or_else(|| serde::de::Error::custom("expected a list of integers"))?;
    items
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| serde::de::Error::custom("expected a list of integers"))
        })
        .collect()
}
