//! Compiles the CUDA kernels of the built-in models with NVRTC and prints the
//! PTX size: checks the generated source on a machine that has libnvrtc but no
//! GPU. `cargo run --release -p insilico-kernels --features cuda --example nvrtc_check`
#[cfg(feature = "cuda")]
fn main() {
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
    use insilico_kernels::cuda::kernel_source;
    use insilico_kernels::{BatchModel, HybridOneCmt, TwoCmtOral};
    // SAFETY: only probes whether the library loads.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        eprintln!("libnvrtc not found: add its folder to LD_LIBRARY_PATH");
        std::process::exit(1);
    }
    let h = HybridOneCmt::seeded(16, 1);
    let sources = [
        ("two-cmt-oral", kernel_source(&TwoCmtOral.cuda_source().code, 4, 5, 5, 0)),
        ("hybrid-one-cmt", kernel_source(&h.cuda_source().code, 3, 2, 2, 0)),
    ];
    let mut failed = false;
    for (name, src) in sources {
        let opts = CompileOptions { fmad: Some(false), options: vec!["--std=c++17".into()], ..Default::default() };
        match compile_ptx_with_opts(&src, opts) {
            Ok(ptx) => println!("{name}: PTX {} bytes", ptx.to_src().len()),
            Err(e) => {
                failed = true;
                eprintln!("{name}: {e:?}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("build with --features cuda");
    std::process::exit(1);
}
