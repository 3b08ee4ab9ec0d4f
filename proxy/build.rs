//! Link options for the proxy binary.
//!
//! Packed relative relocations (DT_RELR): the binary has about 21,000 of them, 24 bytes each in
//! the usual table, which the loader reads at every start and which then stays in every
//! proxy's resident memory; packed, the table is a few kilobytes. A binary linked so needs
//! glibc 2.36 or later, so they are packed only when the glibc this build links against (the
//! build host's) has it; `WEFT_PACK_RELOCS=0` turns them off (a binary for an older system),
//! `=1` forces them on (a cross build for a system known to have it).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WEFT_PACK_RELOCS");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let gnu_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let pack = match var("WEFT_PACK_RELOCS").as_str() {
        "0" => false,
        "1" => gnu_linux,
        _ => gnu_linux && var("TARGET") == var("HOST") && host_glibc_at_least(2, 36),
    };
    if pack {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the host's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least `major.minor`.
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .trim()
        .strip_prefix("glibc ")
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}
