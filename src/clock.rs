//! Time, injected.
//!
//! Every TTL, expiry, refill, rotation and retention decision in statevault
//! reads the vault's [`Clock`], never the system time directly, so tests step
//! a [`FakeClock`] instead of sleeping. Times are [`Timestamp`]s: milliseconds
//! since the Unix epoch, saturating at the ends of the range the file can show.
//!
//! In the file a timestamp is RFC 3339 UTC text with milliseconds
//! (`2026-11-23T05:23:17.123Z`): fixed width, so it sorts and compares as text,
//! and an operator reads it as a date in any SQLite shell.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time. Must not panic; saturates at [`Timestamp::MIN`] / [`Timestamp::MAX`].
    fn now(&self) -> Timestamp;

    /// The current time to within a few milliseconds, where that is cheaper
    /// (default: [`now`](Clock::now)): for hot paths where a full clock read
    /// costs more than the work itself, such as a cache L1 hit's expiry check
    /// or putting a metrics record in its interval.
    fn now_coarse(&self) -> Timestamp {
        self.now()
    }
}

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// Limited to the years 0000–9999 so that its text form always has the same
/// width; arithmetic saturates at those ends instead of overflowing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 0000-01-01T00:00:00.000Z
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000);
    /// 9999-12-31T23:59:59.999Z
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);
    /// 1970-01-01T00:00:00.000Z
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// The timestamp `ms` milliseconds after the epoch, clamped to the valid range.
    pub const fn from_millis(ms: i64) -> Self {
        if ms < Self::MIN.0 {
            Self::MIN
        } else if ms > Self::MAX.0 {
            Self::MAX
        } else {
            Timestamp(ms)
        }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self::from_millis(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating at [`Timestamp::MIN`].
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self::from_millis(self.0.saturating_sub(ms))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    /// The text form stored in the file: `2026-11-23T05:23:17.123Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Parses the text form (any RFC 3339 time; converted to UTC).
    pub fn parse(text: &str) -> Result<Self, crate::Error> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Self::from_millis(t.timestamp_millis()))
            .map_err(|e| crate::Error::invalid("timestamp", format!("{text:?}: {e}")))
    }

    fn to_datetime(self) -> DateTime<Utc> {
        // In range by construction: MIN..=MAX is inside chrono's range.
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self::from_millis(t.timestamp_millis())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl sqlx::Type<sqlx::Sqlite> for Timestamp {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Sqlite> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::sqlite::SqliteArgumentsBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <String as sqlx::Encode<sqlx::Sqlite>>::encode(self.to_rfc3339(), buf)
    }
}

impl sqlx::Decode<'_, sqlx::Sqlite> for Timestamp {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Sqlite>>::decode(value)?;
        Ok(Timestamp::parse(text)?)
    }
}

/// `timestamptz`, through chrono (PostgreSQL keeps microseconds; a
/// timestamp has milliseconds).
#[cfg(feature = "postgres")]
impl sqlx::Type<sqlx::Postgres> for Timestamp {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

#[cfg(feature = "postgres")]
impl sqlx::postgres::PgHasArrayType for Timestamp {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

#[cfg(feature = "postgres")]
impl sqlx::Encode<'_, sqlx::Postgres> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <DateTime<Utc> as sqlx::Encode<sqlx::Postgres>>::encode(self.to_datetime(), buf)
    }
}

#[cfg(feature = "postgres")]
impl sqlx::Decode<'_, sqlx::Postgres> for Timestamp {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(<DateTime<Utc> as sqlx::Decode<sqlx::Postgres>>::decode(value)?.into())
    }
}

impl rusqlite::ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.to_rfc3339().into())
    }
}

impl rusqlite::types::FromSql for Timestamp {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        Timestamp::parse(text).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

/// The real clock: the system's wall time.
///
/// If the wall clock steps backwards, `now` goes backwards with it; the facets
/// treat a negative elapsed time as zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Straight from the system time to milliseconds: half the cost of
        // going through chrono's calendar types, which metrics pay per record.
        #[allow(clippy::disallowed_methods)] // the one place that reads the system time
        let now = std::time::SystemTime::now();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => Timestamp::from_millis(ms(after)),
            // Before 1970 (a broken clock): round down, as chrono does.
            Err(before) => Timestamp::from_millis(
                -i64::try_from(before.duration().as_nanos().div_ceil(1_000_000))
                    .unwrap_or(i64::MAX),
            ),
        }
    }

    /// `CLOCK_REALTIME_COARSE` (Linux: the time of the last tick, 1–4 ms
    /// old, a few nanoseconds to read instead of tens).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn now_coarse(&self) -> Timestamp {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        Timestamp::from_millis(
            t.tv_sec
                .saturating_mul(1000)
                .saturating_add(t.tv_nsec / 1_000_000),
        )
    }
}

/// A clock that moves only when told to. Clones share one time, so a test
/// keeps a clone and [`advance`](FakeClock::advance)s the vault's clock.
///
/// ```
/// use std::time::Duration;
/// use statevault::{Clock, FakeClock, Timestamp};
///
/// let clock = FakeClock::new(Timestamp::from_millis(1_000));
/// let seen_by_vault = clock.clone();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(seen_by_vault.now().as_millis(), 61_000);
/// ```
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<AtomicI64>);

impl FakeClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        FakeClock(Arc::new(AtomicI64::new(start.as_millis())))
    }

    /// Moves the clock forward by `d` (saturating).
    pub fn advance(&self, d: Duration) {
        let now = self.now().saturating_add(d);
        self.set(now);
    }

    /// Sets the clock to `t` (which may be earlier than now).
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_millis(), Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    /// A clock stopped at 2026-01-01T00:00:00Z.
    fn default() -> Self {
        FakeClock::new(Timestamp::from_millis(1_767_225_600_000))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_fixed_width_and_round_trips() {
        for ms in [Timestamp::MIN.0, -1, 0, 1_767_225_600_123, Timestamp::MAX.0] {
            let t = Timestamp::from_millis(ms);
            let text = t.to_rfc3339();
            assert_eq!(text.len(), 24, "{text}");
            assert_eq!(Timestamp::parse(&text).unwrap(), t);
        }
    }

    #[test]
    fn text_order_is_time_order() {
        let a = Timestamp::from_millis(999).to_rfc3339();
        let b = Timestamp::from_millis(1_000).to_rfc3339();
        let c = Timestamp::from_millis(86_400_000 * 365).to_rfc3339();
        assert!(a < b && b < c);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::MAX.saturating_add(Duration::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::MIN.saturating_sub(Duration::MAX), Timestamp::MIN);
        assert_eq!(Timestamp::from_millis(i64::MIN), Timestamp::MIN);
        let t = Timestamp::from_millis(5);
        assert_eq!(t.duration_since(Timestamp::from_millis(10)), Duration::ZERO);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let t = Timestamp::from_millis(1_767_225_600_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-01-01T00:00:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn bad_text_is_an_error() {
        assert!(matches!(
            Timestamp::parse("yesterday"),
            Err(crate::Error::InvalidInput {
                what: "timestamp",
                ..
            })
        ));
    }
}
