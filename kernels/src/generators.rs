//! Generators of ensemble variations: full grids, Latin hypercubes, Sobol
//! sequences and seeded log-normal virtual populations.
//!
//! Every generator is *random access*: point `i` is a pure function of the
//! generator's settings and `i`, computed in O(dimensions) without visiting
//! points `0..i`. A sweep can therefore cut its trajectories into chunks of
//! any size, run them on any number of threads, stop and resume, and still
//! get bit-identical inputs for every trajectory.
//!
//! Randomness comes from a counter-based generator: [`counter_uniform`]
//! hashes `(seed, index, stream)` with SplitMix64's finaliser, so there is no
//! generator state to share or to advance.
//!
//! ```
//! use insilico_kernels::generators::{Grid, LogNormalPopulation, Sobol};
//! // Dose outermost, then interval: (50, 12), (50, 24), (100, 12), (100, 24).
//! let g = Grid::new(vec![vec![50.0, 100.0], vec![12.0, 24.0]]).unwrap();
//! let mut p = [0.0; 2];
//! g.point(2, &mut p);
//! assert_eq!(p, [100.0, 12.0]);
//!
//! let s = Sobol::new(3).unwrap();
//! let mut u = [0.0; 3];
//! s.point(2, &mut u);
//! assert_eq!(u, [0.75, 0.25, 0.25]);
//!
//! // Median 5 L/h, 30% coefficient of variation; member 7 is the same draw
//! // whatever else is computed.
//! let pop = LogNormalPopulation::new(vec![5.0], vec![0.3], 42).unwrap();
//! let mut cl = [0.0];
//! pop.member(7, &mut cl);
//! assert!(cl[0] > 0.0);
//! ```

