//! Test fixtures shared by the integration tests.
#![allow(dead_code)]

use insilico_solvers::System;

/// One compartment with a depot, as NONMEM ran nmtest.csv.
/// Parameters: [ka, cl, v, p3, p4, p5]; p3..p5 do not enter the right-hand side
/// (tests point dose attributes such as lag, F and duration at them).
/// depot' = -ka depot; central' = ka depot - cl/v central; params [ka, cl, v]; output cp = central/(v/1000).
pub struct OneCmt;
impl System for OneCmt {
    fn nstates(&self) -> usize {
        2
    }
    fn nparams(&self) -> usize {
        6
    }
    fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) {
        dx[0] = -p[0] * x[0];
        dx[1] = p[0] * x[0] - p[1] / p[2] * x[1];
    }
    fn jvp(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], v: &[f64], o: &mut [f64]) {
        o[0] = -p[0] * v[0];
        o[1] = p[0] * v[0] - p[1] / p[2] * v[1];
    }
    fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], o: &mut [f64]) {
        o[0] = -p[0] * w[0] + p[0] * w[1];
        o[1] = -p[1] / p[2] * w[1];
    }
    fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], o: &mut [f64]) {
        o[0] = -x[0] * v[0];
        o[1] = x[0] * v[0] - x[1] / p[2] * v[1] + p[1] * x[1] / (p[2] * p[2]) * v[2];
    }
    fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], o: &mut [f64]) {
        o[0] = -x[0] * w[0] + x[0] * w[1];
        o[1] = -x[1] / p[2] * w[1];
        o[2] = p[1] * x[1] / (p[2] * p[2]) * w[1];
        o[3] = 0.0;
        o[4] = 0.0;
        o[5] = 0.0;
    }
    fn noutputs(&self) -> usize {
        1
    }
    fn output(&self, _k: usize, _t: f64, x: &[f64], p: &[f64]) -> f64 {
        x[1] / (p[2] / 1000.0)
    }
    fn output_grad(&self, _k: usize, _t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        gx[1] += 1000.0 / p[2];
        gp[2] -= 1000.0 * x[1] / (p[2] * p[2]);
    }
}
