//! Bad Markov-model input gives errors naming the file and the row and
//! column (issue 14), never a panic.

use insilico_mechanistic::conformation::{MasterEquation, MatrixFile, MatrixKind, MsmMatrix, RateEstimate};

/// A little-endian f8 `.npy` of a square matrix.
fn npy(rows: &[&[f64]]) -> Vec<u8> {
    let n = rows.len();
    let mut h = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({n}, {n}), }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    for r in rows {
        for v in *r {
            b.extend(v.to_le_bytes());
        }
    }
    b
}

#[test]
fn non_stochastic_transition_matrix_names_the_row() {
    let m = MatrixFile::from_npy(&npy(&[&[0.9, 0.1], &[0.3, 0.6]]), "t.npy").unwrap();
    let e = m.chain(MatrixKind::Transition { lag: Some(1.0) }).unwrap_err().to_string();
    assert!(e.starts_with("t.npy: row 1, column 1: row 1 sums to 0.89"), "{e}");
    let m = MatrixFile::from_npy(&npy(&[&[1.1, -0.1], &[0.3, 0.7]]), "t.npy").unwrap();
    let e = m.chain(MatrixKind::Transition { lag: Some(1.0) }).unwrap_err().to_string();
    assert!(e.starts_with("t.npy: row 0, column 0: transition probability 1.1 is outside [0, 1]"), "{e}");
}

#[test]
fn missing_lag_time_is_an_error() {
    let m = MatrixFile::from_npy(&npy(&[&[0.9, 0.1], &[0.4, 0.6]]), "t.npy").unwrap();
    let e = m.chain(MatrixKind::Transition { lag: None }).unwrap_err().to_string();
    assert!(e.starts_with("t.npy: a transition matrix needs its lag time"), "{e}");
    assert!(m.chain(MatrixKind::Transition { lag: Some(2.0) }).is_ok());
}

#[test]
fn negative_rate_names_row_and_column() {
    let m = MatrixFile::from_npy(&npy(&[&[-1.0, 1.0, 0.0], &[0.5, 0.0, -0.5], &[0.0, 1.0, -1.0]]), "q.npy").unwrap();
    let e = m.chain(MatrixKind::Rate).unwrap_err().to_string();
    assert_eq!(e, "q.npy: row 1, column 2: off-diagonal rate -0.5 is negative");
    let m = MatrixFile::from_npy(&npy(&[&[-1.0, 0.5], &[1.0, -1.0]]), "q.npy").unwrap();
    let e = m.chain(MatrixKind::Rate).unwrap_err().to_string();
    assert!(e.starts_with("q.npy: row 0, column 0: row 0 sums to"), "{e}");
}

#[test]
fn reducible_model_names_its_components() {
    let text = "A,B,C,D\n-1,1,0,0\n1,-1,0,0\n0,0,-2,2\n0,0,2,-2\n";
    let dir = std::env::temp_dir().join(format!("insilico-interchange-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("red.csv");
    std::fs::write(&p, text).unwrap();
    let e = MatrixFile::read(&p).unwrap().chain(MatrixKind::Rate).unwrap_err().to_string();
    assert!(e.contains("the model is reducible: 2 strongly connected components: {A, B}, {C, D}"), "{e}");
    // a one-way edge: {A} drains into {B}
    std::fs::write(&p, "A,B\n-1,1\n0,0\n").unwrap();
    let e = MatrixFile::read(&p).unwrap().chain(MatrixKind::Rate).unwrap_err().to_string();
    assert!(e.contains("{A}, {B}"), "{e}");
    // CSV positions are file lines and 1-based columns
    std::fs::write(&p, "# rates\nA,B\n-1,1\n-2,2\n").unwrap();
    let e = MatrixFile::read(&p).unwrap().chain(MatrixKind::Rate).unwrap_err().to_string();
    assert!(e.ends_with("red.csv, line 4, column 1: off-diagonal rate -2 is negative"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unreadable_files_are_errors() {
    let e = MatrixFile::read("/nonexistent/m.npz").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/m.npz") && e.contains("cannot read"), "{e}");
    let e = MatrixFile::from_npz(b"not a zip at all, really not", "x.npz").unwrap_err().to_string();
    assert!(e.starts_with("x.npz: not a readable .npz"), "{e}");
    let e = MatrixFile::from_npy(b"\x93NUMPY\x01\x00", "x.npy").unwrap_err().to_string();
    assert!(e.starts_with("x.npy: not a NumPy .npy file"), "{e}");
}

/// A transition matrix whose logarithm is not a generator: the error gives
/// the remedies (`RateEstimate` choices, or discrete-time analysis).
#[test]
fn invalid_log_generator_offers_the_remedies() {
    // strongly oscillating two-state T: eigenvalue 1 − 0.6 − 0.6 < 0
    let t = MsmMatrix::parse("0.4,0.6\n0.6,0.4\n", "t.csv").unwrap();
    let e = MasterEquation::from_transition_matrix(&t, 1.0, 1.0, RateEstimate::MatrixLog).unwrap_err().to_string();
    assert!(e.contains("no real logarithm") && e.contains("RateEstimate::FirstOrder"), "{e}");
    // positive spectrum but a logarithm with negative off-diagonal rates
    let t = MsmMatrix::parse("0.9,0.1,0\n0.1,0.8,0.1\n0,0.1,0.9\n", "t3.csv").unwrap();
    let e = MasterEquation::from_transition_matrix(&t, 1.0, 1.0, RateEstimate::MatrixLog).unwrap_err().to_string();
    assert!(e.contains("not a valid generator") && e.contains("RateEstimate::FirstOrder"), "{e}");
}
