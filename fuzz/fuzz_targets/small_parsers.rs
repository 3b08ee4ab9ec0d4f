//! Endpoint addresses, durations and the labels file on any text.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| weft_proxy::properties::small_parsers(text));