/// Errors of generator construction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeneratorError {
    /// A grid with no axes, or an axis with no values.
    #[error("grid axis {axis} is empty")]
    EmptyAxis {
        /// Axis index.
        axis: usize,
    },
    /// The product of the axis lengths overflows `u64`.
    #[error("the grid has more than 2^64 points")]
    TooLarge,
    /// A dimension count outside what the generator supports.
    #[error("{generator} supports 1 to {max} dimensions, not {got}")]
    Dimensions {
        /// Which generator.
        generator: &'static str,
        /// The most it supports.
        max: usize,
        /// What was asked.
        got: usize,
    },
    /// A sample size of zero.
    #[error("a {generator} needs at least one point")]
    NoPoints {
        /// Which generator.
        generator: &'static str,
    },
    /// Typical values and CVs of different lengths, a non-positive typical
    /// value or a negative or non-finite CV.
    #[error("log-normal parameter {index}: {reason}")]
    Population {
        /// Parameter index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// SplitMix64's output function (Steele, Lea & Flood 2014): a bijective
/// avalanche mix of a 64-bit word.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits keyed by `(seed, index, stream)`: one SplitMix64 round per
/// key word, so distinct keys give independent-looking words.
#[inline]
pub fn counter_bits(seed: u64, index: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ index) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// A uniform number in the open interval (0, 1) keyed by `(seed, index,
/// stream)` — e.g. seed of the sweep, trajectory index, parameter number.
/// 53 random bits, never exactly 0 or 1.
#[inline]
pub fn counter_uniform(seed: u64, index: u64, stream: u64) -> f64 {
    ((counter_bits(seed, index, stream) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal number keyed by `(seed, index, stream)`: the inverse
/// normal CDF of [`counter_uniform`].
#[inline]
pub fn counter_normal(seed: u64, index: u64, stream: u64) -> f64 {
    inverse_normal_cdf(counter_uniform(seed, index, stream))
}

/// The standard normal quantile `Φ⁻¹(p)` for `0 < p < 1` (Wichura's AS 241,
/// PPND16: relative accuracy about 1e-16). Returns ∓∞ at 0 and 1, NaN outside.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        let num = ((((((2.509_080_928_730_122_7e3 * r + 3.343_057_558_358_813e4) * r + 6.726_577_092_700_87e4) * r
            + 4.592_195_393_154_987e4)
            * r
            + 1.373_169_376_550_946e4)
            * r
            + 1.971_590_950_306_551_3e3)
            * r
            + 1.331_416_678_917_843_8e2)
            * r
            + 3.387_132_872_796_366_5;
        let den = ((((((5.226_495_278_852_545e3 * r + 2.872_908_573_572_194_3e4) * r + 3.930_789_580_009_271e4) * r
            + 2.121_379_430_158_659_7e4)
            * r
            + 5.394_196_021_424_751e3)
            * r
            + 6.871_870_074_920_579e2)
            * r
            + 4.231_333_070_160_091e1)
            * r
            + 1.0;
        return q * num / den;
    }
    let mut r = if q < 0.0 { p } else { 1.0 - p };
    r = (-r.ln()).sqrt();
    let val = if r <= 5.0 {
        r -= 1.6;
        let num = ((((((7.745_450_142_783_414e-4 * r + 2.272_384_498_926_918_4e-2) * r + 2.417_807_251_774_506e-1)
            * r
            + 1.270_458_252_452_368_4)
            * r
            + 3.647_848_324_763_204_5)
            * r
            + 5.769_497_221_460_691)
            * r
            + 4.630_337_846_156_546)
            * r
            + 1.423_437_110_749_683_5;
        let den =
            ((((((1.050_750_071_644_416_9e-9 * r + 5.475_938_084_995_345e-4) * r + 1.519_866_656_361_645_7e-2) * r
                + 1.481_039_764_274_800_8e-1)
                * r
                + 6.897_673_349_851e-1)
                * r
                + 1.676_384_830_183_803_8)
                * r
                + 2.053_191_626_637_759)
                * r
                + 1.0;
        num / den
    } else {
        r -= 5.0;
        let num = ((((((2.010_334_399_292_288_1e-7 * r + 2.711_555_568_743_487_6e-5) * r
            + 1.242_660_947_388_078_4e-3)
            * r
            + 2.653_218_952_657_612_4e-2)
            * r
            + 2.965_605_718_285_049e-1)
            * r
            + 1.784_826_539_917_291_3)
            * r
            + 5.463_784_911_164_114)
            * r
            + 6.657_904_643_501_103;
        let den =
            ((((((2.044_263_103_389_939_7e-15 * r + 1.421_511_758_316_446e-7) * r + 1.846_318_317_510_054_8e-5) * r
                + 7.868_691_311_456_133e-4)
                * r
                + 1.487_536_129_085_061_5e-2)
                * r
                + 1.369_298_809_227_358e-1)
                * r
                + 5.998_322_065_558_88e-1)
                * r
                + 1.0;
        num / den
    };
    if q < 0.0 {
        -val
    } else {
        val
    }
}

/// A full factorial grid: the cartesian product of its axes, in row-major
/// order — the first axis outermost, the last axis varying fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    axes: Vec<Vec<f64>>,
    len: u64,
}

impl Grid {
    /// A grid over `axes` (each a list of values). Refuses an empty axis
    /// list, an empty axis, and grids of more than 2^64 points.
    pub fn new(axes: Vec<Vec<f64>>) -> Result<Self, GeneratorError> {
        if axes.is_empty() {
            return Err(GeneratorError::EmptyAxis { axis: 0 });
        }
        let mut len = 1u64;
        for (i, a) in axes.iter().enumerate() {
            if a.is_empty() {
                return Err(GeneratorError::EmptyAxis { axis: i });
            }
            len = len.checked_mul(a.len() as u64).ok_or(GeneratorError::TooLarge)?;
        }
        Ok(Grid { axes, len })
    }
    /// Number of points (product of the axis lengths).
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Always false: a grid has at least one point.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Number of axes.
    pub fn dims(&self) -> usize {
        self.axes.len()
    }
    /// The axes.
    pub fn axes(&self) -> &[Vec<f64>] {
        &self.axes
    }
    /// The per-axis indices of point `i` (mixed radix, last axis fastest).
    pub fn indices(&self, i: u64, out: &mut [usize]) {
        let mut rest = i % self.len;
        for (a, o) in self.axes.iter().zip(out.iter_mut()).rev() {
            let n = a.len() as u64;
            *o = (rest % n) as usize;
            rest /= n;
        }
    }
    /// The values of point `i` (`i` is taken modulo [`Grid::len`]).
    pub fn point(&self, i: u64, out: &mut [f64]) {
        let mut rest = i % self.len;
        for (a, o) in self.axes.iter().zip(out.iter_mut()).rev() {
            let n = a.len() as u64;
            *o = a[(rest % n) as usize];
            rest /= n;
        }
    }
}

