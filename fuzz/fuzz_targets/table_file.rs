//! The routing-table file: parse and compile any text.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| weft_proxy::properties::table_file(text));
