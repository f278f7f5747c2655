//! The codec of `Subscribe`: responses arrive already encoded (the hub encodes each event once
//! for all its recipients), so encoding is a copy into tonic's buffer. Requests are ordinary
//! protobuf.

use bytes::{BufMut, Bytes};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
};
use tonic_prost::ProstDecoder;

use crate::pb;

/// One encoded `SubscribeResponse`.
#[derive(Debug, Clone)]
pub struct EncodedResponse(pub Bytes);

/// Initial per-stream encode buffer. tonic allocates it for every open stream, so it is kept
/// small (idle streams must stay cheap: the default is 8 KiB); it grows in steps of this size
/// when a burst of events is ready at once.
const STREAM_BUFFER_BYTES: usize = 512;
/// Ready events are coalesced into one HTTP/2 write up to this many bytes.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// `Codec` for `Subscribe`: pre-encoded responses out, `SubscribeRequest` in.
#[derive(Debug, Default, Clone, Copy)]
pub struct SubscribeCodec;

impl Codec for SubscribeCodec {
    type Encode = EncodedResponse;
    type Decode = pb::SubscribeRequest;
    type Encoder = PassThroughEncoder;
    type Decoder = ProstDecoder<pb::SubscribeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        PassThroughEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// Writes pre-encoded bytes as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughEncoder;

impl Encoder for PassThroughEncoder {
    type Item = EncodedResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item.0);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(STREAM_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}
