//! Tells the crate's tests whether they are built optimised (`cfg(zerohop_optimized)`),
//! so the multi-process tests can run their full packet counts only where that takes
//! seconds, not minutes.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(zerohop_optimized)");
    if std::env::var("OPT_LEVEL").is_ok_and(|l| l != "0") {
        println!("cargo::rustc-cfg=zerohop_optimized");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