/// `n` values linearly spaced over `[lo, hi]` (both ends included).
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![lo],
        _ => (0..n).map(|i| if i + 1 == n { hi } else { lo + (hi - lo) * i as f64 / (n - 1) as f64 }).collect(),
    }
}

/// `n` values log-spaced over `[lo, hi]` (both ends included; `lo, hi > 0`).
pub fn logspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![lo],
        _ => (0..n)
            .map(|i| if i + 1 == n { hi } else { (lo.ln() + (hi.ln() - lo.ln()) * i as f64 / (n - 1) as f64).exp() })
            .collect(),
    }
}

/// A keyed bijection of `[0, n)`: a 4-round balanced Feistel network on the
/// smallest power-of-4 domain that holds `n`, with cycle walking back into
/// range (at most a few iterations on average since the domain is < 4n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Permutation {
    n: u64,
    half_bits: u32,
    key: u64,
}

impl Permutation {
    fn new(n: u64, key: u64) -> Self {
        let mut bits = 0u32;
        while bits < 64 && (1u128 << bits) < n as u128 {
            bits += 1;
        }
        let half_bits = bits.div_ceil(2).max(1);
        Permutation { n, half_bits, key }
    }
    #[inline]
    fn round(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut l, mut r) = (x >> self.half_bits, x & mask);
        for k in 0..4u64 {
            let f = splitmix64(self.key ^ r ^ (k << 60)) & mask;
            let nl = r;
            r = l ^ f;
            l = nl;
        }
        (l << self.half_bits) | r
    }
    #[inline]
    fn apply(&self, i: u64) -> u64 {
        let mut x = self.round(i);
        while x >= self.n {
            x = self.round(x);
        }
        x
    }
}

/// A Latin hypercube of `n` points in `[0, 1)^d`: along every dimension each
/// of the `n` strata `[k/n, (k+1)/n)` holds exactly one point. The stratum
/// of point `i` in dimension `j` is a keyed permutation of `i` (random
/// access, no stored permutation), its position inside the stratum a
/// [`counter_uniform`] draw; both are keyed by the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct LatinHypercube {
    n: u64,
    seed: u64,
    perms: Vec<Permutation>,
}

