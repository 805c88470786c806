//! The picture of a training run: loss, and for DPO reward accuracy and margin, per step.

use std::path::Path;

use tita_core::plot::{line_panels, Panel, Series};
use tita_core::Result;

use crate::trainer::StepMetrics;

/// Writes `metrics.png`-style curves of `metrics` to `path`.
pub fn write_training_plot(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    let series = |name: &str, f: &dyn Fn(&StepMetrics) -> Option<f64>| Series {
        name: name.to_string(),
        points: metrics
            .iter()
            .filter_map(|m| f(m).map(|v| (m.step as f64, v)))
            .collect(),
    };
    let mut panels = vec![Panel {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![series("loss", &|m| Some(m.loss))],
    }];
    if metrics.iter().any(|m| m.reward_accuracy.is_some()) {
        panels.push(Panel {
            title: "implicit rewards".into(),
            x_label: "step".into(),
            y_label: "value".into(),
            series: vec![
                series("reward accuracy", &|m| m.reward_accuracy),
                series("margin", &|m| m.margin),
                series("chosen reward", &|m| m.chosen_reward),
                series("rejected reward", &|m| m.rejected_reward),
            ],
        });
    }
    panels.push(Panel {
        title: "learning rate".into(),
        x_label: "step".into(),
        y_label: "lr".into(),
        series: vec![series("lr", &|m| Some(m.lr))],
    });
    line_panels(path, &panels)
}
