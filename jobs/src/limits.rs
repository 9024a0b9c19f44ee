//! Estimate before allocating: every buffer whose size a config value sets
//! is sized here first, and refused, with the estimate and the config key
//! to change, when it would exceed [`MAX_BUFFER_BYTES`]. No command aborts
//! on an allocation it could have foreseen.

/// The largest single buffer a command allocates from a config value
/// (1 GiB): output grids, grid axes, chunk buffers, network weights.
pub const MAX_BUFFER_BYTES: f64 = (1u64 << 30) as f64;

/// Checks that `count` items of `bytes_each` bytes fit in
/// [`MAX_BUFFER_BYTES`]; returns `count` as a `usize`. `what` describes the
/// buffer, `key` is the config key that sets it. The error is the complete
/// message: the estimate, the limit and the key.
pub fn check_alloc(count: f64, bytes_each: usize, what: &str, key: &str) -> Result<usize, String> {
    let bytes = count * bytes_each as f64;
    if !(count.is_finite() && count >= 0.0 && bytes <= MAX_BUFFER_BYTES) {
        return Err(format!(
            "{key}: {what} would need {} items ({}), over the limit of {} for one buffer; change `{key}`",
            fmt_count(count),
            fmt_bytes(bytes),
            fmt_bytes(MAX_BUFFER_BYTES)
        ));
    }
    Ok(count as usize)
}

/// A count for messages (`1.2e11` style above a million).
pub fn fmt_count(x: f64) -> String {
    if x.is_finite() && x < 1e6 {
        format!("{x:.0}")
    } else {
        format!("{x:.2e}")
    }
}

/// A byte size for messages (`800 GB`, `3.2 MB`; decimal units).
pub fn fmt_bytes(b: f64) -> String {
    if !b.is_finite() {
        return "an unbounded amount of memory".to_string();
    }
    let units = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (u, s) in units {
        if b >= s {
            let v = format!("{:.3}", b / s);
            return format!("{} {u}", v.trim_end_matches('0').trim_end_matches('.'));
        }
    }
    format!("{b:.0} B")
}

/// Smallest relative tolerance accepted (below it round-off dominates).
pub const MIN_RTOL: f64 = 1e-14;
/// Largest relative tolerance accepted (above it nothing is accurate).
pub const MAX_RTOL: f64 = 0.1;

/// Checks the config keys `rtol` (in [`MIN_RTOL`], [`MAX_RTOL`]) and `atol`
/// (finite, > 0); the error names the key, the value and the range.
pub fn check_tolerances(rtol: f64, atol: f64) -> Result<(), String> {
    if !(rtol.is_finite() && (MIN_RTOL..=MAX_RTOL).contains(&rtol)) {
        return Err(format!("rtol = {rtol:e}: must be between {MIN_RTOL:e} and {MAX_RTOL} (a relative error)"));
    }
    if !(atol.is_finite() && atol > 0.0) {
        return Err(format!("atol = {atol:e}: must be a finite number > 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_the_estimate_and_the_key() {
        assert_eq!(check_alloc(100.0, 8, "x", "k").unwrap(), 100);
        let e = check_alloc(1e11, 8, "the grid axis", "[params] EC50.n").unwrap_err();
        assert!(e.contains("800 GB") && e.contains("`[params] EC50.n`") && e.contains("1.00e11"), "{e}");
        assert!(check_alloc(f64::INFINITY, 8, "x", "k").is_err());
        assert!(check_alloc(f64::NAN, 8, "x", "k").is_err());
    }
}
