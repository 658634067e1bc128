//! A JSON text as the engine stored it, written out as it is: what every rendering of a
//! payload or a step's result shares (a leaf: it uses nothing else of the crate).

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON text the engine stored (a payload), written out as it is: a string when it
/// is not JSON, null when empty.
pub struct StoredJson<'a>(pub &'a str);

impl Serialize for StoredJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            return serializer.serialize_none();
        }
        match serde_json::from_str::<&RawValue>(self.0) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(self.0),
        }
    }
}
