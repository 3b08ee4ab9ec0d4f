//! `grpc-timeout` parsing and encoding.
#![no_main]
libfuzzer_sys::fuzz_target!(|input: (Vec<u8>, u64)| {
    weft_proxy::properties::grpc_timeout(&input.0, input.1)
});
