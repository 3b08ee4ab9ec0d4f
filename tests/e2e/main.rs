//! End-to-end tests: the real `weft-proxy` binary between real clients and servers.

mod balance;
mod boundary;
mod capture;
mod chart;
mod config;
mod conformance;
mod control_plane;
mod demo;
mod drain;
mod endpoint_dns;
mod etcd;
mod grpc;
mod http1;
mod http2;
mod identity;
mod inject;
mod interop;
mod mesh;
mod mtls;
mod properties;
mod starvation;
mod swap;
mod tcp;
mod tools;
mod traffic;
mod xds_table;
