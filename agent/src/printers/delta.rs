//! Partial reports of network printers (Moonraker status updates, Bambu P1/A1 pushes send only
//! what changed) merged into the last known state. Pure.

use serde_json::{Map, Value};

/// Merges `delta` into `into`, objects field by field; any other value replaces the old one.
pub(super) fn merge(into: &mut Map<String, Value>, delta: &Map<String, Value>) {
    for (k, v) in delta {
        match (into.get_mut(k), v) {
            (Some(Value::Object(old)), Value::Object(new)) => merge(old, new),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}
