//! The demo over several seeds: each seed is a whole run (world, models, evaluation) in its
//! own folder `seed-N`; the summary gives every method's mean ± sd over the seeds and its
//! paired difference from greedy decoding (the same seed's world and target).

use tita_core::plot::error_bar_chart;

use super::*;

/// Mean and sample standard deviation (n − 1; 0 for one value) of a metric over the seeds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len() as f64;
        if xs.is_empty() {
            return Spread::default();
        }
        let mean = xs.iter().sum::<f64>() / n;
        let sd = if xs.len() < 2 {
            0.0
        } else {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Spread { mean, sd }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ± {:.3}", self.mean, self.sd)
    }
}

/// One method over the seeds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MethodSummary {
    /// POPE, the three samplers pooled.
    pub accuracy: Spread,
    pub f1: Spread,
    pub yes_ratio: Spread,
    /// POPE accuracy per sampler.
    pub random: Spread,
    pub popular: Spread,
    pub adversarial: Spread,
    pub chair_i: Spread,
    pub recall: Spread,
    /// Paired differences from greedy: the per-seed difference, then its mean ± sd.
    pub accuracy_vs_greedy: Spread,
    pub popular_vs_greedy: Spread,
    pub chair_i_vs_greedy: Spread,
}

/// The demo's results over its seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedsSummary {
    pub seeds: Vec<u64>,
    /// Per method, in report order.
    pub methods: Vec<(String, MethodSummary)>,
}

impl DemoConfig {
    /// The run of one seed.
    pub fn for_seed(&self, seed: u64) -> Self {
        DemoConfig {
            seed,
            seeds: vec![seed],
            ..self.clone()
        }
    }
}

/// Where seed `seed`'s run lives under a demo folder.
pub fn seed_dir(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}

/// Rows of the summary standing for TITA and VCD at their validation-chosen knobs.
pub const TITA_TUNED: &str = "tita-tuned";
pub const VCD_TUNED: &str = "vcd-tuned";

/// The summary's rows: greedy, TITA at every λ and at the chosen one, the reference mode, VCD
/// at its chosen α, the DPO-tuned target, the reward model alone.
pub fn summary_rows(config: &DemoConfig) -> Vec<String> {
    let mut rows = vec!["greedy".to_string()];
    rows.extend(
        config
            .lambdas
            .iter()
            .map(|&lambda| Method::tita(lambda).name()),
    );
    rows.push(TITA_TUNED.into());
    rows.push(Method::reference(config.reference_alpha).name());
    rows.push(VCD_TUNED.into());
    rows.push(Method::Guided(M3id::default().into()).name());
    rows.push(MARINE_TRUTH.into());
    rows.extend([TARGET_DPO, REWARD_ALONE].map(String::from));
    rows
}

