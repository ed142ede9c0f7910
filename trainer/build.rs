include!("../model/tch_link.rs");

fn main() {
    link_libtorch();
    compile_torch_shims();
    compile_mpi_in_place();
}

/// The libtorch shims (csrc/opcount.cpp, csrc/hooks.cpp; autocast is the model crate's) against the wheel's headers (the
/// include directory beside its lib/).
fn compile_torch_shims() {
    const FILES: [&str; 2] = ["csrc/opcount.cpp", "csrc/hooks.cpp"];
    for f in FILES {
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
        .files(FILES)
        .include(&include)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .flag_if_supported("-Wno-c++20-extensions")
        .compile("syncdiff_torch_shims");
}

/// csrc/mpi_in_place.c with the MPI compiler (or include paths) that mpi-sys uses.
fn compile_mpi_in_place() {
    println!("cargo:rerun-if-changed=csrc/mpi_in_place.c");
    let mpi = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errs) => {
            let why: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            panic!("no MPI library found: {}", why.join("; "));
        }
    };
    let mut build = cc::Build::new();
    build.file("csrc/mpi_in_place.c");
    match mpi.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            for dir in &mpi.include_paths {
                build.include(dir);
            }
        }
    }
    build.compile("syncdiff_mpi_in_place");
}
