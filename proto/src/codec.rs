//! The gRPC codec of every evenflow service: prost's, with one check on
//! the wire before a message is decoded.
//!
//! A repeated field of messages costs two bytes a element on the wire and
//! its element's whole size once decoded (an empty `Endpoint` is 2 bytes
//! sent and 184 bytes kept): within the 64 MiB a collector accepts, one
//! report could make it allocate gigabytes before any check on the decoded
//! report could refuse it. So a message in which one field appears more
//! than [`MAX_REPEATS`] times at its top level is refused before decoding,
//! with `RESOURCE_EXHAUSTED` naming the field. Elements nested deeper need
//! no check here: evenflow's messages repeat only at their top level where
//! they are large (an `AgentReport`'s endpoints, listeners and addresses).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Most times one field may appear at the top level of a message: above
/// [`crate::MAX_REPORT_ENDPOINTS`].
pub const MAX_REPEATS: u32 = 1 << 18;

/// Fields numbered up to this are counted; prost decodes higher (unknown)
/// ones into nothing.
const COUNTED_FIELDS: usize = 64;

/// [`tonic_prost::ProstCodec`] whose decoder first checks
/// [`MAX_REPEATS`].
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(ProstDecoder::default())
    }
}

/// Checks a message's repeats, then decodes it with prost.
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf as _;
        // A message arrives whole in one buffer; were it ever in pieces,
        // prost alone decodes it.
        if buf.chunk().len() == buf.remaining() {
            check_repeats(buf.chunk())?;
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Refuses `message` when one of its top-level fields appears more than
/// [`MAX_REPEATS`] times. What is not well-formed (which prost refuses
/// too) ends the walk.
pub fn check_repeats(mut message: &[u8]) -> Result<(), Status> {
    let mut counts = [0u32; COUNTED_FIELDS];
    while !message.is_empty() {
        let Some(key) = varint(&mut message) else {
            return Ok(());
        };
        let skipped = match key & 7 {
            0 => varint(&mut message).map(|_| 0),
            1 => Some(8),
            2 => varint(&mut message),
            // A group's start and end (proto2; prost skips them in
            // unknown fields): walked through, what is inside counted as
            // if at the top, which only ever counts more.
            3 | 4 => Some(0),
            5 => Some(4),
            _ => None,
        };
        let Some(n) = skipped.and_then(|n| usize::try_from(n).ok()) else {
            return Ok(());
        };
        let Some(rest) = message.get(n..) else {
            return Ok(());
        };
        message = rest;
        let field = key >> 3;
        if let Some(c) = usize::try_from(field).ok().and_then(|f| counts.get_mut(f)) {
            *c += 1;
            if *c > MAX_REPEATS {
                return Err(Status::resource_exhausted(format!(
                    "field {field} appears more than {MAX_REPEATS} times in one message: send fewer elements a message"
                )));
            }
        }
    }
    Ok(())
}

/// A base-128 varint off the front of `b`.
fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn report(endpoints: usize, listeners: usize) -> Vec<u8> {
        v1::AgentReport {
            node_name: "n".into(),
            endpoints: vec![v1::Endpoint::default(); endpoints],
            listeners: vec![v1::Listener::default(); listeners],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_message_within_the_bound_passes() {
        let max = MAX_REPEATS as usize;
        assert!(check_repeats(&report(max, max)).is_ok());
        assert!(check_repeats(&[]).is_ok());
    }

    #[test]
    fn one_field_past_the_bound_is_refused_by_number() {
        let e = check_repeats(&report(MAX_REPEATS as usize + 1, 0)).expect_err("too many");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with("field 7 appears"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn what_is_not_protobuf_is_left_to_prost() {
        // A length past the end, a varint that never ends, wire type 7.
        for bad in [&[0x3a, 0x7f, 1][..], &[0x08, 0xff, 0xff], &[0x0f]] {
            assert!(check_repeats(bad).is_ok());
        }
    }

    #[test]
    fn an_unknown_group_in_front_hides_nothing() {
        // Field 100 as a group, started and ended, then the endpoints:
        // prost skips the group and would decode every endpoint.
        let mut message = vec![0xa3, 0x06, 0xa4, 0x06];
        message.extend(report(MAX_REPEATS as usize + 1, 0));
        let e = check_repeats(&message).expect_err("too many");
        assert!(
            e.message().starts_with("field 7 appears"),
            "{}",
            e.message()
        );
        assert_eq!(
            v1::AgentReport::decode(&message[..]).map(|r| r.endpoints.len()),
            Ok(MAX_REPEATS as usize + 1),
            "prost decodes it"
        );
    }
}
