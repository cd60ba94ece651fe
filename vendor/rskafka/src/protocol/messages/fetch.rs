use std::io::{Cursor, Read, Write};

use crate::protocol::{
    api_key::ApiKey,
    api_version::{ApiVersion, ApiVersionRange},
    error::Error as ApiError,
    messages::{IsolationLevel, read_versioned_array, write_versioned_array},
    primitives::{Int8, Int16, Int32, Int64, Records, String_},
    traits::{ReadError, ReadType, WriteType},
};

use super::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};

#[derive(Debug)]
#[allow(missing_copy_implementations)]
pub struct FetchRequestPartition {
    /// The partition index.
    pub partition: Int32,

    /// The message offset.
    pub fetch_offset: Int64,

    /// The maximum bytes to fetch from this partition.
    ///
    /// See KIP-74 for cases where this limit may not be honored.
    pub partition_max_bytes: Int32,
}

impl<W> WriteVersionedType<W> for FetchRequestPartition
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        self.partition.write(writer)?;
        self.fetch_offset.write(writer)?;
        self.partition_max_bytes.write(writer)?;

        Ok(())
    }
}

#[derive(Debug)]
pub struct FetchRequestTopic {
    /// The name of the topic to fetch.
    pub topic: String_,

    /// The partitions to fetch.
    pub partitions: Vec<FetchRequestPartition>,
}

impl<W> WriteVersionedType<W> for FetchRequestTopic
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        self.topic.write(writer)?;
        write_versioned_array(writer, version, Some(&self.partitions))?;

        Ok(())
    }
}

#[derive(Debug)]
pub struct FetchRequest {
    /// The broker ID of the follower, of -1 if this request is from a consumer.
    pub replica_id: Int32,

    /// The maximum time in milliseconds to wait for the response.
    pub max_wait_ms: Int32,

    /// The minimum bytes to accumulate in the response.
    pub min_bytes: Int32,

    /// The maximum bytes to fetch. See KIP-74 for cases where this limit may not be honored.
    ///
    /// Defaults to "no limit / max".
    ///
    /// Added in version 3.
    pub max_bytes: Option<Int32>,

    /// This setting controls the visibility of transactional records.
    ///
    /// Using `READ_UNCOMMITTED` (`isolation_level = 0`) makes all records visible. With `READ_COMMITTED`
    /// (`isolation_level = 1`), non-transactional and `COMMITTED` transactional records are visible. To be more
    /// concrete, `READ_COMMITTED` returns all data from offsets smaller than the current LSO (last stable offset), and
    /// enables the inclusion of the list of aborted transactions in the result, which allows consumers to discard
    /// `ABORTED` transactional records.
    ///
    /// As per [KIP-98] the default is `READ_UNCOMMITTED`.
    ///
    /// Added in version 4.
    ///
    /// [KIP-98]: https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging
    pub isolation_level: Option<IsolationLevel>,

    /// The topics to fetch.
    pub topics: Vec<FetchRequestTopic>,
}

impl<W> WriteVersionedType<W> for FetchRequest
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        self.replica_id.write(writer)?;
        self.max_wait_ms.write(writer)?;
        self.min_bytes.write(writer)?;

        if v >= 3 {
            // defaults to "no limit / max".
            self.max_bytes.unwrap_or(Int32(i32::MAX)).write(writer)?;
        }

        if v >= 4 {
            // The default is `READ_UNCOMMITTED`.
            let level: Int8 = self.isolation_level.unwrap_or_default().into();
            level.write(writer)?;
        }

        write_versioned_array(writer, version, Some(&self.topics))?;

        Ok(())
    }
}

impl RequestBody for FetchRequest {
    type ResponseBody = FetchResponse;

    const API_KEY: ApiKey = ApiKey::Fetch;

    /// That's enough for now.
    ///
    /// Note that we do not support fetch request prior to version 4, since this is the version when message version 2
    /// was introduced ([KIP-98]).
    ///
    /// [KIP-98]: https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(4)), ApiVersion(Int16(4)));

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(12));
}

#[derive(Debug)]
#[allow(missing_copy_implementations)]
pub struct FetchResponseAbortedTransaction {
    /// The producer id associated with the aborted transaction.
    pub producer_id: Int64,

    /// The first offset in the aborted transaction.
    pub first_offset: Int64,
}

