// Shared by the build scripts that compile C++ against libtorch's own headers (the model crate's
// autocast shim, the trainer's operation counter and gradient hooks); included with `include!`.
// Needs `cc` as a build dependency.

/// Compiles `files` (C++17) into the static library `name`, against the headers of the libtorch
/// that tch links (the include directory beside the wheel's lib/, from DEP_TCH_LIBTORCH_LIB).
fn compile_torch_cpp(files: &[&str], name: &str) {
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB: cannot find libtorch's headers");
    };
    let include = std::path::Path::new(&lib).join("../include");
    // As torch-sys: the wheels since torch 2.7 are built with the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .files(files)
        .include(&include)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .flag_if_supported("-Wno-c++20-extensions")
        .compile(name);
}
