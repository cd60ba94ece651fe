//! Decodes the record batches of a fetch without copying keys and values.
//!
//! rskafka decodes every fetched key and value into a `Vec<u8>` of its own: one
//! allocation and one copy per field, and for compressed batches a second copy
//! out of the decompressed buffer. A 1 MiB fetch of snappy-compressed 1 KiB
//! records came to about 30,000 allocations, 30 MiB, decoded and freed again
//! within milliseconds, and glibc gave most of that memory back to the kernel
//! after each fetch only to fault it in for the next. Here a fetched record's key
//! and value are [`Bytes`] slices of the buffer they arrived in: the response
//! frame for an uncompressed batch, the batch's decompressed data otherwise.
//!
//! The format is Kafka's record batch, magic 2 (Kafka 0.11 and later); older
//! message sets are refused, as rskafka does. Every codec Kafka has is read, by
//! pure-Rust decoders: gzip, snappy (raw, and the xerial framing older Java
//! clients wrote), lz4 (frames, KIP-57) and zstd. As Kafka's consumer does with
//! `read_committed`, which is what a fetch asks for by default, transaction
//! markers are stepped over and the batches of aborted transactions dropped; a
//! `read_uncommitted` fetch is decoded with its transactions tagged instead.

use std::collections::BTreeMap;

use bytes::Bytes;
use rskafka::chrono::{DateTime, TimeZone, Utc};

mod compression;
mod pool;

use self::compression::{gunzip, unlz4, unsnappy, unzstd};
pub use self::pool::{BufferPool, POOL_IDLE};

/// Why fetched records could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// A field ran past the end of its batch.
    #[error("record batch at offset {base_offset} is truncated inside its {field}")]
    Truncated {
        /// The first offset of the batch.
        base_offset: i64,
        /// The field that was cut short.
        field: &'static str,
    },
    /// A batch's checksum does not match its bytes.
    #[error(
        "record batch at offset {base_offset} is corrupt: CRC {actual:#010x}, expected {expected:#010x}"
    )]
    Crc {
        /// The first offset of the batch.
        base_offset: i64,
        /// The checksum the batch carries.
        expected: u32,
        /// The checksum of its bytes.
        actual: u32,
    },
    /// A message set older than Kafka 0.11's record batches.
    #[error(
        "record batch at offset {base_offset} has magic {magic}; only magic 2 (Kafka 0.11+) is supported"
    )]
    Magic {
        /// The first offset of the batch.
        base_offset: i64,
        /// The format version it has.
        magic: i8,
    },
    /// A compression code Kafka does not define.
    #[error("record batch at offset {base_offset} has unknown compression code {codec}")]
    Codec {
        /// The first offset of the batch.
        base_offset: i64,
        /// The codec number it names.
        codec: i16,
    },
    /// The compressed data is invalid.
    #[error("record batch at offset {base_offset} cannot be decompressed: {reason}")]
    Decompress {
        /// The first offset of the batch.
        base_offset: i64,
        /// The decoder's error.
        reason: String,
    },
    /// A field holds a value the format does not allow.
    #[error("record batch at offset {base_offset} is malformed: {reason}")]
    Malformed {
        /// The first offset of the batch.
        base_offset: i64,
        /// What is wrong.
        reason: String,
    },
}

/// A fetched record. Its key and value share the memory of the batch they came
/// in, which stays allocated while any of them is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, sharing the fetched buffer.
    pub key: Option<Bytes>,
    /// Its value, sharing the fetched buffer.
    pub value: Option<Bytes>,
    /// Its headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Its timestamp: the broker's with `LogAppendTime`, the producer's otherwise.
    pub timestamp: DateTime<Utc>,
    /// Where it stands in a transaction; only a `read_uncommitted` read
    /// ([`decode_uncommitted`]) says, and then only for transactional batches.
    pub transaction: Option<InTransaction>,
}

