//! The DNS proxy's answer to any query.
#![no_main]
libfuzzer_sys::fuzz_target!(|query: &[u8]| weft_proxy::properties::dns_answer(query));
