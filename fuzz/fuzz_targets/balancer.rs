//! Balancers over endpoints of any weights: bounded in size (and, by the fuzzer's per-input
//! timeout, in time).
#![no_main]
libfuzzer_sys::fuzz_target!(|weights: Vec<u32>| weft_proxy::properties::balancer(&weights));
