// Shared by the build scripts of every package that links libtorch (included with `include!`).
//
// Cargo does not pass tch's link arguments on to dependent packages, so without this the
// binaries and tests have no RUNPATH to libtorch (they fail with "libtorch_cpu.so not found"
// unless LD_LIBRARY_PATH is set) and `--as-needed` silently drops libtorch_cuda, hiding the GPU.
// torch-sys (links = "tch") exports its library directory as DEP_TCH_LIBTORCH_LIB to packages
// that depend on it directly.
//
// It also records the wheel's version and CUDA version (torch/version.py beside the library
// directory) as SYNCDIFF_TORCH_VERSION and SYNCDIFF_TORCH_CUDA, for messages about drivers.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // libtorch_cpu first among the package's own libraries. rustc lists a crate's native
        // libraries before those of the crates it depends on, so every binary that links this
        // package names libtorch_cpu before any BLAS a dependency brings (dlib's OpenBLAS and
        // LAPACK): libtorch_cpu then precedes them in the dynamic linker's search order, and its
        // own BLAS/LAPACK symbols (MKL) bind to itself. `ci/blas-bindings.sh` checks every
        // binary with the dynamic linker's own report.
        println!("cargo:rustc-link-search=native={lib}");
        println!("cargo:rustc-link-lib=dylib=torch_cpu");
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        let version_py = std::path::Path::new(&lib).join("../version.py");
        let text = std::fs::read_to_string(&version_py).unwrap_or_default();
        let value = |key: &str| {
            match text.lines().find(|l| l.starts_with(key)) {
                Some(l) => l.split('\'').nth(1).unwrap_or("none").to_string(),
                None => "unknown".to_string(),
            }
        };
        println!("cargo:rustc-env=SYNCDIFF_TORCH_VERSION={}", value("__version__"));
        println!("cargo:rustc-env=SYNCDIFF_TORCH_CUDA={}", value("cuda"));
    }
}
