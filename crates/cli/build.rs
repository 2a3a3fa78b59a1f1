//! Links `esb` with packed relative relocations (`DT_RELR`,
//! `-z pack-relative-relocs`, glibc ≥ 2.36, GNU ld ≥ 2.38): a
//! position-independent binary keeps its ASLR, and the dynamic loader no
//! longer reads 1.5 MB of `R_X86_64_RELATIVE` entries at every start (they
//! stayed resident: idle RSS, docs/benchmarks.md "Session 5"). Only the
//! `esb` executable is linked this way; libraries and tests are unchanged.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
