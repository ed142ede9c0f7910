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
