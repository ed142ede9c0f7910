include!("tch_link.rs");

fn main() {
    link_libtorch();
    compile_autocast_shim();
}

/// csrc/amp.cpp (autocast regions and TF32 switches) against the wheel's headers (the include
/// directory beside its lib/).
fn compile_autocast_shim() {
    const FILE: &str = "csrc/amp.cpp";
    println!("cargo:rerun-if-changed={FILE}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not export DEP_TCH_LIBTORCH_LIB: cannot find libtorch's headers");
    };
    let include = std::path::Path::new(&lib).join("../include");
    // As torch-sys: the wheels since torch 2.7 are built with the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file(FILE)
        .include(&include)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .flag_if_supported("-Wno-c++20-extensions")
        .compile("syncdiff_autocast");
}
