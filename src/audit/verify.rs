//! Walking the chain: each link in `seq` order, then the checks that need
//! the whole walk (tombstones, the recorded head, the retention anchor). See
//! the module docs of [`audit`](super) for what each check catches.

use std::collections::BTreeSet;

use super::backend::{ChainRow, ChainVisitor};
use super::chain::{self, GENESIS};
use super::types::{BrokenLink, ChainReport, StoredEvent};
use crate::Result;

/// What the walk has seen so far.
struct Walk {
    report: ChainReport,
    /// The last link checked: its `seq` and chain digest.
    prev: (i64, [u8; 32]),
    /// Erased rows, to be named by a later erasure event.
    erased_rows: Vec<i64>,
    /// Rows the erasure events name.
    named_erased: BTreeSet<i64>,
    /// The anchor named by the newest retention event.
    last_retention_anchor: Option<String>,
}

/// Verifies the chain as the backend reads it, one row at a time: only
/// what the checks of the ends need is kept (the erased rows' `seq`s).
pub(crate) struct Verifier {
    /// The start of the chain as `vault_meta` records it, parsed.
    anchor: Option<(i64, [u8; 32])>,
    /// The end of the chain as the last write recorded it.
    head: Option<String>,
    walk: Walk,
}

impl Verifier {
    pub(crate) fn new() -> Self {
        Verifier {
            anchor: None,
            head: None,
            walk: Walk {
                report: ChainReport {
                    ok: true,
                    events: 0,
                    erased: 0,
                    first_seq: None,
                    last_seq: None,
                    head_digest: None,
                    broken: None,
                },
                prev: GENESIS,
                erased_rows: Vec::new(),
                named_erased: BTreeSet::new(),
                last_retention_anchor: None,
            },
        }
    }

    /// The report, once the backend has handed over every row (or the walk
    /// stopped at a broken link).
    pub(crate) fn report(self) -> ChainReport {
        let mut report = self.walk.finish(self.anchor, self.head.as_deref());
        report.ok = report.broken.is_none();
        report
    }
}

impl ChainVisitor for Verifier {
    fn ends(&mut self, anchor: Option<String>, head: Option<String>) -> Result<()> {
        self.anchor = anchor.as_deref().map(chain::parse_anchor).transpose()?;
        self.walk.prev = self.anchor.unwrap_or(GENESIS);
        self.head = head;
        Ok(())
    }

    fn row(&mut self, row: Result<ChainRow>) -> Result<bool> {
        let row = row?;
        let event = row.event.to_event()?;
        if let Some(link) = check_link(&row, &event, self.walk.prev) {
            self.walk.report.ok = false;
            self.walk.report.broken = Some(link);
            return Ok(false);
        }
        self.walk.record(&row, &event);
        Ok(true)
    }
}

/// Whether `row` follows the link `prev` (its `seq` and chain digest): the
/// next `seq`, the content its digest says (unless erased), and a chain
/// digest made from the previous one.
fn check_link(row: &ChainRow, event: &StoredEvent, prev: (i64, [u8; 32])) -> Option<BrokenLink> {
    let (prev_seq, prev_digest) = prev;
    let seq = event.seq;
    let broken = |reason: String| BrokenLink { seq, reason };
    if seq != prev_seq + 1 {
        return Some(broken(format!(
            "expected event {} next: events are missing or out of order",
            prev_seq + 1
        )));
    }
    if event.erased_at.is_none() && row.content().digest()[..] != row.content_digest[..] {
        return Some(broken("content changed: its digest does not match".into()));
    }
    let digest = chain::digest32(&row.content_digest);
    (chain::chain(&prev_digest, seq, &digest)[..] != row.chain_digest[..])
        .then(|| broken("chain digest does not follow from the previous event".into()))
}

impl Walk {
    /// Counts a link that holds and notes what later checks need of it.
    fn record(&mut self, row: &ChainRow, event: &StoredEvent) {
        let seq = event.seq;
        if event.erased_at.is_some() {
            self.report.erased += 1;
            self.erased_rows.push(seq);
        }
        if event.kind == "admin" && event.action == "erasure" {
            self.named_erased.extend(erased_seqs(&event.details));
        }
        if event.kind == "admin" && event.action == "retention" {
            self.last_retention_anchor = event
                .details
                .get("anchor")
                .and_then(|a| a.as_str())
                .map(str::to_owned);
        }
        self.report.events += 1;
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);
        self.prev = (seq, chain::digest32(&row.chain_digest));
    }

    /// The report once every link held so far: the head digest, and the
    /// checks that need the whole walk.
    fn finish(self, anchor: Option<(i64, [u8; 32])>, head: Option<&str>) -> ChainReport {
        let mut report = self.report;
        if report.broken.is_some() {
            return report;
        }
        report.head_digest = report
            .last_seq
            .map(|_| crate::key::hex(&self.prev.1).to_string());
        report.broken = check_ends(
            &report,
            anchor,
            head,
            self.last_retention_anchor.as_deref(),
            &self.erased_rows,
            &self.named_erased,
        );
        report
    }
}

/// The checks that need the whole walk: tombstones named by erasure events,
/// the head recorded at the last write, the retention anchor.
fn check_ends(
    report: &ChainReport,
    anchor: Option<(i64, [u8; 32])>,
    head: Option<&str>,
    last_retention_anchor: Option<&str>,
    erased_rows: &[i64],
    named_erased: &BTreeSet<i64>,
) -> Option<BrokenLink> {
    if let Some(seq) = erased_rows.iter().find(|s| !named_erased.contains(s)) {
        return Some(BrokenLink {
            seq: *seq,
            reason: "marked erased, but no erasure event names it".into(),
        });
    }
    let end = report.last_seq.unwrap_or(anchor.map_or(0, |a| a.0));
    let expected_head = report
        .last_seq
        .map(|seq| format!("{seq} {}", report.head_digest.as_deref().unwrap_or("")));
    if head.map(str::to_owned) != expected_head {
        return Some(BrokenLink {
            seq: end,
            reason: format!(
                "the log ends at {} but the last write recorded {}",
                expected_head.as_deref().unwrap_or("nothing"),
                head.unwrap_or("nothing")
            ),
        });
    }
    if let Some((seq, digest)) = anchor {
        let recorded = chain::link_text(seq, &digest);
        if last_retention_anchor != Some(recorded.as_str()) {
            return Some(BrokenLink {
                seq: seq + 1,
                reason: "the log's start does not match the last retention event".into(),
            });
        }
    }
    None
}

/// The `seq`s an erasure event's details name.
fn erased_seqs(details: &serde_json::Value) -> Vec<i64> {
    details
        .get("erased_seqs")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
        .unwrap_or_default()
}
