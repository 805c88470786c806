//! Progress bars for long jobs (training steps, questions), with elapsed time and ETA.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items named `unit`, hidden when `show` is false (tests, library use).
pub fn bar(show: bool, len: usize, unit: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed}} < {{eta}}] {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar
}
