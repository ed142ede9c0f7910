include!("tch_link.rs");
include!("torch_cpp.rs");

fn main() {
    link_libtorch();
    // Autocast regions and TF32 switches (libtorch functions tch does not expose).
    compile_torch_cpp(&["csrc/amp.cpp"], "syncdiff_autocast");
}