/// What a `read_uncommitted` read says of a record's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InTransaction {
    /// Written in a transaction of this producer, which has not ended at
    /// this point of the log: it counts once the producer's next marker
    /// commits it.
    Record {
        /// The producer that wrote it.
        producer_id: i64,
    },
    /// The marker ending this producer's transaction (a control record,
    /// with no key or value): its records before this point are committed,
    /// or aborted.
    End {
        /// The producer whose transaction ended.
        producer_id: i64,
        /// Committed, or aborted.
        committed: bool,
    },
}

/// What one fetch of a partition returned.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The records, in offset order, without those of aborted transactions.
    pub records: Vec<FetchedRecord>,
    /// Where the next fetch starts: after the last whole batch, whether it held
    /// records or only a transaction marker, which a consumer must step over.
    /// `None` if no batch was whole.
    pub next_offset: Option<i64>,
}

/// Decodes the records at and after `from` in `data`, a partition's record
/// batches as a fetch returned them. A last batch cut off by the fetch's size
/// limit is left for the next fetch, as Kafka's consumers do; control batches
/// (transaction markers) are skipped, and so are the batches of the transactions
/// in `aborted` (`(producer id, first offset)`, as the fetch response lists
/// them), as Kafka's consumer does with `isolation.level=read_committed`.
/// Compressed batches are decompressed into buffers from `pool`.
pub fn decode(
    data: Bytes,
    from: i64,
    aborted: &[(i64, i64)],
    pool: &BufferPool,
) -> Result<Fetched, RecordsError> {
    decode_with(
        data,
        from,
        &mut Isolation::Committed(Aborted::new(aborted)),
        pool,
    )
}

/// Decodes as [`decode`] does the batches of a `read_uncommitted` fetch, which
/// holds open and aborted transactions too: their records come tagged with
/// their producer ([`InTransaction::Record`]), and each transaction marker
/// as a record of its own ([`InTransaction::End`]), for the reader to sort
/// out what counts, as Kafka's group coordinator does with transactional
/// offset commits.
pub fn decode_uncommitted(
    data: Bytes,
    from: i64,
    pool: &BufferPool,
) -> Result<Fetched, RecordsError> {
    decode_with(data, from, &mut Isolation::Uncommitted, pool)
}

/// How a read treats transactions.
enum Isolation {
    /// Drops the aborted ones, and steps over the markers.
    Committed(Aborted),
    /// Hands everything on, tagged.
    Uncommitted,
}

fn decode_with(
    data: Bytes,
    from: i64,
    isolation: &mut Isolation,
    pool: &BufferPool,
) -> Result<Fetched, RecordsError> {
    let mut fetched = Fetched::default();
    let mut rest = data;
    // baseOffset (8) and batchLength (4) precede every batch.
    while rest.len() >= 12 {
        let base_offset = i64::from_be_bytes(fixed(&rest[..8]));
        let length = i32::from_be_bytes(fixed(&rest[8..12]));
        let Ok(length) = usize::try_from(length) else {
            return Err(RecordsError::Malformed {
                base_offset,
                reason: format!("negative batch length {length}"),
            });
        };
        if rest.len() - 12 < length {
            break;
        }
        let batch = rest.slice(12..12 + length);
        rest = rest.slice(12 + length..);
        let last_offset = decode_batch(
            base_offset,
            batch,
            from,
            pool,
            isolation,
            &mut fetched.records,
        )?;
        fetched.next_offset = Some(last_offset + 1);
    }
    Ok(fetched)
}

/// The aborted transactions of a fetch, followed through its batches as Kafka's
/// consumer does: a transaction is open from its first offset until its abort
/// marker, and its producer's transactional batches in between are dropped.
#[derive(Debug)]
struct Aborted {
    /// Not reached yet, by first offset, the latest first.
    ahead: Vec<(i64, i64)>,
    /// Producers with an aborted transaction open.
    open: Vec<i64>,
}

impl Aborted {
    fn new(aborted: &[(i64, i64)]) -> Self {
        let mut ahead = aborted.to_vec();
        ahead.sort_unstable_by_key(|&(_, first)| std::cmp::Reverse(first));
        Self {
            ahead,
            open: Vec::new(),
        }
    }

