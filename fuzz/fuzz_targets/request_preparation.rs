//! The proxy's hop-by-hop and reserved-header handling and a request's preparation for each
//! upstream protocol.
#![no_main]

use weft_proxy::properties::{RawRequest, request_preparation};

libfuzzer_sys::fuzz_target!(|raw: RawRequest| request_preparation(&raw));
