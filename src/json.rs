//! Limits on the JSON the vault stores in its text columns (preferences,
//! session data, audit details): what it writes, it must read back.
//! serde_json refuses to parse more than 128 levels of nesting, so a
//! document deeper than that would be stored and then unreadable.

use serde_json::Value;

use crate::{Error, Result};

/// The deepest nesting of arrays and objects stored in a JSON column.
pub(crate) const MAX_DEPTH: usize = 64;

/// Whether `value` nests more than `levels` levels of arrays and objects.
/// Stops looking at the limit, so a hostile depth cannot exhaust the stack.
pub(crate) fn deeper_than(value: &Value, levels: usize) -> bool {
    let mut children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Object(map) => Box::new(map.values()),
        Value::Array(items) => Box::new(items.iter()),
        _ => return false,
    };
    levels == 0 || children.any(|v| deeper_than(v, levels - 1))
}

/// Refuses serialized JSON for the field `what` that is longer than
/// `max_bytes` (the setting `limit` says so) or nested deeper than
/// [`MAX_DEPTH`] levels.
pub(crate) fn check_text(
    what: &'static str,
    text: &str,
    max_bytes: usize,
    limit: &str,
) -> Result<()> {
    if text.len() > max_bytes {
        return Err(Error::invalid(
            what,
            format!(
                "{} bytes of JSON is more than {limit} ({max_bytes})",
                text.len()
            ),
        ));
    }
    let too_deep = || Error::invalid(what, format!("nested deeper than {MAX_DEPTH} levels"));
    // Text serde_json wrote fails to parse only past its own depth limit.
    let value: Value = serde_json::from_str(text).map_err(|_| too_deep())?;
    if deeper_than(&value, MAX_DEPTH) {
        return Err(too_deep());
    }
    Ok(())
}