/// Every method's metrics over the runs of `config.seeds` (in that order).
pub fn summarise(config: &DemoConfig, runs: &[DemoResults]) -> Result<SeedsSummary> {
    let metric = |run: &DemoResults, row: &str, what: &str| -> Result<f64> {
        // The tuned rows stand for the method at the knob this seed's validation split chose.
        let t = &run.tuning;
        let method = match row {
            TITA_TUNED => Method::tita(t.lambda).name(),
            VCD_TUNED => Method::vcd(t.vcd_alpha, run.config.seed).name(),
            other => other.to_string(),
        };
        let method = method.as_str();
        let pope = |split: Option<&str>| {
            match split {
                None => run.pope_overall.get(method),
                Some(s) => run
                    .pope
                    .get(&format!("test-{s}"))
                    .and_then(|r| r.get(method)),
            }
            .copied()
        };
        let chair = run.chair.get(method).copied();
        let v = match what {
            "accuracy" => pope(None).map(|m| m.accuracy),
            "f1" => pope(None).map(|m| m.f1),
            "yes_ratio" => pope(None).map(|m| m.yes_ratio),
            "chair_i" => chair.map(|c| c.chair_i),
            "recall" => chair.map(|c| c.recall),
            split => pope(Some(split)).map(|m| m.accuracy),
        };
        v.ok_or_else(|| {
            Error::argument(
                "results",
                format!("seed {} has no {what} of {method}", run.config.seed),
            )
        })
    };
    let over = |method: &str, what: &str| -> Result<Vec<f64>> {
        runs.iter().map(|r| metric(r, method, what)).collect()
    };
    let paired = |method: &str, what: &str| -> Result<Spread> {
        let (m, g) = (over(method, what)?, over("greedy", what)?);
        Ok(Spread::of(
            &m.iter().zip(&g).map(|(a, b)| a - b).collect::<Vec<_>>(),
        ))
    };
    let methods = summary_rows(config)
        .into_iter()
        .map(|name| {
            let s = |what: &str| over(&name, what).map(|v| Spread::of(&v));
            let summary = MethodSummary {
                accuracy: s("accuracy")?,
                f1: s("f1")?,
                yes_ratio: s("yes_ratio")?,
                random: s("random")?,
                popular: s("popular")?,
                adversarial: s("adversarial")?,
                chair_i: s("chair_i")?,
                recall: s("recall")?,
                accuracy_vs_greedy: paired(&name, "accuracy")?,
                popular_vs_greedy: paired(&name, "popular")?,
                chair_i_vs_greedy: paired(&name, "chair_i")?,
            };
            Ok((name, summary))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SeedsSummary {
        seeds: config.seeds.clone(),
        methods,
    })
}

/// Runs `each` for every seed of `config` in its own folder, then writes the summary over
/// the seeds (`summary.json`, `report.md`, `seeds.png`, `seeds-paired.png`, `seeds-chair.png`)
/// into `out`.
pub fn over_seeds(
    out: &Path,
    config: &DemoConfig,
    mut each: impl FnMut(&Path, &DemoConfig) -> Result<DemoResults>,
) -> Result<(Vec<DemoResults>, SeedsSummary)> {
    if config.seeds.is_empty() {
        return Err(Error::argument("seeds", "the demo needs at least one seed"));
    }
    let runs = config
        .seeds
        .iter()
        .map(|&s| each(&seed_dir(out, s), &config.for_seed(s)))
        .collect::<Result<Vec<_>>>()?;
    let summary = summarise(config, &runs)?;
    write_summary(out, config, &summary)?;
    Ok((runs, summary))
}

/// Builds every model of every seed (see [`retrain`]), then summarises.
pub fn retrain_seeds<B: Backend>(
    out: &Path,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<(Vec<DemoResults>, SeedsSummary)> {
    check_config(out, config)?;
    over_seeds(out, config, |dir, c| {
        if progress {
            eprintln!("seed {}", c.seed);
        }
        retrain::<B>(dir, c, progress, device)
    })
}

/// Evaluates the models of every seed under `dir` (`seed-N/models`), then summarises.
pub fn evaluate_seeds<B: Backend>(
    dir: &Path,
    out: &Path,
    config: &DemoConfig,
    progress: bool,
    device: &B::Device,
) -> Result<(Vec<DemoResults>, SeedsSummary)> {
    over_seeds(out, config, |run, c| {
        evaluate::<B>(
            &seed_dir(dir, c.seed).join("models"),
            run,
            c,
            progress,
            device,
        )
    })
}

fn write_summary(out: &Path, config: &DemoConfig, summary: &SeedsSummary) -> Result<()> {
    let json = serde_json::to_string_pretty(summary).expect("plain data");
    jsonl::write_atomic(&out.join("summary.json"), json.as_bytes())?;
    let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
    let mut md = format!(
        "# TITA in the synthetic world, over {} seeds ({})\n\nEach seed is a whole run: its own world (images, splits, questions), its own models and their evaluation on its {} test images (`seed-N/report.md`). Mean ± sample sd over the seeds; POPE accuracy and F1 pooled over the three samplers.\n\n",
        summary.seeds.len(),
        seeds.join(", "),
        config.test_images
    );
    md.push_str("| method | POPE acc | POPE F1 | yes ratio | random acc | popular acc | adversarial acc | CHAIR_i | recall |\n|---|---|---|---|---|---|---|---|---|\n");
    for (n, m) in &summary.methods {
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.accuracy, m.f1, m.yes_ratio, m.random, m.popular, m.adversarial, m.chair_i, m.recall
        );
    }
    md.push_str("\nPaired differences from greedy (the same seed's world and target; mean ± sd of the per-seed differences):\n\n| method | POPE acc | popular acc | CHAIR_i |\n|---|---|---|---|\n");
    for (n, m) in summary.methods.iter().filter(|(n, _)| n != "greedy") {
        let _ = writeln!(
            md,
            "| {n} | {:+.3} ± {:.3} | {:+.3} ± {:.3} | {:+.3} ± {:.3} |",
            m.accuracy_vs_greedy.mean,
            m.accuracy_vs_greedy.sd,
            m.popular_vs_greedy.mean,
            m.popular_vs_greedy.sd,
            m.chair_i_vs_greedy.mean,
            m.chair_i_vs_greedy.sd
        );
    }
    md.push('\n');
    md.push_str(&reading(summary));
    md.push_str("\n\nPlots: `seeds.png` (pooled POPE accuracy, mean ± sd), `seeds-paired.png` (its paired difference from greedy, mean ± sd), `seeds-chair.png` (CHAIR_i, mean ± sd).\n");
    jsonl::write_atomic(&out.join("report.md"), md.as_bytes())?;
    let bars = |f: fn(&MethodSummary) -> Spread| -> Vec<(String, f64, f64)> {
        summary
            .methods
            .iter()
            .map(|(n, m)| (n.clone(), f(m).mean, f(m).sd))
            .collect()
    };
    error_bar_chart(
        &out.join("seeds.png"),
        &format!(
            "POPE accuracy, samplers pooled, mean ± sd over {} seeds",
            summary.seeds.len()
        ),
        "accuracy",
        &bars(|m| m.accuracy),
    )?;
    let paired: Vec<(String, f64, f64)> = summary
        .methods
        .iter()
        .filter(|(n, _)| n != "greedy")
        .map(|(n, m)| {
            (
                n.clone(),
                m.accuracy_vs_greedy.mean,
                m.accuracy_vs_greedy.sd,
            )
        })
        .collect();
    error_bar_chart(
        &out.join("seeds-paired.png"),
        &format!(
            "POPE accuracy minus greedy's on the same seed, mean ± sd over {} seeds",
            summary.seeds.len()
        ),
        "accuracy − greedy",
        &paired,
    )?;
    error_bar_chart(
        &out.join("seeds-chair.png"),
        &format!(
            "CHAIR_i of captions (lower is better), mean ± sd over {} seeds",
            summary.seeds.len()
        ),
        "CHAIR_i",
        &bars(|m| m.chair_i),
    )
}

/// The one-paragraph reading of the summary, computed from its numbers.
pub fn reading(summary: &SeedsSummary) -> String {
    let get = |n: &str| summary.methods.iter().find(|(m, _)| m == n).map(|(_, s)| s);
    let (Some(greedy), Some(tita)) = (get("greedy"), get(TITA_TUNED)) else {
        return String::new();
    };
    let d = tita.accuracy_vs_greedy;
    // A difference is called clear when its mean is more than twice its spread over seeds.
    let verdict = |s: Spread| {
        if s.mean.abs() > 2.0 * s.sd {
            if s.mean > 0.0 {
                "a clear gain"
            } else {
                "a clear loss"
            }
        } else {
            "within the spread over seeds"
        }
    };
    let gap = |split: Spread, name: &str| {
        let d = greedy.random.mean - split.mean;
        if d > 0.0 {
            format!("{d:.3} lower on {name} than on random")
        } else {
            format!("{:.3} higher on {name} than on random", -d)
        }
    };
    let mut text = format!(
        "Reading: greedy decoding of the target scores {} on POPE (random {}, popular {}, adversarial {}: {}, {}, the gaps the co-occurrence prior would open). TITA at the λ each seed's validation split chose (`{TITA_TUNED}`) scores {}: {:+.3} ± {:.3} against greedy over the seeds, {}; on the popular split {:+.3} ± {:.3}; CHAIR_i {:+.3} ± {:.3}.",
        greedy.accuracy,
        greedy.random,
        greedy.popular,
        greedy.adversarial,
        gap(greedy.popular, "popular"),
        gap(greedy.adversarial, "adversarial"),
        tita.accuracy,
        d.mean,
        d.sd,
        verdict(d),
        tita.popular_vs_greedy.mean,
        tita.popular_vs_greedy.sd,
        tita.chair_i_vs_greedy.mean,
        tita.chair_i_vs_greedy.sd,
    );
    for (name, what) in [
        (VCD_TUNED, "VCD at its chosen α"),
        (TARGET_DPO, "The DPO-tuned target"),
        (REWARD_ALONE, "The reward model alone"),
    ] {
        if let Some((n, m)) = summary.methods.iter().find(|(n, _)| n == name) {
            let _ = write!(
                text,
                " {what} (`{n}`): {} ({:+.3} ± {:.3}, {}).",
                m.accuracy,
                m.accuracy_vs_greedy.mean,
                m.accuracy_vs_greedy.sd,
                verdict(m.accuracy_vs_greedy)
            );
        }
    }
    text
}
