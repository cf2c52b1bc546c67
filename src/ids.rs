//! The one rule for the ids that name a user (sessions, preferences, cache
//! entries, audit events, export and erasure) or a rate-limit subject:
//! 1 to [`MAX_ID_BYTES`] bytes of UTF-8 with no control characters. Every
//! facet checks it on every call that takes an id, reads included, so an
//! id is refused the same way wherever it is given; what the rule refuses
//! is never stored, and never echoed to a terminal as it is.

use crate::{Error, Result};

/// The longest user id or subject accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Checks a user id.
pub(crate) fn check_user(id: &str) -> Result<()> {
    check("user_id", id)
}

/// Checks a rate-limit subject (a user id, an API key id, an IP …).
pub(crate) fn check_subject(id: &str) -> Result<()> {
    check("subject", id)
}

fn check(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(what, "empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            what,
            format!("{} bytes is more than {MAX_ID_BYTES}", id.len()),
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            what,
            format!("contains the control character {}", c.escape_default()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_to_256_bytes_without_control_characters() {
        for good in ["a", "ü", "user@example.com", "\u{202e}x", &"u".repeat(256)] {
            assert!(check_user(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a\u{0}", "a\tb", "\u{7f}", "\u{85}", &"u".repeat(257)] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
