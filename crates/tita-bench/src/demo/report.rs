//! The demo's report (markdown and plots) and the comparison of a run with the committed
//! results.

use super::*;

pub(super) fn write_report(
    out: &Path,
    results: &DemoResults,
    test: &[Scene],
    captions: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    let json = serde_json::to_string_pretty(results).expect("plain data");
    jsonl::write_atomic(&out.join("results.json"), json.as_bytes())?;
    let config = &results.config;
    let names = method_names(config, &results.tuning);

    let mut md = String::from("# TITA in the synthetic world\n\n");
    let _ = writeln!(
        md,
        "Test split: {} images, POPE questions per sampler as in `data/test-*.jsonl`. Accuracy / F1 pooled over the three POPE samplers; CHAIR_i = share of objects mentioned in captions that are not in the image (lower is better), recall = share of present objects mentioned.\n",
        test.len()
    );
    md.push_str("| method | POPE acc | POPE F1 | yes ratio | random acc | popular acc | adversarial acc | CHAIR_i | CHAIR_s | recall |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for n in &names {
        let p = results.pope_overall.get(n).copied().unwrap_or_default();
        let split = |s: &str| {
            results
                .pope
                .get(s)
                .and_then(|r| r.get(n))
                .map_or(f64::NAN, |m| m.accuracy)
        };
        let c = results.chair.get(n).copied().unwrap_or_default();
        let _ = writeln!(
            md,
            "| {n} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            p.accuracy,
            p.f1,
            p.yes_ratio,
            split("test-random"),
            split("test-popular"),
            split("test-adversarial"),
            c.chair_i,
            c.chair_s,
            c.recall
        );
    }
    // The reading of the table, computed, so that it stays true after a retrain.
    let pope = |n: &str| results.pope_overall.get(n).copied().unwrap_or_default();
    let chair = |n: &str| results.chair.get(n).copied().unwrap_or_default();
    let popular = |n: &str| {
        results
            .pope
            .get("test-popular")
            .and_then(|r| r.get(n))
            .map_or(f64::NAN, |m| m.accuracy)
    };
    let tuning = &results.tuning;
    let b = Method::tita(tuning.lambda).name();
    let (t, g) = (pope(&b), pope("greedy"));
    let _ = writeln!(
        md,
        "\nTITA at the λ the validation split chose, `{b}`: POPE accuracy {:.3} against greedy's {:.3} ({:+.3}; popular split {:+.3}); its captions: CHAIR_i {:.3} against {:.3}, recall {:.3} against {:.3}. `{TARGET_DPO}`: POPE accuracy {:.3}, yes ratio {:.3}. `{REWARD_ALONE}`: {:.3}.",
        t.accuracy,
        g.accuracy,
        t.accuracy - g.accuracy,
        popular(&b) - popular("greedy"),
        chair(&b).chair_i,
        chair("greedy").chair_i,
        chair(&b).recall,
        chair("greedy").recall,
        pope(TARGET_DPO).accuracy,
        pope(TARGET_DPO).yes_ratio,
        pope(REWARD_ALONE).accuracy,
    );
    let tried = |values: Vec<(String, f64)>, chosen: String| {
        values
            .into_iter()
            .map(|(v, a)| {
                let mark = if v == chosen { " (chosen)" } else { "" };
                format!("{v}: {a:.3}{mark}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stage = |s: &Stage| format!("lr {} × {} steps", s.lr, s.steps);
    let _ = writeln!(
        md,
        "\nKnobs chosen on the validation split ({} images of their own; pooled POPE accuracy of each value tried):\n\n- TITA λ: {}\n- VCD α: {}\n- target DPO: {}",
        config.validation_images,
        tried(tuning.tita.iter().map(|t| (t.value.to_string(), t.accuracy)).collect(), tuning.lambda.to_string()),
        tried(tuning.vcd.iter().map(|t| (t.value.to_string(), t.accuracy)).collect(), tuning.vcd_alpha.to_string()),
        tried(tuning.dpo.iter().map(|t| (stage(&t.value), t.accuracy)).collect(), stage(&tuning.target_dpo)),
    );
    md.push_str("\n`tita-λ`: interpolate fusion with weight λ on the DPO-trained reward model; `reference-α`: log p_target + α (log p_reward − log p_reward-sft); `vcd-α`: visual contrastive decoding against the target on a noised image; `target-dpo`: the target itself DPO-tuned on the reward model's pairs; `reward-alone`: the reward model answering by itself.\n\nPlots: `lambda.png` (POPE accuracy / F1 per sampler and CHAIR against λ), `methods.png` (pooled POPE F1 and CHAIR_i per method).\n");

    // Example images: the first three where greedy hallucinated, else the first three.
    let greedy = &captions["greedy"];
    let mut picks: Vec<usize> = (0..test.len())
        .filter(|&k| !mentioned(&greedy[k]).is_subset(&test[k].present()))
        .take(3)
        .collect();
    for k in 0..test.len() {
        if picks.len() >= 3 {
            break;
        }
        if !picks.contains(&k) {
            picks.push(k);
        }
    }
    let examples = out.join("examples");
    std::fs::create_dir_all(&examples).map_err(|e| Error::io(&examples, e))?;
    md.push_str("\n## Examples\n");
    for k in picks {
        let file = format!("examples/test-{k}.png");
        let big = image::imageops::resize(
            &test[k].image,
            world::SIZE * 4,
            world::SIZE * 4,
            image::imageops::FilterType::Nearest,
        );
        save_png(&big, &out.join(&file))?;
        let _ = writeln!(
            md,
            "\n![test image {k}]({file})\n\ntruth: {}\n\n| method | caption | hallucinated |\n|---|---|---|",
            test[k].caption()
        );
        for n in &names {
            let c = &captions[n][k];
            let wrong: Vec<String> = mentioned(c)
                .difference(&test[k].present())
                .map(Category::name)
                .collect();
            let _ = writeln!(md, "| {n} | {c} | {} |", wrong.join(", "));
        }
    }
    md.push_str("\nSeconds spent answering in this run, per method (sweep methods share one prefill, split evenly):\n\n");
    for (n, s) in &results.seconds {
        let _ = writeln!(md, "- {n}: {s:.1}");
    }
    jsonl::write_atomic(&out.join("report.md"), md.as_bytes())?;
    write_plots(out, results)
}

fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    jsonl::write_atomic(path, bytes.get_ref())
}

fn write_plots(out: &Path, results: &DemoResults) -> Result<()> {
    let config = &results.config;
    let lambdas: Vec<(f64, String)> = config
        .method_list(&results.tuning)
        .iter()
        .filter_map(|m| m.lambda().map(|l| (l as f64, m.name())))
        .collect();
    let curve = |name: &str, get: &dyn Fn(&str) -> Option<f64>| Series {
        name: name.into(),
        points: lambdas
            .iter()
            .filter_map(|(l, n)| get(n).map(|v| (*l, v)))
            .collect(),
    };
    let mut panels: Vec<Panel> = SAMPLERS
        .iter()
        .map(|s| {
            let split = format!("test-{s}");
            let metric = |f: fn(&YesNoMetrics) -> f64| {
                let split = split.clone();
                move |n: &str| results.pope.get(&split).and_then(|r| r.get(n)).map(f)
            };
            Panel {
                title: format!("POPE {s}"),
                x_label: "λ (weight of the reward model)".into(),
                y_label: "metric".into(),
                series: vec![
                    curve("accuracy", &metric(|m| m.accuracy)),
                    curve("F1", &metric(|m| m.f1)),
                    curve("yes ratio", &metric(|m| m.yes_ratio)),
                ],
            }
        })
        .collect();
    panels.push(Panel {
        title: "captions".into(),
        x_label: "λ (weight of the reward model)".into(),
        y_label: "rate".into(),
        series: vec![
            curve("CHAIR_i", &|n| results.chair.get(n).map(|c| c.chair_i)),
            curve("CHAIR_s", &|n| results.chair.get(n).map(|c| c.chair_s)),
            curve("recall", &|n| results.chair.get(n).map(|c| c.recall)),
        ],
    });
    line_panels(&out.join("lambda.png"), &panels)?;
    let names = method_names(config, &results.tuning);
    let bars = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<(String, f64)> {
        names
            .iter()
            .filter_map(|n| f(n).map(|v| (n.clone(), v)))
            .collect()
    };
    bar_chart(
        &out.join("methods.png"),
        "POPE F1, all samplers pooled (higher is better)",
        "F1",
        &bars(&|n| results.pope_overall.get(n).map(|m| m.f1)),
    )?;
    bar_chart(
        &out.join("chair.png"),
        "CHAIR_i of captions (lower is better)",
        "CHAIR_i",
        &bars(&|n| results.chair.get(n).map(|c| c.chair_i)),
    )
}

/// How far a rerun's metrics may be from the committed ones: greedy answers of the same
/// weights only move if a near-tie flips under another summation order, by 1/count each.
pub const TOLERANCE: f64 = 0.01;

/// Largest absolute difference between the metrics of a run `a` and the results `b` it should
/// reproduce (POPE and CHAIR), with where it is: every metric of `b` is compared, and an error
/// names one that `a` lacks. Methods only `a` has are new ([`new_methods`]).
pub fn max_difference(
    a: &DemoResults,
    b: &DemoResults,
) -> std::result::Result<(f64, String), String> {
    let mut worst = (0.0f64, String::new());
    let mut see = |what: String, x: f64, y: f64| {
        let d = (x - y).abs();
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, what);
        }
    };
    for (split, row) in &b.pope {
        let other = a.pope.get(split).ok_or(format!("no POPE split {split}"))?;
        for (m, y) in row {
            let x = other.get(m).ok_or(format!("no method {m} on {split}"))?;
            see(format!("{split}/{m}/accuracy"), x.accuracy, y.accuracy);
            see(format!("{split}/{m}/f1"), x.f1, y.f1);
            see(format!("{split}/{m}/yes_ratio"), x.yes_ratio, y.yes_ratio);
        }
    }
    for (m, y) in &b.chair {
        let x = a.chair.get(m).ok_or(format!("no CHAIR of {m}"))?;
        see(format!("chair/{m}/chair_i"), x.chair_i, y.chair_i);
        see(format!("chair/{m}/chair_s"), x.chair_s, y.chair_s);
        see(format!("chair/{m}/recall"), x.recall, y.recall);
    }
    Ok(worst)
}

/// The methods a run `a` evaluated that the results `b` do not hold.
pub fn new_methods(a: &DemoResults, b: &DemoResults) -> Vec<String> {
    (a.pope_overall.keys())
        .filter(|m| !b.pope_overall.contains_key(*m))
        .cloned()
        .collect()
}
