//! Small types shared by weft's proxy and control plane, so that neither depends on the other:
//! how operators write durations, and logging set-up.
#![forbid(unsafe_code)]

pub mod duration;
pub mod log;
