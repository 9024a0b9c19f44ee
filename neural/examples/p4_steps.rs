use insilico_mechanistic::PkModel;
use insilico_neural::fast::{FastWorkspace, Plan};
use insilico_neural::fit::subjects_from_dataset;
use insilico_neural::{Activation, Channel, Feature, FluxResidual, Mlp};
use insilico_solvers::{Dataset, DoseMapping, Options, ReadOptions};
fn main() {
    let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
    let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh).unwrap();
    let h = FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![Channel::new(1, Some(2), 0.2)]).unwrap();
    let ds = Dataset::from_path("../../shared/data/ude_train.csv", &ReadOptions::default()).unwrap();
    let subjects = subjects_from_dataset(&ds, &DoseMapping::new(2, 1, 2)).unwrap();
    let mut p = vec![1.0, 0.0, 20.0];
    p.extend(h.net().init(1, 0.5));
    let mut ws = FastWorkspace::default();
    for (rtol, atol) in [(1e-4, 1e-6), (1e-5, 1e-6), (1e-6, 1e-6), (1e-6, 1e-9)] {
        let opts = Options { rtol, atol, ..Options::default() };
        let mut tot = 0;
        let t = std::time::Instant::now();
        for s in &subjects {
            let prob = insilico_neural::fit::problem(&h, p.clone(), &[0.0; 3], s);
            let plan = Plan::new(&prob).unwrap();
            let g = plan.gradient(&h, &p, &[0.0; 3], &opts, &|_, y| (y, 1.0), &mut ws).unwrap();
            tot += g.steps;
        }
        println!("rtol {rtol} atol {atol}: {tot} steps total, {:?}", t.elapsed());
    }
}
