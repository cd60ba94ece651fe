//! Pure-Rust decompression of the codecs Kafka writes: gzip, snappy (raw and
//! xerial-framed), lz4 frames and zstd, each bounded in the memory it may take.

use std::io::Read;

/// The most a snappy block can grow by: a 3-byte copy element writes 64 bytes.
/// A larger claimed length is corrupt, and is refused before allocating it.
const SNAPPY_MAX_RATIO: usize = 22;

/// The most a streamed codec (gzip, lz4, zstd) may decompress one batch to: they
/// give no length up front, and corrupt or hostile data must not exhaust memory.
const MAX_DECOMPRESSED: usize = 256 << 20;

/// Reads `decoder` to its end onto `out`, up to [`MAX_DECOMPRESSED`] in all.
pub(super) fn read_limited(decoder: impl Read, out: &mut Vec<u8>) -> Result<(), String> {
    let room = MAX_DECOMPRESSED.saturating_sub(out.len()) as u64;
    decoder
        .take(room + 1)
        .read_to_end(out)
        .map_err(|e| e.to_string())?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(format!(
            "it decompresses to more than {} MiB",
            MAX_DECOMPRESSED >> 20
        ));
    }
    Ok(())
}

/// Decompresses `data` into `out`, whose old contents are overwritten.
pub(super) fn gunzip(data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    read_limited(flate2::read::MultiGzDecoder::new(data), out)
}

/// Decompresses LZ4 frames (Kafka's framing since KIP-57) into `out`.
pub(super) fn unlz4(data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    read_limited(lz4_flex::frame::FrameDecoder::new(data), out)
}

/// Decompresses zstd frames, one after another, into `out`.
pub(super) fn unzstd(data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut rest = data;
    while !rest.is_empty() {
        let before = rest.len();
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut rest).map_err(|e| e.to_string())?;
        read_limited(decoder, out)?;
        if rest.len() == before {
            return Err("a zstd frame read no input".to_owned());
        }
    }
    Ok(())
}

/// The framing older Java clients (snappy-java's `SnappyOutputStream`) wrote.
pub(super) const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

/// Decompresses `data` into `out`, whose old contents are overwritten: `out` is
/// sized once, so a reused buffer is not zero-filled first.
pub(super) fn unsnappy(data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let blocks = snappy_blocks(data)?;
    let mut total = 0;
    for block in &blocks {
        let length = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
        if length > block.len().saturating_mul(SNAPPY_MAX_RATIO) + 64 {
            return Err(format!(
                "a {}-byte snappy block claims {length} bytes uncompressed",
                block.len()
            ));
        }
        total += length;
    }
    out.resize(total, 0);
    let mut decoder = snap::raw::Decoder::new();
    let mut at = 0;
    for block in blocks {
        at += decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| e.to_string())?;
    }
    out.truncate(at);
    Ok(())
}

/// The raw snappy blocks of a batch: the whole of it, or the blocks of the
/// xerial framing (magic, version and compatible version, then blocks each
/// after its length).
fn snappy_blocks(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let Some(framed) = data.strip_prefix(XERIAL_MAGIC) else {
        return Ok(vec![data]);
    };
    let mut rest = framed.get(8..).ok_or("xerial snappy header is truncated")?;
    let mut blocks = Vec::new();
    while !rest.is_empty() {
        let (length, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("xerial snappy block length is truncated")?;
        let length = u32::from_be_bytes(*length) as usize;
        let block = tail
            .get(..length)
            .ok_or("xerial snappy block is truncated")?;
        blocks.push(block);
        rest = &tail[length..];
    }
    Ok(blocks)
}
