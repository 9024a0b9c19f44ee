//! The CUDA C generated from every zoo model compiles with NVRTC, with the
//! options of the GPU runs (feature `cuda`; ignored by default because CI has
//! no libnvrtc). No GPU is needed. By hand, with libnvrtc from the
//! `nvidia-cuda-nvrtc-cu12` wheel (PyPI) or a CUDA toolkit:
//! `LD_LIBRARY_PATH=<folder of libnvrtc.so.12> cargo test --release --features cuda --test model_cuda -- --ignored`.

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs libnvrtc on LD_LIBRARY_PATH"]
fn generated_cuda_of_every_zoo_model_compiles() {
    use insilico::kernels::cuda::compile_model;
    use insilico::model::LaneModel;
    use insilico::models_zoo;
    // SAFETY: only probes whether the library loads.
    assert!(unsafe { cudarc_probe() }, "libnvrtc not found");
    let mut compiled = 0;
    for name in models_zoo::names() {
        let m = models_zoo::load(name).unwrap();
        let weights: Vec<f64> = m.default_params(1)[m.scalar_param_names().len()..].to_vec();
        let out = m.output_names()[0].to_string();
        macro_rules! go {
            ($n:literal) => {{
                let lm = LaneModel::<$n>::new(&m, &weights, &out).unwrap();
                let ptx = compile_model(&lm).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(ptx.to_src().contains("integrate_grid_tsit5"), "{name}");
            }};
        }
        match m.nstates() {
            2 => go!(2),
            3 => go!(3),
            4 => go!(4),
            5 => go!(5),
            6 => go!(6),
            n => panic!("{name}: add a case for {n} states"),
        }
        compiled += 1;
    }
    println!("NVRTC compiled the generated CUDA of {compiled} zoo models");
}

#[cfg(feature = "cuda")]
unsafe fn cudarc_probe() -> bool {
    insilico::kernels::cuda::nvrtc_present()
}
