//! xDS responses applied one after another to the proxy's state, then compiled: a rejected
//! update leaves the last good resources.
#![no_main]

use weft_proxy::properties::{XdsStep, xds_updates};

libfuzzer_sys::fuzz_target!(|steps: Vec<XdsStep>| xds_updates(&steps));
