//! The organoid model's CUDA source compiles with NVRTC (feature `cuda`;
//! ignored by default because CI has no libnvrtc). Run by hand with
//! `LD_LIBRARY_PATH=<folder of libnvrtc> cargo test --release -p insilico-kernels
//! --features cuda --test organoid_nvrtc -- --ignored`.

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs libnvrtc on LD_LIBRARY_PATH"]
fn organoid_cuda_source_compiles() {
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
    use insilico_kernels::cuda::kernel_source;
    use insilico_kernels::organoid::{Organoid, OrganoidOutput};
    use insilico_kernels::BatchModel;
    // SAFETY: only probes whether the library loads.
    assert!(unsafe { cudarc::nvrtc::sys::is_culib_present() }, "libnvrtc not found");
    for out in OrganoidOutput::ALL {
        let m = Organoid::new(out);
        let src = kernel_source(&m.cuda_source().code, 6, m.nparams(), m.nderived(), m.ninputs());
        let opts = CompileOptions { fmad: Some(false), options: vec!["--std=c++17".into()], ..Default::default() };
        let ptx = compile_ptx_with_opts(&src, opts).unwrap_or_else(|e| panic!("{}: {e:?}", out.name()));
        assert!(ptx.to_src().len() > 1000);
    }
}