impl LatinHypercube {
    /// `n ≥ 1` points in `dims ≥ 1` dimensions from `seed`.
    pub fn new(n: u64, dims: usize, seed: u64) -> Result<Self, GeneratorError> {
        if n == 0 {
            return Err(GeneratorError::NoPoints { generator: "Latin hypercube" });
        }
        if dims == 0 || dims > 1024 {
            return Err(GeneratorError::Dimensions { generator: "Latin hypercube", max: 1024, got: dims });
        }
        let perms = (0..dims as u64).map(|j| Permutation::new(n, counter_bits(seed, u64::MAX, j))).collect();
        Ok(LatinHypercube { n, seed, perms })
    }
    /// Number of points.
    pub fn len(&self) -> u64 {
        self.n
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Number of dimensions.
    pub fn dims(&self) -> usize {
        self.perms.len()
    }
    /// Point `i < n` (taken modulo `n`) in `[0, 1)^d`.
    pub fn point(&self, i: u64, out: &mut [f64]) {
        let i = i % self.n;
        for (j, (p, o)) in self.perms.iter().zip(out.iter_mut()).enumerate() {
            let stratum = p.apply(i);
            let jitter = counter_uniform(self.seed, i, j as u64);
            *o = ((stratum as f64 + jitter) / self.n as f64).min(1.0 - f64::EPSILON / 2.0);
        }
    }
}

/// Joe & Kuo's direction numbers (file `new-joe-kuo-6.21201`) for dimensions
/// 2 to [`Sobol::MAX_DIMS`]: degree `s`, coefficients `a` of the primitive
/// polynomial, and the initial `m_1..m_s`.
const JOE_KUO: [(u32, u32, [u32; 7]); 20] = [
    (1, 0, [1, 0, 0, 0, 0, 0, 0]),
    (2, 1, [1, 3, 0, 0, 0, 0, 0]),
    (3, 1, [1, 3, 1, 0, 0, 0, 0]),
    (3, 2, [1, 1, 1, 0, 0, 0, 0]),
    (4, 1, [1, 1, 3, 3, 0, 0, 0]),
    (4, 4, [1, 3, 5, 13, 0, 0, 0]),
    (5, 2, [1, 1, 5, 5, 17, 0, 0]),
    (5, 4, [1, 1, 5, 5, 5, 0, 0]),
    (5, 7, [1, 1, 7, 11, 19, 0, 0]),
    (5, 11, [1, 1, 5, 1, 1, 0, 0]),
    (5, 13, [1, 1, 1, 3, 11, 0, 0]),
    (5, 14, [1, 3, 5, 5, 31, 0, 0]),
    (6, 1, [1, 3, 3, 9, 7, 49, 0]),
    (6, 13, [1, 1, 1, 15, 21, 21, 0]),
    (6, 16, [1, 3, 1, 13, 27, 49, 0]),
    (6, 19, [1, 1, 1, 15, 7, 5, 0]),
    (6, 22, [1, 3, 1, 15, 13, 25, 0]),
    (6, 25, [1, 1, 5, 5, 19, 61, 0]),
    (7, 1, [1, 3, 7, 11, 23, 15, 103]),
    (7, 4, [1, 3, 7, 13, 13, 15, 69]),
];

/// Bits of a Sobol coordinate: up to 2^32 points.
const SOBOL_BITS: usize = 32;

/// The unscrambled Sobol sequence in `[0, 1)^d` with Joe & Kuo's direction
/// numbers, in Gray-code order (the order of Joe & Kuo's reference
/// implementation and of SciPy's `qmc.Sobol(scramble=False)`): point 0 is the
/// origin, point 1 is (½, …, ½). Random access: point `i` is the XOR of the
/// direction numbers selected by the bits of `i ⊕ (i >> 1)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sobol {
    v: Vec<[u32; SOBOL_BITS]>,
}

impl Sobol {
    /// Most dimensions supported.
    pub const MAX_DIMS: usize = JOE_KUO.len() + 1;

    /// The first `dims` dimensions (1 to [`Sobol::MAX_DIMS`]).
    pub fn new(dims: usize) -> Result<Self, GeneratorError> {
        if dims == 0 || dims > Self::MAX_DIMS {
            return Err(GeneratorError::Dimensions { generator: "Sobol sequence", max: Self::MAX_DIMS, got: dims });
        }
        let mut v = Vec::with_capacity(dims);
        let mut first = [0u32; SOBOL_BITS];
        for (k, x) in first.iter_mut().enumerate() {
            *x = 1u32 << (31 - k);
        }
        v.push(first);
        for &(s, a, m) in JOE_KUO.iter().take(dims - 1) {
            let s = s as usize;
            let mut d = [0u32; SOBOL_BITS];
            for k in 0..SOBOL_BITS {
                d[k] = if k < s {
                    m[k] << (31 - k)
                } else {
                    let mut x = d[k - s] ^ (d[k - s] >> s);
                    for j in 1..s {
                        if (a >> (s - 1 - j)) & 1 == 1 {
                            x ^= d[k - j];
                        }
                    }
                    x
                };
            }
            v.push(d);
        }
        Ok(Sobol { v })
    }
    /// Number of dimensions.
    pub fn dims(&self) -> usize {
        self.v.len()
    }
    /// Point `i` (`i < 2^32`; higher bits are ignored) in `[0, 1)^d`.
    pub fn point(&self, i: u64, out: &mut [f64]) {
        let g = (i ^ (i >> 1)) as u32;
        for (d, o) in self.v.iter().zip(out.iter_mut()) {
            let mut x = 0u32;
            let mut bits = g;
            let mut k = 0;
            while bits != 0 {
                if bits & 1 == 1 {
                    x ^= d[k];
                }
                bits >>= 1;
                k += 1;
            }
            *o = x as f64 / 4_294_967_296.0;
        }
    }
}

