//! Sequential updating: prospective evaluation (tdmore's `proseval`).

use super::Posterior;

/// One step of [`Posterior::sequential`]: observation `n_used` (1-based, in
/// time order) predicted from the posterior of the observations before it,
/// then assimilated.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialStep {
    /// Observations assimilated after this step (this one included).
    pub n_used: usize,
    /// The observation's time.
    pub time: f64,
    /// Its observed output.
    pub output: String,
    /// The observation (the limit for a censored one).
    pub dv: f64,
    /// Its individual prediction from the posterior *before* seeing it (the
    /// population prediction at the first step).
    pub predicted: f64,
    /// `dv − predicted`.
    pub error: f64,
    /// η̂ after assimilating it.
    pub eta: Vec<f64>,
    /// Laplace SDs of η after assimilating it.
    pub sd: Vec<f64>,
}

impl Posterior {
    /// Assimilates subject `index`'s observations one at a time, in time
    /// order: before each, the observation is forecast from the current
    /// posterior (its MAP); after it, the MAP and Laplace SDs are updated.
    /// With [`super::PosteriorOptions::half_life`], observation `j` counts
    /// with weight `0.5^((t_now − t_j)/half_life)` on its likelihood terms,
    /// `t_now` the time of the latest assimilated observation. Each MAP
    /// starts at the previous one (then the robust starts when it does not
    /// converge). A subject without observations gives no steps.
    pub fn sequential(&self, index: usize) -> Vec<SequentialStep> {
        let s = &self.subjects[index];
        let q = self.layout.n_eta();
        let n = s.obs.len();
        // Records are in time order within a subject (the dataset reader enforces it).
        let mut eta = vec![0.0; q];
        let mut f_prev: Option<Vec<f64>> = None;
        let mut steps = Vec::with_capacity(n);
        for k in 0..n {
            let back = |v: f64| if self.layout.outputs[s.kind[k]].error.log_scale() { v.exp() } else { v };
            let predicted = match &f_prev {
                Some(f) => back(f[k]),
                None => {
                    let (p, _) = self.layout.individual(&self.pop.theta, &eta);
                    self.solves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    s.predict_natural(&p, &[], &self.settings).map_or(f64::NAN, |v| v.predictions[k])
                }
            };
            let t_now = s.obs[k].time;
            let weights: Vec<f64> = (0..n)
                .map(|j| {
                    if j > k {
                        0.0
                    } else {
                        self.opts.half_life.map_or(1.0, |h| 0.5f64.powf((t_now - s.obs[j].time) / h))
                    }
                })
                .collect();
            let res = self.map_weighted(s, &eta, None, Some(&weights));
            eta = res.eta;
            f_prev = res.f;
            steps.push(SequentialStep {
                n_used: k + 1,
                time: s.obs[k].time,
                output: self.layout.outputs[s.kind[k]].name.clone(),
                dv: s.dv[k],
                predicted,
                error: s.dv[k] - predicted,
                eta: eta.clone(),
                sd: (0..q).map(|m| res.covariance[m * q + m].sqrt()).collect(),
            });
        }
        steps
    }
}
