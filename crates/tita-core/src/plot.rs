//! PNG charts for results a person would rather look at than read: line charts (training
//! curves, metric versus λ) and bar charts (methods side by side). Text is drawn with the
//! bundled DejaVu Sans, so plots look the same on every machine and need no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const PANEL: (u32, u32) = (640, 420);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let bytes = include_bytes!("../assets/DejaVuSans.ttf");
        // Cannot fail for a valid TTF, which this is.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.into(),
        msg: format!("cannot draw the chart: {e}"),
    }
}

/// Range of `values` with a margin, never empty.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9 + hi.abs() * 1e-3);
    (lo - pad, hi + pad)
}

/// Writes the panels side by side into one PNG at `path` (atomically).
pub fn line_panels(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font();
    let (w, h) = (PANEL.0 * panels.len().max(1) as u32, PANEL.1);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(areas) {
            let xs = span(
                panel
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0)),
            );
            let ys = span(
                panel
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.1)),
            );
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)
                .map_err(|e| plot_err(path, e))?;
            chart
                .configure_mesh()
                .x_desc(&panel.x_label)
                .y_desc(&panel.y_label)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| plot_err(path, e))?;
            for (i, s) in panel.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| plot_err(path, e))?
                    .label(&s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                if s.points.len() <= 40 {
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| plot_err(path, e))?;
                }
            }
            if panel.series.len() > 1 || panel.series.iter().any(|s| !s.name.is_empty()) {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .draw()
                    .map_err(|e| plot_err(path, e))?;
            }
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_png(path, buf, w, h)
}

/// A bar per (label, value), in order, into one PNG at `path` (atomically).
pub fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<()> {
    let bars: Vec<(String, f64, f64)> = bars.iter().map(|(l, v)| (l.clone(), *v, 0.0)).collect();
    error_bar_chart(path, title, y_label, &bars)
}

/// A bar chart whose bars `(label, value, spread)` carry an error bar of ± spread (none at 0).
pub fn error_bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[(String, f64, f64)],
) -> Result<()> {
    register_font();
    let (w, h) = ((160 + 90 * bars.len() as u32).max(PANEL.0), PANEL.1 + 60);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let (lo, hi) = span(
            bars.iter()
                .flat_map(|b| [b.1 - b.2, b.1 + b.2])
                .chain([0.0]),
        );
        let n = bars.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(90)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, lo.min(0.0)..hi)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(y_label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, (label, v, spread)) in bars.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let x = i as f64;
            chart
                .draw_series([Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, *v)],
                    color.filled(),
                )])
                .map_err(|e| plot_err(path, e))?;
            if *spread > 0.0 {
                let (a, b) = (v - spread, v + spread);
                chart
                    .draw_series(
                        [
                            [(x + 0.5, a), (x + 0.5, b)],
                            [(x + 0.4, a), (x + 0.6, a)],
                            [(x + 0.4, b), (x + 0.6, b)],
                        ]
                        .map(|line| PathElement::new(line.to_vec(), BLACK.stroke_width(2))),
                    )
                    .map_err(|e| plot_err(path, e))?;
            }
            let style = ("sans-serif", 13).into_text_style(&root);
            chart
                .draw_series([Text::new(format!("{v:.3}"), (x + 0.2, *v), style.clone())])
                .map_err(|e| plot_err(path, e))?;
            let (px, py) = chart.backend_coord(&(x + 0.1, lo.min(0.0)));
            root.draw(&Text::new(
                label.clone(),
                (px, py + 8),
                style.transform(FontTransform::Rotate90),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    save_png(path, buf, w, h)
}

fn save_png(path: &Path, buf: Vec<u8>, w: u32, h: u32) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| plot_err(path, "buffer size"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| plot_err(path, e))?;
    crate::jsonl::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_png() {
        let dir = std::env::temp_dir().join(format!("tita-plot-{}", std::process::id()));
        let lines = dir.join("lines.png");
        let panel = |t: &str| Panel {
            title: t.into(),
            x_label: "step".into(),
            y_label: "value".into(),
            series: vec![
                Series {
                    name: "a".into(),
                    points: (0..10).map(|i| (i as f64, (i as f64).sqrt())).collect(),
                },
                Series {
                    name: "b".into(),
                    points: vec![(0.0, 1.0), (9.0, 1.0)],
                },
            ],
        };
        line_panels(&lines, &[panel("loss"), panel("accuracy")]).unwrap();
        let img = image::open(&lines).unwrap();
        assert_eq!((img.width(), img.height()), (2 * PANEL.0, PANEL.1));
        let bars = dir.join("bars.png");
        bar_chart(
            &bars,
            "F1 by method",
            "F1",
            &[("greedy".into(), 0.8), ("tita λ=0.3".into(), 0.85)],
        )
        .unwrap();
        assert!(image::open(&bars).is_ok());
        // The same bar with and without an error bar: the error bar puts hundreds of black
        // pixels over the middle of the plot (the axes and tick labels are at its edges).
        let black_in_middle = |spread: f64| {
            let path = dir.join(format!("errors-{spread}.png"));
            error_bar_chart(&path, "acc", "acc", &[("a".into(), 0.5, spread)]).unwrap();
            let img = image::open(&path).unwrap().to_rgb8();
            let (w, h) = (img.width(), img.height());
            (w * 2 / 5..w * 3 / 5)
                .flat_map(|x| (0..h).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0])
                .count()
        };
        let (with, without) = (black_in_middle(0.2), black_in_middle(0.0));
        assert!(with > without + 300, "{with} vs {without}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