impl<R> ReadVersionedType<R> for FetchResponseAbortedTransaction
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(4 <= v && v <= 4);

        Ok(Self {
            producer_id: Int64::read(reader)?,
            first_offset: Int64::read(reader)?,
        })
    }
}

#[derive(Debug)]
pub struct FetchResponsePartition {
    /// The partition index.
    pub partition_index: Int32,

    /// The error code, or 0 if there was no fetch error.
    pub error_code: Option<ApiError>,

    /// The current high water mark.
    pub high_watermark: Int64,

    /// The last stable offset (or LSO) of the partition.
    ///
    /// This is the last offset such that the state of all transactional records prior to this offset have been decided
    /// (`ABORTED` or `COMMITTED`).
    ///
    /// Added in version 4.
    pub last_stable_offset: Option<Int64>,

    /// The aborted transactions.
    ///
    /// Added in version 4.
    pub aborted_transactions: Vec<FetchResponseAbortedTransaction>,

    /// The record data.
    pub records: Records,
}

// Changed for rust-eda (not in rskafka 0.6.0): the response parts that hold records are read
// from the in-memory response (see `Records`), so that their batches are decoded in place.
impl<T> ReadVersionedType<Cursor<T>> for FetchResponsePartition
where
    T: AsRef<[u8]>,
{
    fn read_versioned(
        reader: &mut Cursor<T>,
        version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        let mut partition = read_partition_head(reader, version)?;
        partition.records = Records::read(reader)?;
        Ok(partition)
    }
}

/// A partition of a fetch response up to its records, which are left empty.
fn read_partition_head<R: Read>(
    reader: &mut R,
    version: ApiVersion,
) -> Result<FetchResponsePartition, ReadVersionedError> {
    let v = version.0.0;
    assert!(v <= 4);

    Ok(FetchResponsePartition {
        partition_index: Int32::read(reader)?,
        error_code: ApiError::new(Int16::read(reader)?.0),
        high_watermark: Int64::read(reader)?,
        last_stable_offset: (v >= 4).then(|| Int64::read(reader)).transpose()?,
        aborted_transactions: (v >= 4)
            .then(|| read_versioned_array(reader, version))
            .transpose()?
            .flatten()
            .unwrap_or_default(),
        records: Records(vec![]),
    })
}

#[derive(Debug)]
pub struct FetchResponseTopic {
    /// The topic name.
    pub topic: String_,

    /// The topic partitions.
    pub partitions: Vec<FetchResponsePartition>,
}

impl<T> ReadVersionedType<Cursor<T>> for FetchResponseTopic
where
    T: AsRef<[u8]>,
{
    fn read_versioned(
        reader: &mut Cursor<T>,
        version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        Ok(Self {
            topic: String_::read(reader)?,
            partitions: read_versioned_array(reader, version)?.unwrap_or_default(),
        })
    }
}

#[derive(Debug)]
pub struct FetchResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota violation, or zero if the request did not violate any quota.
    ///
    /// Added in version 1.
    pub throttle_time_ms: Option<Int32>,

    /// The response topics.
    pub responses: Vec<FetchResponseTopic>,
}

impl<T> ReadVersionedType<Cursor<T>> for FetchResponse
where
    T: AsRef<[u8]>,
{
    fn read_versioned(
        reader: &mut Cursor<T>,
        version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        Ok(Self {
            throttle_time_ms: (v >= 1).then(|| Int32::read(reader)).transpose()?,
            responses: read_versioned_array(reader, version)?.unwrap_or_default(),
        })
    }
}

// Changed for rust-eda (not in rskafka 0.6.0): a fetch whose records are left for the caller
// to decode. The response is read as usual except each partition's records, of which only
// the place in the frame is noted; the frame itself is then handed over whole, so that the
// caller can decode records that share its memory instead of copying each key and value.
#[derive(Debug)]
pub struct RawFetchRequest<'a>(pub &'a FetchRequest);

impl<W> WriteVersionedType<W> for RawFetchRequest<'_>
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        self.0.write_versioned(writer, version)
    }
}

impl RequestBody for RawFetchRequest<'_> {
    type ResponseBody = RawFetchResponse;

    const API_KEY: ApiKey = FetchRequest::API_KEY;
    const API_VERSION_RANGE: ApiVersionRange = FetchRequest::API_VERSION_RANGE;
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        FetchRequest::FIRST_TAGGED_FIELD_IN_REQUEST_VERSION;
}

