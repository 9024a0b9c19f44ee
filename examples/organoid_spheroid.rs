//! Organoid models: the P2 tumour spheroid under a drug schedule, a
//! Gompertz growth law, and the Simeoni tumour-growth-inhibition model driven
//! by a one-compartment PK model.
//!
//! Run with `cargo run --release --example organoid_spheroid`.

use std::time::Instant;

use insilico::mechanistic::organoid::spheroid::{field, output};
use insilico::mechanistic::organoid::{DrugSource, GrowthLaw, SimeoniTgi, Spheroid, SpheroidParams};
use insilico::mechanistic::PkModel;
use insilico::solvers::{solve, Dose, Method, Options, Problem, Schedule, System};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- P2: 400 µm spheroid, 200 shells, 10 µM for 24 h every 72 h ---
    let model = Spheroid::p2();
    let x0 = model.initial_state(1.0, 0.0, 0.5, 0.0); // oxygen 1, no drug, half viable
    let times: Vec<f64> = (0..=14).map(|k| 24.0 * k as f64).collect();
    let prob = Problem::new(&model, SpheroidParams::p2().to_vec())
        .with_x0(x0.clone())
        .with_schedule(Spheroid::exposure_schedule(10.0, 24.0, 72.0, 336.0))
        .observe(output::VIABLE_BURDEN, &times);
    let opts = Options { rtol: 1e-6, atol: 1e-8, ..Options::default() };
    let start = Instant::now();
    let sol = solve(&prob, Method::Bdf, &opts)?;
    println!(
        "P2 spheroid: {} states, solved in {:.3} s ({} steps)",
        model.nstates(),
        start.elapsed().as_secs_f64(),
        sol.stats.steps
    );
    println!("   t (h)   viable burden   dead burden   mean oxygen   mean drug (µM)");
    for (k, t) in times.iter().enumerate() {
        let x = &sol.states[k];
        println!(
            "   {t:>5.0}   {:>13.5}   {:>11.5}   {:>11.4}   {:>14.3e}",
            sol.outputs[k],
            model.mean(x, field::M),
            model.mean(x, field::C),
            model.mean(x, field::D)
        );
    }
    let mb = model.mass_balance(&x0, &sol.final_state);
    println!(
        "drug mass balance over 336 h (per spheroid volume, µM): final {:.6} = initial {:.6} + influx {:.6} − uptake {:.6}; relative defect {:.1e}",
        mb.fin,
        mb.initial,
        mb.influx,
        mb.uptake,
        mb.relative_defect()
    );
    // Drug penetration during the first minutes of the first exposure.
    let early = [0.005, 0.02, 0.1, 0.5];
    let prob = Problem::new(&model, SpheroidParams::p2().to_vec())
        .with_x0(x0.clone())
        .with_schedule(Spheroid::exposure_schedule(10.0, 24.0, 72.0, 1.0))
        .observe(output::MEAN_DRUG, &early);
    let sol = solve(&prob, Method::Bdf, &opts)?;
    for (k, t) in early.iter().enumerate() {
        let x = &sol.states[k];
        let profile = model.drug_profile(x);
        let at =
            |r: f64| profile.iter().min_by(|a, b| (a.0 - r).abs().total_cmp(&(b.0 - r).abs())).map_or(0.0, |p| p.1);
        println!(
            "drug at t = {t:>5} h: depth reaching 50% of the medium {:>5.1} µm; d(r) at r = 0, 200, 350, 399 µm: {:.3}, {:.3}, {:.3}, {:.3} µM",
            model.penetration_depth(x, 10.0, 0.5),
            at(0.0),
            at(200.0),
            at(350.0),
            at(399.0)
        );
    }

    // A 1 mm spheroid with faster oxygen use develops hypoxic and necrotic cores.
    let big = Spheroid::new(1000.0, 100)?;
    let mut p = SpheroidParams::p2();
    p.qc = 1000.0;
    let days: Vec<f64> = (0..=4).map(|k| 48.0 * k as f64).collect();
    let prob = Problem::new(&big, p.to_vec())
        .with_x0(big.initial_state(1.0, 0.0, 0.5, 0.0))
        .observe(output::VIABLE_BURDEN, &days);
    let sol = solve(&prob, Method::Bdf, &opts)?;
    for (k, t) in days.iter().enumerate() {
        let x = &sol.states[k];
        println!(
            "1 mm spheroid, qc = 1000/h, t = {t:>3} h: viable burden {:.4}, hypoxic core (c < 0.1) {:>5.1} µm, necrotic core (n < 0.1) {:>5.1} µm",
            sol.outputs[k],
            big.hypoxic_radius(x, 0.1),
            big.necrotic_radius(x, 0.1)
        );
    }

    // --- Gompertz growth, checked against its closed form ---
    let law = GrowthLaw::Gompertz;
    let p = vec![0.1, 1000.0]; // α (1/day), K (mm³)
    let prob = Problem::new(&law, p.clone()).with_x0(vec![50.0]).observe(0, &[10.0, 30.0, 60.0]);
    let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-9, atol: 1e-9, ..Options::default() })?;
    for (t, v) in sol.times.iter().zip(&sol.outputs) {
        println!("Gompertz V({t:>2.0} d) = {v:8.3} mm³ (closed form {:8.3})", law.closed_form(&p, 50.0, *t));
    }

    // --- Simeoni TGI driven by an IV bolus into a one-compartment PK model ---
    let pk = PkModel::from_name("pk-1cmt-iv")?;
    let tgi = SimeoniTgi::new(DrugSource::Pk(pk), 3);
    // CL 1 L/day, V 10 L | λ0 0.3 /day, λ1 0.7 g/day, k1 1 /day, k2 0.05 L/(mg·day), ψ 20
    let p = vec![1.0, 10.0, 0.3, 0.7, 1.0, 0.05, 20.0];
    let mut x0 = vec![0.0; tgi.nstates()];
    x0[tgi.proliferating()] = 0.1; // g
    let days: Vec<f64> = (0..=6).map(|k| 5.0 * k as f64).collect();
    let treated = Problem::new(&tgi, p.clone())
        .with_x0(x0.clone())
        .with_schedule(Schedule::new().dose(Dose::bolus(8.0, 0, 500.0).repeated(4.0, 2)))
        .observe(0, &days);
    let control = Problem::new(&tgi, p).with_x0(x0).observe(0, &days);
    let opts = Options { rtol: 1e-8, atol: 1e-10, ..Options::default() };
    let (wt, wc) = (solve(&treated, Method::Bdf, &opts)?, solve(&control, Method::Bdf, &opts)?);
    println!("Simeoni TGI, 500 mg IV on days 8, 12, 16:");
    for (k, t) in days.iter().enumerate() {
        println!("   day {t:>2.0}: tumour {:.4} g treated, {:.4} g control", wt.outputs[k], wc.outputs[k]);
    }
    Ok(())
}
