//! Whatever the control plane accepts, the proxy accepts: any text as a TrafficPolicy's spec
//! (indented under `spec:`).
#![no_main]
libfuzzer_sys::fuzz_target!(|spec: &str| {
    weft_tests::properties::policy_differential(spec);
});