#[derive(Debug)]
pub struct RawFetchResponse {
    /// The response, with every partition's `records` left empty.
    pub response: FetchResponse,

    /// Where each partition's records are in `frame`, in the order of the response's partitions.
    pub records: Vec<std::ops::Range<usize>>,

    /// The whole response frame.
    pub frame: Vec<u8>,
}

impl ReadVersionedType<Cursor<Vec<u8>>> for RawFetchResponse {
    fn read_versioned(
        reader: &mut Cursor<Vec<u8>>,
        version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        let throttle_time_ms = (v >= 1).then(|| Int32::read(reader)).transpose()?;
        let mut records = vec![];
        let n_topics = array_len(reader)?;
        // Capacity from the response is capped: a corrupt count must not allocate much.
        let mut responses = Vec::with_capacity(n_topics.min(16));
        for _ in 0..n_topics {
            let topic = String_::read(reader)?;
            let n_partitions = array_len(reader)?;
            let mut partitions = Vec::with_capacity(n_partitions.min(16));
            for _ in 0..n_partitions {
                partitions.push(read_partition_head(reader, version)?);
                let len = array_len(reader)?;
                let start = usize::try_from(reader.position()).map_err(ReadError::Overflow)?;
                let end = start
                    .checked_add(len)
                    .filter(|end| *end <= reader.get_ref().len())
                    .ok_or_else(|| {
                        ReadError::IO(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
                    })?;
                reader.set_position(end as u64);
                records.push(start..end);
            }
            responses.push(FetchResponseTopic { topic, partitions });
        }

        let read = reader.position();
        let total = reader.get_ref().len() as u64;
        if read != total {
            return Err(ReadError::Malformed(
                format!("{} bytes left after the fetch response", total - read).into(),
            )
            .into());
        }
        // The messenger then checks that the frame was read to its end; with the frame taken,
        // the empty remainder is read to its end at position 0.
        let frame = std::mem::take(reader.get_mut());
        reader.set_position(0);

        Ok(Self {
            response: FetchResponse {
                throttle_time_ms,
                responses,
            },
            records,
            frame,
        })
    }
}

/// An array's or a nullable field's length: -1 (null) reads as 0.
fn array_len<R: Read>(reader: &mut R) -> Result<usize, ReadError> {
    match Int32::read(reader)?.0 {
        l if l < -1 => Err(ReadError::Malformed(
            format!("Invalid negative length: {}", l).into(),
        )),
        -1 => Ok(0),
        l => usize::try_from(l).map_err(ReadError::Overflow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_response_notes_where_the_records_are_and_hands_over_the_frame() {
        let mut frame = vec![];
        Int32(0).write(&mut frame).unwrap(); // throttle time
        Int32(1).write(&mut frame).unwrap(); // one topic
        String_("orders".to_owned()).write(&mut frame).unwrap();
        Int32(1).write(&mut frame).unwrap(); // one partition
        Int32(3).write(&mut frame).unwrap(); // partition index
        Int16(0).write(&mut frame).unwrap(); // no error
        Int64(42).write(&mut frame).unwrap(); // high watermark
        Int64(42).write(&mut frame).unwrap(); // last stable offset
        Int32(-1).write(&mut frame).unwrap(); // no aborted transactions
        Int32(3).write(&mut frame).unwrap(); // records: 3 bytes
        let start = frame.len();
        frame.extend([7, 8, 9]);

        let mut cursor = Cursor::new(frame.clone());
        let raw = RawFetchResponse::read_versioned(&mut cursor, ApiVersion(Int16(4))).unwrap();
        assert_eq!(raw.records, vec![start..start + 3]);
        assert_eq!(raw.frame, frame);
        let partition = &raw.response.responses[0].partitions[0];
        assert_eq!(partition.partition_index.0, 3);
        assert_eq!(partition.high_watermark.0, 42);
        assert!(partition.records.0.is_empty());
        // What the messenger checks after reading: nothing left over.
        assert_eq!(cursor.position(), cursor.get_ref().len() as u64);

        frame.push(0);
        let mut cursor = Cursor::new(frame);
        assert!(RawFetchResponse::read_versioned(&mut cursor, ApiVersion(Int16(4))).is_err());
    }
}
