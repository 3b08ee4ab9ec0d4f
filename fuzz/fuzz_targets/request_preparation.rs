//! The proxy's hop-by-hop and reserved-header handling and a request's preparation for each
//! upstream protocol.
#![no_main]

use arbitrary::Arbitrary;
use weft_proxy::properties::{RawRequest, request_preparation};

#[derive(Debug, Arbitrary)]
struct Input {
    http2: bool,
    method: String,
    uri: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    upgrade: bool,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    request_preparation(&RawRequest {
        http2: i.http2,
        method: i.method,
        uri: i.uri,
        headers: i.headers,
        upgrade: i.upgrade,
    })
});
