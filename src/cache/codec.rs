//! How L2 stores a value: tiny values raw, others zstd-compressed, with
//! contexts made once per thread and reused (a fresh context per call costs
//! more than the point read it serves).
//!
//! Literals are stored without Huffman coding: on small JSON values the
//! decoder spends most of its time building the per-frame Huffman table, and
//! leaving it out makes both directions markedly faster for somewhat larger
//! blobs. Any zstd decoder reads both forms.

use std::cell::RefCell;

/// How a value is stored: tiny values raw, others zstd-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Raw,
    Zstd,
}

impl Codec {
    /// The codec's name as the `codec` column holds it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encodes a value: raw below `raw_below` bytes or when zstd does not make it
/// smaller, zstd at `level` otherwise.
pub(crate) fn encode(value: &[u8], level: i32, raw_below: usize) -> (Codec, Vec<u8>) {
    if value.len() < raw_below {
        return (Codec::Raw, value.to_vec());
    }
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = compressor(level).ok().map(|c| (level, c));
        }
        slot.as_mut().and_then(|(_, c)| c.compress(value).ok())
    });
    match compressed {
        Some(c) if c.len() < value.len() => (Codec::Zstd, c),
        _ => (Codec::Raw, value.to_vec()),
    }
}

/// A zstd context at `level` that leaves literals without Huffman coding
/// (see the module docs).
fn compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::LiteralCompressionMode(
        zstd::zstd_safe::ParamSwitch::Disable,
    ))?;
    Ok(c)
}

/// Decodes a stored value of `size` bytes; `Err` says what is wrong with it.
pub(crate) fn decode(codec: &str, stored: &[u8], size: i64, max: usize) -> Result<Vec<u8>, String> {
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= max)
        .ok_or_else(|| format!("recorded size {size} is out of range"))?;
    let value = match codec {
        "raw" => stored.to_vec(),
        "zstd" => DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            let d = slot.as_mut().ok_or("no zstd context")?;
            d.decompress(stored, size).map_err(|e| format!("zstd: {e}"))
        })?,
        other => return Err(format!("unknown codec {other:?}")),
    };
    if value.len() != size {
        return Err(format!(
            "value is {} bytes, the row says {size}",
            value.len()
        ));
    }
    Ok(value)
}
