//! Protocol detection and the ClientHello reader on any bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::properties::detection(data));
