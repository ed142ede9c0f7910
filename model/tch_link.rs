// Shared by the build scripts of every package that links libtorch (included with `include!`).
//
// Cargo does not pass tch's link arguments on to dependent packages, so without this the
// binaries and tests have no RUNPATH to libtorch (they fail with "libtorch_cpu.so not found"
// unless LD_LIBRARY_PATH is set) and `--as-needed` silently drops libtorch_cuda, hiding the GPU.
// torch-sys (links = "tch") exports its library directory as DEP_TCH_LIBTORCH_LIB to packages
// that depend on it directly.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
