//! The chain itself: an event's content digest, the chain digest that links
//! it to the one before, and a link as `vault_meta` records it (`<seq> <64
//! hex digits>`). Pure functions; the storage calls them.

use sha2::{Digest, Sha256};

use crate::Result;
use crate::clock::Timestamp;
use crate::core::meta;

/// Where a chain starts when nothing came before it.
pub(crate) const GENESIS: (i64, [u8; 32]) = (0, [0; 32]);

/// The hashed content of an event, in column order.
#[derive(Clone)]
pub(crate) struct Content {
    pub(crate) id: String,
    pub(crate) occurred_at: Timestamp,
    pub(crate) user_id: Option<String>,
    pub(crate) session_id: Option<String>,
    pub(crate) kind: String,
    pub(crate) action: String,
    pub(crate) resource_type: Option<String>,
    pub(crate) resource_id: Option<String>,
    pub(crate) details: String,
    pub(crate) gdpr_category: String,
    pub(crate) ip_hash: Option<Vec<u8>>,
    pub(crate) user_agent_hash: Option<Vec<u8>>,
}

impl Content {
    /// SHA-256 over every field, each length-prefixed (or marked absent).
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |value: Option<&[u8]>| match value {
            None => h.update([0u8]),
            Some(bytes) => {
                h.update([1u8]);
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(bytes);
            }
        };
        let occurred_at = self.occurred_at.to_rfc3339();
        field(Some(self.id.as_bytes()));
        field(Some(occurred_at.as_bytes()));
        field(self.user_id.as_deref().map(str::as_bytes));
        field(self.session_id.as_deref().map(str::as_bytes));
        field(Some(self.kind.as_bytes()));
        field(Some(self.action.as_bytes()));
        field(self.resource_type.as_deref().map(str::as_bytes));
        field(self.resource_id.as_deref().map(str::as_bytes));
        field(Some(self.details.as_bytes()));
        field(Some(self.gdpr_category.as_bytes()));
        field(self.ip_hash.as_deref());
        field(self.user_agent_hash.as_deref());
        h.finalize().into()
    }
}

/// The chain digest of event `seq`: it commits to the previous one.
pub(crate) fn chain(prev: &[u8; 32], seq: i64, content_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"statevault-audit-v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(content_digest);
    h.finalize().into()
}

/// One event linked into the chain.
pub(crate) struct Linked<'a> {
    pub(crate) seq: i64,
    pub(crate) content: &'a Content,
    pub(crate) content_digest: [u8; 32],
    pub(crate) chain_digest: [u8; 32],
}

/// Links `contents` after the chain's `end` (its last seq and chain
/// digest); returns them linked and the new end.
pub(crate) fn link<'a>(
    end: (i64, [u8; 32]),
    contents: &[&'a Content],
) -> (Vec<Linked<'a>>, (i64, [u8; 32])) {
    let (mut seq, mut prev) = end;
    let mut linked = Vec::with_capacity(contents.len());
    for content in contents {
        seq += 1;
        let content_digest = content.digest();
        prev = chain(&prev, seq, &content_digest);
        linked.push(Linked {
            seq,
            content,
            content_digest,
            chain_digest: prev,
        });
    }
    (linked, (seq, prev))
}

/// A link as `vault_meta` records it: `<seq> <hex digest>`.
pub(crate) fn link_text(seq: i64, digest: &[u8]) -> String {
    format!("{seq} {}", *crate::key::hex(digest))
}

/// The retention anchor `text` (`<seq> <64 hex digits>`) as (seq, digest).
pub(crate) fn parse_anchor(text: &str) -> Result<(i64, [u8; 32])> {
    let bad = || {
        meta::bad(
            meta::AUDIT_ANCHOR,
            format_args!("{text:?} is not '<seq> <64 hex digits>'"),
        )
    };
    let (seq, hex) = text.split_once(' ').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    let bytes = crate::key::parse_hex32(hex).ok_or_else(bad)?;
    Ok((seq, *bytes))
}

/// A stored digest as 32 bytes (zeros if it is not 32 bytes long: a row
/// holding such a digest never verifies).
pub(crate) fn digest32(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}
