//! Small types shared by weft's proxy and control plane, so that neither depends on the other:
//! how operators write durations, endpoint addresses, traffic settings and authorization policies, logging set-up, and (feature `etcd`) the etcd client both use
//! (the control plane's registry, the proxy's self-registration).
#![forbid(unsafe_code)]

pub mod address;
pub mod authz;
pub mod backoff;
pub mod contract;
pub mod duration;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod log;
pub mod matching;
pub mod policy;
#[cfg(feature = "server")]
pub mod slots;
pub mod text;