    /// Opens the transactions that begin at or before `offset`.
    fn reach(&mut self, offset: i64) {
        while let Some(&(producer, first)) = self.ahead.last()
            && first <= offset
        {
            self.ahead.pop();
            if !self.open.contains(&producer) {
                self.open.push(producer);
            }
        }
    }

    fn is_open(&self, producer: i64) -> bool {
        self.open.contains(&producer)
    }

    fn close(&mut self, producer: i64) {
        self.open.retain(|&p| p != producer);
    }
}

/// Bytes of a batch after its length: partitionLeaderEpoch, magic, crc, then the
/// checked part from attributes on. Returns the batch's last offset.
fn decode_batch(
    base_offset: i64,
    batch: Bytes,
    from: i64,
    pool: &BufferPool,
    isolation: &mut Isolation,
    records: &mut Vec<FetchedRecord>,
) -> Result<i64, RecordsError> {
    let mut r = Reader::new(&batch, base_offset);
    r.take(4, "partition leader epoch")?;
    let magic = r.i8("magic")?;
    if magic != 2 {
        return Err(RecordsError::Magic { base_offset, magic });
    }
    let expected = r.u32("crc")?;
    let checked = r.pos;
    let actual = crc32c::crc32c(&batch[checked..]);
    if actual != expected {
        return Err(RecordsError::Crc {
            base_offset,
            expected,
            actual,
        });
    }
    let attributes = r.i16("attributes")?;
    let last_offset_delta = r.i32("last offset delta")?;
    let first_timestamp = r.i64("first timestamp")?;
    let max_timestamp = r.i64("max timestamp")?;
    let producer_id = r.i64("producer id")?;
    r.take(2 + 4, "producer epoch and base sequence")?;
    let count = r.i32("record count")?;
    let last_offset = base_offset + i64::from(last_offset_delta);
    let is_transactional = attributes & 0x10 != 0;
    let is_control = attributes & 0x20 != 0;
    let transaction = match isolation {
        Isolation::Committed(aborted) => {
            if producer_id >= 0 {
                aborted.reach(last_offset);
            }
            if is_control {
                if is_abort_marker(&batch[r.pos..], base_offset)? {
                    aborted.close(producer_id);
                }
                return Ok(last_offset);
            }
            if is_transactional && aborted.is_open(producer_id) {
                return Ok(last_offset);
            }
            None
        }
        Isolation::Uncommitted if is_control => {
            if base_offset >= from {
                let committed = !is_abort_marker(&batch[r.pos..], base_offset)?;
                records.push(FetchedRecord {
                    offset: base_offset,
                    key: None,
                    value: None,
                    headers: BTreeMap::new(),
                    timestamp: Utc
                        .timestamp_millis_opt(max_timestamp)
                        .single()
                        .unwrap_or_default(),
                    transaction: Some(InTransaction::End {
                        producer_id,
                        committed,
                    }),
                });
            }
            return Ok(last_offset);
        }
        Isolation::Uncommitted => is_transactional.then_some(InTransaction::Record { producer_id }),
    };
    if last_offset < from {
        return Ok(last_offset);
    }
    // LogAppendTime: the broker's time, kept once for the batch (as Kafka's own
    // consumer reports it), not the producer's per-record times.
    let log_append_time = (attributes & 0x08 != 0).then_some(max_timestamp);
    let body = batch.slice(r.pos..);
    let decompress = |codec: fn(&[u8], &mut Vec<u8>) -> Result<(), String>| {
        let mut buffer = pool.take();
        match codec(&body, &mut buffer.buf) {
            Ok(()) => Ok(Bytes::from_owner(buffer)),
            Err(reason) => Err(RecordsError::Decompress {
                base_offset,
                reason,
            }),
        }
    };
    let data = match attributes & 0x07 {
        0 => body,
        1 => decompress(gunzip)?,
        2 => decompress(unsnappy)?,
        3 => decompress(unlz4)?,
        4 => decompress(unzstd)?,
        codec => return Err(RecordsError::Codec { base_offset, codec }),
    };
    let count = usize::try_from(count).unwrap_or(0);
    // Capped: the count comes from the wire, and each record takes 7 bytes at least.
    records.reserve(count.min(data.len() / 7 + 1));
    let mut r = Reader::new(&data, base_offset);
    for _ in 0..count {
        let length = r.varint_len("record length")?;
        let end = r.pos + length;
        if end > data.len() {
            return Err(r.truncated("record"));
        }
        r.take(1, "record attributes")?;
        let timestamp_delta = r.varlong("timestamp delta")?;
        let offset_delta = r.varint("offset delta")?;
        let key = r.nullable(&data, "key")?;
        let value = r.nullable(&data, "value")?;
        let header_count = r.varint_len("header count")?;
        let mut headers = BTreeMap::new();
        for _ in 0..header_count {
            let name_len = r.varint_len("header key")?;
            let name = r.take(name_len, "header key")?;
            // Kafka's header keys are strings, but the protocol does not check
            // them: a key another client wrote as other bytes is read with
            // replacement characters rather than stopping the partition over
            // one header of one record.
            let name = String::from_utf8_lossy(name).into_owned();
            let value = r.nullable(&data, "header value")?;
            headers.insert(name, value.map(|v| v.to_vec()).unwrap_or_default());
        }
        if r.pos != end {
            return Err(RecordsError::Malformed {
                base_offset,
                reason: format!("record length {length} does not match its fields"),
            });
        }
        let offset = base_offset + i64::from(offset_delta);
        if offset < from {
            continue;
        }
        let millis = match log_append_time {
            Some(t) => t,
            None => first_timestamp
                .checked_add(timestamp_delta)
                .ok_or_else(|| RecordsError::Malformed {
                    base_offset,
                    reason: format!("timestamp {first_timestamp} + {timestamp_delta} overflows"),
                })?,
        };
        let timestamp =
            Utc.timestamp_millis_opt(millis)
                .single()
                .ok_or_else(|| RecordsError::Malformed {
                    base_offset,
                    reason: format!("timestamp {millis} is out of range"),
                })?;
        records.push(FetchedRecord {
            offset,
            key,
            value,
            headers,
            timestamp,
            transaction,
        });
    }
    Ok(last_offset)
}

