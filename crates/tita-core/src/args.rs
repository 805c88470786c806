//! Checks of command-line values, written as clap value parsers
//! (`#[arg(long, value_parser = tita_core::args::count)]`), so that a value that would make a
//! run meaningless is refused with the flag's name before anything starts.

/// A count of at least 1 (tokens, steps, queries, questions, a batch).
pub fn count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number >= 1: {e}")),
    }
}

/// A finite number above 0.
pub fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(x) => Err(format!("{x} must be a finite number above 0")),
        Err(e) => Err(format!("expected a number above 0: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_positive_numbers() {
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").unwrap_err().contains("at least 1"));
        assert!(count("-1").is_err() && count("x").is_err());
        assert_eq!(positive("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
    }
}