/// A seeded log-normal virtual population: member `m` has parameter
/// `θ_j · exp(ω_j · z_{m,j})`, `z` standard normal keyed by
/// `(seed, m, j)` through [`counter_normal`], and `ω_j² = ln(1 + CV_j²)` so
/// that `CV_j` is the coefficient of variation of the log-normal and `θ_j`
/// its median. A CV of 0 keeps the parameter fixed. Member `m` is the same
/// virtual subject whatever else is drawn, so paired comparisons across
/// regimens hold.
#[derive(Debug, Clone, PartialEq)]
pub struct LogNormalPopulation {
    typical: Vec<f64>,
    omega: Vec<f64>,
    seed: u64,
}

impl LogNormalPopulation {
    /// Medians `typical` (positive where `cv > 0`), coefficients of
    /// variation `cv` (non-negative), and the seed.
    pub fn new(typical: Vec<f64>, cv: Vec<f64>, seed: u64) -> Result<Self, GeneratorError> {
        if typical.len() != cv.len() {
            return Err(GeneratorError::Population {
                index: typical.len().min(cv.len()),
                reason: format!("{} typical values but {} CVs", typical.len(), cv.len()),
            });
        }
        for (j, (&t, &c)) in typical.iter().zip(&cv).enumerate() {
            if !c.is_finite() || c < 0.0 {
                return Err(GeneratorError::Population {
                    index: j,
                    reason: format!("CV {c} is not a finite value ≥ 0"),
                });
            }
            if c > 0.0 && !(t.is_finite() && t > 0.0) {
                return Err(GeneratorError::Population {
                    index: j,
                    reason: format!("typical value {t} must be positive to vary log-normally"),
                });
            }
        }
        let omega = cv.iter().map(|c| (1.0 + c * c).ln().sqrt()).collect();
        Ok(LogNormalPopulation { typical, omega, seed })
    }
    /// The log-scale standard deviations `ω_j`.
    pub fn omega(&self) -> &[f64] {
        &self.omega
    }
    /// Parameters of member `m`.
    pub fn member(&self, m: u64, out: &mut [f64]) {
        for (j, o) in out.iter_mut().enumerate().take(self.typical.len()) {
            *o = self.typical[j] * self.factor(m, j);
        }
    }
    /// The multiplicative factor `exp(ω_j z_{m,j})` of parameter `j` for member `m`.
    #[inline]
    pub fn factor(&self, m: u64, j: usize) -> f64 {
        if self.omega[j] == 0.0 {
            1.0
        } else {
            (self.omega[j] * counter_normal(self.seed, m, j as u64)).exp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_normal_matches_known_quantiles() {
        // Φ⁻¹ at p (values from Python's statistics.NormalDist.inv_cdf, also AS 241).
        let cases = [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_053_6),
            (0.025, -1.959_963_984_540_053_6),
            (0.8, 0.841_621_233_572_914_4),
            (1e-10, -6.361_340_902_404_056),
            (1e-300, -37.047_096_299_361_2),
            (0.999_999, 4.753_424_308_817_089),
        ];
        for (p, z) in cases {
            let got = inverse_normal_cdf(p);
            assert!((got - z).abs() <= 1e-14 * z.abs().max(1.0), "p {p}: {got} vs {z}");
        }
        assert!(inverse_normal_cdf(1.5).is_nan());
        assert_eq!(inverse_normal_cdf(0.0), f64::NEG_INFINITY);
    }

    #[test]
    fn splitmix_matches_the_reference_stream() {
        // SplitMix64 seeded with 0: the first outputs of the reference generator
        // are splitmix64(k·γ) for k = 0, 1, ... with our pre-increment.
        let gamma = 0x9E37_79B9_7F4A_7C15u64;
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(gamma), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(gamma.wrapping_mul(2)), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn grid_is_row_major_first_axis_outermost() {
        let g = Grid::new(vec![vec![1.0, 2.0], vec![10.0, 20.0, 30.0], vec![0.5]]).unwrap();
        assert_eq!(g.len(), 6);
        let pts: Vec<[f64; 3]> = (0..6)
            .map(|i| {
                let mut p = [0.0; 3];
                g.point(i, &mut p);
                p
            })
            .collect();
        assert_eq!(pts[0], [1.0, 10.0, 0.5]);
        assert_eq!(pts[1], [1.0, 20.0, 0.5]);
        assert_eq!(pts[3], [2.0, 10.0, 0.5]);
        assert_eq!(pts[5], [2.0, 30.0, 0.5]);
        let mut idx = [0; 3];
        g.indices(4, &mut idx);
        assert_eq!(idx, [1, 1, 0]);
        assert_eq!(Grid::new(vec![vec![1.0], vec![]]), Err(GeneratorError::EmptyAxis { axis: 1 }));
        assert!(Grid::new(vec![]).is_err());
    }

    #[test]
    fn spacings_hit_their_ends() {
        assert_eq!(linspace(50.0, 1000.0, 50)[49], 1000.0);
        assert_eq!(linspace(50.0, 1000.0, 50)[1], 50.0 + 950.0 / 49.0);
        let l = logspace(0.5, 2.0, 50);
        assert_eq!((l[0], l[49]), (0.5, 2.0));
        assert!((l[1] / l[0] - 4f64.powf(1.0 / 49.0)).abs() < 1e-14);
    }

    /// Points of SciPy's `qmc.Sobol(d=21, scramble=False)` (Joe–Kuo
    /// new-joe-kuo-6.21201), times 1024.
    #[test]
    fn sobol_matches_joe_kuo_reference_points() {
        let reference: [(u64, [u32; 21]); 7] = [
            (
                2,
                [
                    768, 256, 256, 256, 768, 768, 256, 768, 768, 768, 768, 768, 256, 256, 768, 256, 768, 256, 768, 256,
                    256,
                ],
            ),
            (
                5,
                [
                    896, 896, 128, 384, 896, 640, 896, 384, 384, 128, 384, 896, 896, 128, 896, 384, 896, 384, 384, 640,
                    640,
                ],
            ),
            (
                9,
                [
                    704, 832, 448, 960, 64, 832, 960, 448, 448, 832, 192, 576, 448, 448, 320, 448, 320, 320, 448, 832,
                    704,
                ],
            ),
            (
                17,
                [608, 992, 992, 160, 800, 480, 32, 352, 992, 672, 608, 928, 160, 160, 864, 544, 288, 96, 288, 544, 224],
            ),
            (
                31,
                [32, 544, 928, 992, 992, 800, 352, 544, 160, 608, 32, 352, 992, 224, 672, 864, 224, 416, 608, 736, 416],
            ),
            (
                100,
                [
                    424, 264, 792, 744, 904, 760, 24, 488, 648, 712, 472, 696, 488, 872, 328, 504, 696, 760, 856, 344,
                    776,
                ],
            ),
            (
                1023,
                [1, 771, 627, 149, 191, 449, 143, 633, 353, 871, 695, 37, 133, 681, 371, 475, 321, 897, 599, 327, 887],
            ),
        ];
        let s = Sobol::new(21).unwrap();
        let mut x = [0.0; 21];
        s.point(0, &mut x);
        assert!(x.iter().all(|&v| v == 0.0));
        s.point(1, &mut x);
        assert!(x.iter().all(|&v| v == 0.5));
        for (i, want) in reference {
            s.point(i, &mut x);
            for d in 0..21 {
                assert_eq!(x[d] * 1024.0, want[d] as f64, "point {i}, dimension {}", d + 1);
            }
        }
        assert!(Sobol::new(22).is_err() && Sobol::new(0).is_err());
    }

    #[test]
    fn sobol_first_1024_points_are_a_net() {
        // Each of the 1024 points lands in a different interval of width 1/1024
        // along every dimension: the (0, m, 1) net property of each coordinate.
        let s = Sobol::new(12).unwrap();
        let mut seen = vec![[false; 1024]; 12];
        let mut x = [0.0; 12];
        for i in 0..1024 {
            s.point(i, &mut x);
            for d in 0..12 {
                let k = (x[d] * 1024.0) as usize;
                assert!(!seen[d][k]);
                seen[d][k] = true;
            }
        }
    }

    #[test]
    fn latin_hypercube_stratifies_every_dimension() {
        for n in [1u64, 7, 64, 1000] {
            let lhs = LatinHypercube::new(n, 5, 11).unwrap();
            let mut hit = vec![vec![false; n as usize]; 5];
            let mut x = [0.0; 5];
            for i in 0..n {
                lhs.point(i, &mut x);
                for d in 0..5 {
                    assert!((0.0..1.0).contains(&x[d]));
                    let k = (x[d] * n as f64) as usize;
                    assert!(!hit[d][k], "n {n}: stratum {k} of dimension {d} twice");
                    hit[d][k] = true;
                }
            }
        }
        let (a, b) = (LatinHypercube::new(100, 2, 1).unwrap(), LatinHypercube::new(100, 2, 2).unwrap());
        let (mut x, mut y) = ([0.0; 2], [0.0; 2]);
        a.point(3, &mut x);
        b.point(3, &mut y);
        assert_ne!(x, y, "different seeds, different designs");
        assert!(LatinHypercube::new(0, 2, 1).is_err());
    }

    #[test]
    fn population_is_log_normal_with_the_requested_cv() {
        let pop = LogNormalPopulation::new(vec![5.0, 30.0, 1.0], vec![0.3, 0.0, 1.0], 2024).unwrap();
        let n = 200_000u64;
        let (mut s1, mut s2, mut below) = (0.0, 0.0, 0usize);
        let mut x = [0.0; 3];
        for m in 0..n {
            pop.member(m, &mut x);
            assert_eq!(x[1], 30.0);
            let l = (x[0] / 5.0).ln();
            s1 += l;
            s2 += l * l;
            below += (x[2] < 1.0) as usize;
        }
        let mean = s1 / n as f64;
        let sd = (s2 / n as f64 - mean * mean).sqrt();
        let omega = (1.0f64 + 0.09).ln().sqrt();
        assert!(mean.abs() < 0.005, "median off: {mean}");
        assert!((sd / omega - 1.0).abs() < 0.01, "sd {sd} vs {omega}");
        assert!((below as f64 / n as f64 - 0.5).abs() < 0.005, "median of the third parameter");
        // Random access: member 12345 alone equals member 12345 of the sweep above.
        let mut y = [0.0; 3];
        pop.member(12_345, &mut y);
        let mut z = [0.0; 3];
        let again = LogNormalPopulation::new(vec![5.0, 30.0, 1.0], vec![0.3, 0.0, 1.0], 2024).unwrap();
        again.member(12_345, &mut z);
        assert_eq!(y, z);
        assert!(LogNormalPopulation::new(vec![-1.0], vec![0.2], 1).is_err());
        assert!(LogNormalPopulation::new(vec![1.0], vec![-0.2], 1).is_err());
        assert!(LogNormalPopulation::new(vec![1.0, 2.0], vec![0.2], 1).is_err());
    }
}