/// Whether a control batch's record (its records are never compressed) is an
/// abort marker: its key is a version (int16) and a type, 0 for abort.
fn is_abort_marker(records: &[u8], base_offset: i64) -> Result<bool, RecordsError> {
    let mut r = Reader::new(records, base_offset);
    r.varint_len("control record length")?;
    r.take(1, "control record attributes")?;
    r.varlong("control record timestamp")?;
    r.varint("control record offset")?;
    let key_len = r.varint_len("control record key")?;
    let key = r.take(key_len, "control record key")?;
    match key {
        [_, _, 0, 0, ..] => Ok(true),
        [_, _, _, _, ..] => Ok(false),
        _ => Err(RecordsError::Malformed {
            base_offset,
            reason: format!("control record key of {} bytes", key.len()),
        }),
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// Reads the fields of one batch, naming the batch in its errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base_offset: i64,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], base_offset: i64) -> Self {
        Self {
            bytes,
            pos: 0,
            base_offset,
        }
    }

    fn truncated(&self, field: &'static str) -> RecordsError {
        RecordsError::Truncated {
            base_offset: self.base_offset,
            field,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RecordsError> {
        let bytes = self
            .bytes
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or_else(|| self.truncated(field))?;
        self.pos += n;
        Ok(bytes)
    }

    fn i8(&mut self, field: &'static str) -> Result<i8, RecordsError> {
        Ok(i8::from_be_bytes(fixed(self.take(1, field)?)))
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, RecordsError> {
        Ok(i16::from_be_bytes(fixed(self.take(2, field)?)))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, RecordsError> {
        Ok(i32::from_be_bytes(fixed(self.take(4, field)?)))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RecordsError> {
        Ok(u32::from_be_bytes(fixed(self.take(4, field)?)))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, RecordsError> {
        Ok(i64::from_be_bytes(fixed(self.take(8, field)?)))
    }

    /// A zigzag varlong, as the record fields are written.
    fn varlong(&mut self, field: &'static str) -> Result<i64, RecordsError> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1, field)?[0];
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(RecordsError::Malformed {
            base_offset: self.base_offset,
            reason: format!("{field} is a varint longer than 10 bytes"),
        })
    }

    fn varint(&mut self, field: &'static str) -> Result<i32, RecordsError> {
        let value = self.varlong(field)?;
        i32::try_from(value).map_err(|_| RecordsError::Malformed {
            base_offset: self.base_offset,
            reason: format!("{field} {value} does not fit 32 bits"),
        })
    }

    /// A length that may not be negative.
    fn varint_len(&mut self, field: &'static str) -> Result<usize, RecordsError> {
        let value = self.varint(field)?;
        usize::try_from(value).map_err(|_| RecordsError::Malformed {
            base_offset: self.base_offset,
            reason: format!("{field} has negative length {value}"),
        })
    }

    /// A varint length (-1 for null) and that many bytes, as a slice of `owner`,
    /// the buffer this reader reads.
    fn nullable(
        &mut self,
        owner: &Bytes,
        field: &'static str,
    ) -> Result<Option<Bytes>, RecordsError> {
        let length = self.varint(field)?;
        if length == -1 {
            return Ok(None);
        }
        let length = usize::try_from(length).map_err(|_| RecordsError::Malformed {
            base_offset: self.base_offset,
            reason: format!("{field} has length {length}"),
        })?;
        let start = self.pos;
        self.take(length, field)?;
        Ok(Some(owner.slice(start..start + length)))
    }
}

#[cfg(test)]
mod tests {
    use super::compression::{XERIAL_MAGIC, read_limited};
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn field(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
        match bytes {
            None => varint(out, -1),
            Some(b) => {
                varint(out, b.len() as i64);
                out.extend_from_slice(b);
            }
        }
    }

    struct Rec {
        key: Option<&'static [u8]>,
        value: Option<&'static [u8]>,
        headers: &'static [(&'static [u8], &'static [u8])],
    }

    const PLAIN: Rec = Rec {
        key: Some(b"k"),
        value: Some(b"value"),
        headers: &[],
    };

    fn record(offset_delta: i64, r: &Rec) -> Vec<u8> {
        let mut body = vec![0];
        varint(&mut body, offset_delta * 10);
        varint(&mut body, offset_delta);
        field(&mut body, r.key);
        field(&mut body, r.value);
        varint(&mut body, r.headers.len() as i64);
        for (name, value) in r.headers {
            field(&mut body, Some(name));
            field(&mut body, Some(value));
        }
        let mut out = Vec::new();
        varint(&mut out, body.len() as i64);
        out.extend(body);
        out
    }

    /// A batch as a broker sends it; the codec is in `attributes`' low bits.
    fn batch(base_offset: i64, attributes: i16, records: &[Rec]) -> Vec<u8> {
        batch_by(-1, base_offset, attributes, records)
    }

    /// A batch from `producer`; a transactional one has attribute bit 4.
    fn batch_by(producer: i64, base_offset: i64, attributes: i16, records: &[Rec]) -> Vec<u8> {
        let plain: Vec<u8> = (0..).zip(records).flat_map(|(i, r)| record(i, r)).collect();
        let data = match attributes & 7 {
            1 => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                gz.write_all(&plain).unwrap();
                gz.finish().unwrap()
            }
            2 => snap::raw::Encoder::new().compress_vec(&plain).unwrap(),
            3 => {
                let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
                lz4.write_all(&plain).unwrap();
                lz4.finish().unwrap()
            }
            4 => ruzstd::encoding::compress_to_vec(
                &plain[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            _ => plain,
        };
        let mut checked = Vec::new();
        checked.extend(attributes.to_be_bytes());
        checked.extend((records.len() as i32 - 1).max(0).to_be_bytes());
        checked.extend(1_000_i64.to_be_bytes());
        checked.extend(9_000_i64.to_be_bytes());
        checked.extend(producer.to_be_bytes());
        checked.extend((-1_i16).to_be_bytes());
        checked.extend((-1_i32).to_be_bytes());
        checked.extend((records.len() as i32).to_be_bytes());
        checked.extend(data);
        let mut out = Vec::new();
        out.extend(base_offset.to_be_bytes());
        out.extend(((4 + 1 + 4 + checked.len()) as i32).to_be_bytes());
        out.extend(0_i32.to_be_bytes());
        out.push(2);
        out.extend(crc32c::crc32c(&checked).to_be_bytes());
        out.extend(checked);
        out
    }

    fn pool() -> BufferPool {
        BufferPool::default()
    }

    fn offsets(fetched: &Fetched) -> Vec<i64> {
        fetched.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn fields_are_decoded_as_slices_of_the_fetched_bytes() {
        let data = Bytes::from(batch(
            40,
            0,
            &[
                Rec {
                    key: None,
                    value: Some(b"{\"a\":1}"),
                    headers: &[(b"type", b"order.created"), (b"empty", b"")],
                },
                Rec {
                    key: Some(b"order-7"),
                    value: None,
                    headers: &[],
                },
            ],
        ));
        let fetched = decode(data.clone(), 0, &[], &pool()).unwrap();
        assert_eq!(offsets(&fetched), [40, 41]);
        assert_eq!(fetched.next_offset, Some(42));
        let [first, second] = &fetched.records[..] else {
            panic!("two records")
        };
        assert_eq!(first.key, None);
        assert_eq!(first.value.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(first.headers["type"], b"order.created");
        assert_eq!(first.headers["empty"], b"");
        assert_eq!(first.timestamp.timestamp_millis(), 1_000);
        assert_eq!(second.key.as_deref(), Some(&b"order-7"[..]));
        assert_eq!(second.value, None);
        assert_eq!(second.timestamp.timestamp_millis(), 1_010);
        let value = first.value.as_ref().unwrap();
        let within = data.as_ptr_range();
        assert!(within.contains(&value.as_ptr()), "no copy of the value");
    }

    #[test]
    fn batches_of_every_codec_decode_alike() {
        let records = [PLAIN, PLAIN, PLAIN];
        let plain = decode(batch(0, 0, &records).into(), 0, &[], &pool())
            .unwrap()
            .records;
        for codec in [1, 2, 3, 4] {
            let fetched = decode(batch(0, codec, &records).into(), 0, &[], &pool()).unwrap();
            assert_eq!(fetched.records, plain, "codec {codec}");
        }
        // The xerial framing: magic, version and compatible version, then blocks.
        let mut raw = Vec::new();
        for (i, r) in (0..).zip(&records) {
            raw.extend(record(i, r));
        }
        let (first, second) = raw.split_at(raw.len() / 2);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend([0, 0, 0, 1, 0, 0, 0, 1]);
        for part in [first, second] {
            let block = snap::raw::Encoder::new().compress_vec(part).unwrap();
            framed.extend((block.len() as u32).to_be_bytes());
            framed.extend(block);
        }
        let mut out = b"stale contents of a reused buffer, longer than the batch".repeat(9);
        unsnappy(&framed, &mut out).unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn decompressed_buffers_come_back_once_their_records_are_dropped() {
        let pool = pool();
        let data = Bytes::from(batch(0, 2, &[PLAIN, PLAIN]));
        let fetched = decode(data.clone(), 0, &[], &pool).unwrap();
        assert_eq!(pool.kept(), 0, "in use");
        let [first, second] = <[FetchedRecord; 2]>::try_from(fetched.records).unwrap();
        drop(first);
        assert_eq!(pool.kept(), 0, "a record still holds it");
        let at = second.value.as_ref().unwrap().as_ptr();
        drop(second);
        let kept = pool.kept();
        assert!(kept > 0);
        let again = decode(data, 0, &[], &pool).unwrap();
        assert_eq!(pool.kept(), 0, "taken again");
        // The same memory, not a new allocation.
        assert_eq!(again.records[1].value.as_ref().unwrap().as_ptr(), at);
        drop(again);
        pool.release_if_idle(Duration::from_secs(3600));
        assert_eq!(pool.kept(), kept, "not idle");
        pool.release_if_idle(Duration::ZERO);
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn records_before_the_fetch_offset_are_dropped() {
        let mut data = batch(10, 0, &[PLAIN, PLAIN, PLAIN]);
        data.extend(batch(13, 2, &[PLAIN, PLAIN]));
        let fetched = decode(data.clone().into(), 12, &[], &pool()).unwrap();
        assert_eq!(offsets(&fetched), [12, 13, 14]);
        let fetched = decode(data.into(), 14, &[], &pool()).unwrap();
        assert_eq!(offsets(&fetched), [14]);
        assert_eq!(fetched.next_offset, Some(15));
    }

    #[test]
    fn a_batch_cut_off_by_the_size_limit_is_left_for_the_next_fetch() {
        let mut data = batch(0, 0, &[PLAIN, PLAIN]);
        let second = batch(2, 0, &[PLAIN, PLAIN]);
        data.extend(&second[..second.len() - 5]);
        let fetched = decode(data.into(), 0, &[], &pool()).unwrap();
        assert_eq!(offsets(&fetched), [0, 1]);
        assert_eq!(fetched.next_offset, Some(2));
        let fetched = decode(Bytes::from(second[..20].to_vec()), 2, &[], &pool()).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.next_offset, None);
    }

    /// A transaction marker from `producer`: a control batch (attribute bits 4
    /// and 5) whose record's key is a version and a type, 0 abort or 1 commit.
    fn marker(producer: i64, offset: i64, commit: bool) -> Vec<u8> {
        let key: &'static [u8] = if commit { &[0, 0, 0, 1] } else { &[0, 0, 0, 0] };
        let record = Rec {
            key: Some(key),
            value: Some(&[0, 0, 0, 0, 0, 0]),
            headers: &[],
        };
        batch_by(producer, offset, 0x30, &[record])
    }

    #[test]
    fn transaction_markers_are_skipped_but_moved_past() {
        let mut data = marker(3, 7, true);
        let fetched = decode(data.clone().into(), 7, &[], &pool()).unwrap();
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.next_offset, Some(8));
        data.extend(batch(8, 0, &[PLAIN]));
        assert_eq!(offsets(&decode(data.into(), 7, &[], &pool()).unwrap()), [8]);
    }

    #[test]
    fn the_batches_of_aborted_transactions_are_dropped() {
        // Producer 5 aborts a transaction at 0..=1 (marker at 2), then commits one
        // at 3 (marker at 4); producer 6's transaction at 5 commits. Batches of
        // producers without a listed abort, and plain ones, are kept.
        let mut data = batch_by(5, 0, 0x10, &[PLAIN, PLAIN]);
        data.extend(marker(5, 2, false));
        data.extend(batch_by(5, 3, 0x10, &[PLAIN]));
        data.extend(marker(5, 4, true));
        data.extend(batch_by(6, 5, 0x10, &[PLAIN]));
        data.extend(batch(6, 0, &[PLAIN]));
        data.extend(marker(6, 7, true));
        let aborted = [(5, 0)];
        let fetched = decode(data.clone().into(), 0, &aborted, &pool()).unwrap();
        assert_eq!(offsets(&fetched), [3, 5, 6]);
        assert_eq!(fetched.next_offset, Some(8));
        // Without the list (read_uncommitted), everything but the markers.
        let fetched = decode(data.into(), 0, &[], &pool()).unwrap();
        assert_eq!(offsets(&fetched), [0, 1, 3, 5, 6]);
    }

    #[test]
    fn an_uncommitted_read_tags_transactional_records_and_hands_on_the_markers() {
        let mut data = batch_by(5, 0, 0x10, &[PLAIN, PLAIN]);
        data.extend(marker(5, 2, false));
        data.extend(batch(3, 0, &[PLAIN]));
        data.extend(batch_by(6, 4, 0x10, &[PLAIN]));
        data.extend(marker(6, 5, true));
        let fetched = decode_uncommitted(data.into(), 1, &pool()).unwrap();
        let tags: Vec<(i64, Option<InTransaction>)> = fetched
            .records
            .iter()
            .map(|r| (r.offset, r.transaction))
            .collect();
        let record = |producer_id| Some(InTransaction::Record { producer_id });
        let end = |producer_id, committed| {
            Some(InTransaction::End {
                producer_id,
                committed,
            })
        };
        assert_eq!(
            tags,
            [
                (1, record(5)),
                (2, end(5, false)),
                (3, None),
                (4, record(6)),
                (5, end(6, true)),
            ],
            "from offset 1 on, in log order"
        );
        assert_eq!(fetched.next_offset, Some(6));
        let end_marker = &fetched.records[1];
        assert!(end_marker.key.is_none() && end_marker.value.is_none());
    }

    #[test]
    fn log_append_time_is_the_batch_time() {
        let fetched = decode(batch(0, 0x08, &[PLAIN, PLAIN]).into(), 0, &[], &pool()).unwrap();
        for r in &fetched.records {
            assert_eq!(r.timestamp.timestamp_millis(), 9_000);
        }
    }

    #[test]
    fn corrupt_or_unreadable_batches_are_errors_naming_the_batch() {
        let mut data = batch(5, 0, &[PLAIN]);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let e = decode(data.into(), 0, &[], &pool()).unwrap_err();
        assert!(matches!(e, RecordsError::Crc { base_offset: 5, .. }), "{e}");

        let e = decode(batch(6, 5, &[PLAIN]).into(), 0, &[], &pool()).unwrap_err();
        assert!(matches!(e, RecordsError::Codec { codec: 5, .. }), "{e}");

        let mut data = batch(7, 0, &[PLAIN]);
        data[16] = 1; // magic
        let e = decode(data.into(), 0, &[], &pool()).unwrap_err();
        assert!(matches!(e, RecordsError::Magic { magic: 1, .. }), "{e}");
    }

    #[test]
    fn a_header_key_that_is_not_utf8_does_not_stop_the_partition() {
        let data = Bytes::from(batch(
            0,
            0,
            &[Rec {
                key: Some(b"k"),
                value: Some(b"v"),
                headers: &[(b"bad\xff", b"1")],
            }],
        ));
        let fetched = decode(data, 0, &[], &pool()).unwrap();
        assert_eq!(fetched.records.len(), 1);
        assert_eq!(
            fetched.records[0]
                .headers
                .get("bad\u{fffd}")
                .map(Vec::as_slice),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn a_stream_that_decompresses_without_end_is_cut_off() {
        let e = read_limited(std::io::repeat(0), &mut Vec::new()).unwrap_err();
        assert!(e.contains("more than 256 MiB"), "{e}");
    }

    #[test]
    fn a_snappy_block_claiming_far_more_than_it_can_hold_is_refused() {
        // Claims 2 GiB uncompressed in a few bytes: refused before allocating.
        let mut block = Vec::new();
        let mut claim = 1_u64 << 31;
        while claim >= 0x80 {
            block.push((claim as u8) | 0x80);
            claim >>= 7;
        }
        block.push(claim as u8);
        block.extend([0, 1, 2]);
        let e = unsnappy(&block, &mut Vec::new()).unwrap_err();
        assert!(e.contains("claims"), "{e}");
    }
}
