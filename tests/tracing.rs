//! Tracing: every facet operation runs in a span named `<facet>.<op>`,
//! at `debug` (`trace` for the hot reads), and records its outcome; no span
//! field holds a secret. A layer captures the spans made on this thread.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// A span: its name, level and fields (with what was recorded later).
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    level: Level,
    fields: BTreeMap<String, String>,
}

/// Every statevault span made on this thread, in order. Spans are kept from
/// their start, not their close: a span may close later, on another thread,
/// when the last clone of it (a driver's worker may hold one) is dropped.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Spans>>,
}

/// The spans in order, and where each live id's span is.
type Spans = (Vec<Seen>, HashMap<Id, usize>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let meta = attrs.metadata();
        if !meta.target().starts_with("statevault") {
            return;
        }
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        let index = spans.0.len();
        spans.0.push(Seen {
            name: meta.name().to_owned(),
            level: *meta.level(),
            fields,
        });
        spans.1.insert(id.clone(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some(&index) = spans.1.get(id) {
            values.record(&mut Fields(&mut spans.0[index].fields));
        }
    }
}

#[tokio::test]
async fn every_operation_has_a_span_with_its_outcome() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    let dir = common::tempdir();
    let secrets = common::every_operation(dir.path()).await;
    drop(guard);
    let spans = capture.spans.lock().unwrap().0.clone();

    let outcomes = |name: &str| -> Vec<String> {
        spans
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.fields.get("outcome").cloned().unwrap_or_default())
            .collect()
    };
    let has = |name: &str, outcome: &str| {
        assert!(
            outcomes(name).iter().any(|o| o == outcome),
            "no {name} span with outcome {outcome}: {:?}",
            outcomes(name)
        );
    };
    has("sessions.create", "ok");
    has("sessions.validate", "Valid");
    has("sessions.validate", "Unknown");
    has("sessions.validate", "Revoked");
    has("sessions.set_data", "ok");
    has("sessions.rotate", "ok");
    has("sessions.regenerate", "ok");
    has("sessions.revoke", "revoked");
    has("sessions.revoke_user", "ok");
    has("cache.get", "hit");
    has("cache.get", "miss");
    has("cache.set", "ok");
    has("cache.delete", "deleted");
    has("cache.invalidate_tag", "ok");
    has("cache.clear_user", "ok");
    has("cache.clear", "ok");
    has("limits.check", "allowed");
    has("limits.check", "refused");
    has("limits.reset", "ok");
    has("audit.append", "ok");
    has("audit.append_durable", "ok");
    has("audit.verify", "ok");
    has("preferences.get", "ok");
    has("preferences.patch", "ok");
    has("metrics.flush", "ok");
    has("vault.flush", "ok");
    has("vault.sweep", "ok");
    has("vault.backup", "ok");
    has("vault.erase_user", "ok");
    has("vault.close", "ok");

    // Hot reads at trace, everything else at debug.
    for span in &spans {
        let hot = [
            "sessions.validate",
            "cache.get",
            "cache.exists",
            "limits.check",
        ];
        if span.name.contains('.') {
            let want = if hot.contains(&span.name.as_str()) {
                Level::TRACE
            } else {
                Level::DEBUG
            };
            assert_eq!(span.level, want, "{span:?}");
        }
    }
    // What spans name, and what they never hold.
    let get = spans.iter().find(|s| s.name == "cache.get").unwrap();
    assert!(get.fields["key"].contains("home"), "{get:?}");
    let every_field = format!("{spans:?}");
    for secret in &secrets {
        assert!(!every_field.contains(secret.as_str()), "{secret} in a span");
    }
    assert!(!every_field.contains("203.0.113.7"), "an IP in a span");
}
