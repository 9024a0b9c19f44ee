//! Free-energy landscapes on regular 1-D and 2-D grids, the Mueller–Brown
//! potential, and perturbation shapes (wells, tilts).

use super::ConformationError;

/// A regular grid of cells in 1-D (`ny = 1`) or 2-D. Cell `(ix, iy)` has
/// index `iy·nx + ix` and centre `(x_lo + (ix + ½)·hx, y_lo + (iy + ½)·hy)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Cells along x.
    pub nx: usize,
    /// Cells along y (1 for a 1-D grid).
    pub ny: usize,
    /// Domain along x.
    pub x: (f64, f64),
    /// Domain along y (ignored for a 1-D grid).
    pub y: (f64, f64),
}

impl Grid {
    /// A 1-D grid of `n` cells over `[lo, hi]`.
    pub fn new_1d(n: usize, lo: f64, hi: f64) -> Result<Self, ConformationError> {
        Self::new_2d(n, 1, (lo, hi), (0.0, 1.0))
    }

    /// A 2-D grid of `nx × ny` cells over `[x.0, x.1] × [y.0, y.1]`.
    pub fn new_2d(nx: usize, ny: usize, x: (f64, f64), y: (f64, f64)) -> Result<Self, ConformationError> {
        if nx == 0 || ny == 0 {
            return Err(ConformationError::Invalid(format!("grid of {nx} x {ny} cells")));
        }
        for (lo, hi) in [x, y] {
            if !(lo.is_finite() && hi.is_finite() && hi > lo) {
                return Err(ConformationError::Invalid(format!("grid interval [{lo}, {hi}] is empty or not finite")));
            }
        }
        Ok(Grid { nx, ny, x, y })
    }

    /// The P3 grid: 64 × 64 cells on `[−1.5, 1.2] × [−0.2, 2.0]`.
    pub fn p3() -> Self {
        Grid { nx: 64, ny: 64, x: (-1.5, 1.2), y: (-0.2, 2.0) }
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.nx * self.ny
    }

    /// Whether the grid has no cells (never, for a constructed grid).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the grid is 1-D.
    pub fn is_1d(&self) -> bool {
        self.ny == 1
    }

    /// Cell width along x.
    pub fn hx(&self) -> f64 {
        (self.x.1 - self.x.0) / self.nx as f64
    }

    /// Cell width along y.
    pub fn hy(&self) -> f64 {
        (self.y.1 - self.y.0) / self.ny as f64
    }

    /// Centre of cell `i` (`y` is the centre of the y-interval on a 1-D grid).
    pub fn centre(&self, i: usize) -> (f64, f64) {
        let (ix, iy) = (i % self.nx, i / self.nx);
        (self.x.0 + (ix as f64 + 0.5) * self.hx(), self.y.0 + (iy as f64 + 0.5) * self.hy())
    }

    /// Neighbouring cell pairs `(i, j, h)` with `i < j` and `h` the spacing
    /// between their centres (4-neighbourhood in 2-D, 2 in 1-D).
    pub fn neighbours(&self) -> Vec<(usize, usize, f64)> {
        let mut out = Vec::with_capacity(2 * self.len());
        for iy in 0..self.ny {
            for ix in 0..self.nx {
                let i = iy * self.nx + ix;
                if ix + 1 < self.nx {
                    out.push((i, i + 1, self.hx()));
                }
                if iy + 1 < self.ny {
                    out.push((i, i + self.nx, self.hy()));
                }
            }
        }
        out
    }

    /// Evaluates `f(x, y)` at every cell centre.
    pub fn map(&self, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        (0..self.len())
            .map(|i| {
                let (x, y) = self.centre(i);
                f(x, y)
            })
            .collect()
    }

    /// A well `−exp(−((x−x0)² + (y−y0)²)/(2σ²))` at every cell (a shape:
    /// multiply by the depth). On a 1-D grid only `x0` matters.
    pub fn well(&self, x0: f64, y0: f64, sigma: f64) -> Vec<f64> {
        let one_d = self.is_1d();
        self.map(|x, y| {
            let dy = if one_d { 0.0 } else { y - y0 };
            -(-((x - x0).powi(2) + dy * dy) / (2.0 * sigma * sigma)).exp()
        })
    }

    /// A linear tilt `−(ex·x + ey·y)` (a shape: multiply by the force; a
    /// force `F` along `(ex, ey)` lowers the free energy by `F·(e·r)`).
    pub fn tilt(&self, ex: f64, ey: f64) -> Vec<f64> {
        self.map(|x, y| -(ex * x + ey * y))
    }
}

/// The Mueller–Brown potential (P3's coefficients):
/// `V(x, y) = Σₖ Aₖ exp(aₖ(x−x0ₖ)² + bₖ(x−x0ₖ)(y−y0ₖ) + cₖ(y−y0ₖ)²)`.
pub fn mueller_brown(x: f64, y: f64) -> f64 {
    const A: [f64; 4] = [-200.0, -100.0, -170.0, 15.0];
    const AA: [f64; 4] = [-1.0, -1.0, -6.5, 0.7];
    const B: [f64; 4] = [0.0, 0.0, 11.0, 0.6];
    const C: [f64; 4] = [-10.0, -10.0, -6.5, 0.7];
    const X0: [f64; 4] = [1.0, 0.0, -0.5, -1.0];
    const Y0: [f64; 4] = [0.0, 0.5, 1.5, 1.0];
    (0..4)
        .map(|k| {
            let (dx, dy) = (x - X0[k], y - Y0[k]);
            A[k] * (AA[k] * dx * dx + B[k] * dx * dy + C[k] * dy * dy).exp()
        })
        .sum()
}

/// A free-energy landscape: a value per grid cell (energy units, the same
/// as `kT`).
#[derive(Debug, Clone, PartialEq)]
pub struct Landscape {
    /// The grid.
    pub grid: Grid,
    /// Free energy per cell.
    pub values: Vec<f64>,
}

impl Landscape {
    /// Samples `f(x, y)` at the cell centres (`y` unused in 1-D).
    pub fn from_fn(grid: Grid, f: impl Fn(f64, f64) -> f64) -> Result<Self, ConformationError> {
        Self::from_values(grid, grid.map(f))
    }

    /// Takes per-cell values (index `iy·nx + ix`).
    pub fn from_values(grid: Grid, values: Vec<f64>) -> Result<Self, ConformationError> {
        if values.len() != grid.len() {
            return Err(ConformationError::Invalid(format!(
                "{} landscape values for a grid of {} cells",
                values.len(),
                grid.len()
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ConformationError::Invalid(format!("landscape value at cell {i} is {}", values[i])));
        }
        Ok(Landscape { grid, values })
    }

    /// The Mueller–Brown landscape on the P3 grid.
    pub fn p3() -> Self {
        let grid = Grid::p3();
        Landscape { grid, values: grid.map(mueller_brown) }
    }
}
