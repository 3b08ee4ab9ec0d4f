//! The injector's AdmissionReview handling on any body.
#![no_main]
libfuzzer_sys::fuzz_target!(|body: &[u8]| weft_tests::properties::admission_review(body));
