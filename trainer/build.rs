include!("../model/tch_link.rs");
include!("../model/torch_cpp.rs");

fn main() {
    link_libtorch();
    // The operation counter and the gradient hooks (the autocast shim is the model crate's).
    compile_torch_cpp(
        &["csrc/opcount.cpp", "csrc/hooks.cpp"],
        "syncdiff_torch_shims",
    );
    compile_mpi_in_place();
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
