//! Link options for the proxy binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Pack the binary's relative relocations (DT_RELR, glibc 2.36 and later): about 21,000 of
    // them, 24 bytes each in the usual table, which the loader reads at every start and which
    // then stays mapped in every proxy's resident memory; packed, the table is a few kilobytes.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
