//! Yes/no question sets of any origin (`{"image", "text", "label": "yes"|"no"}` JSONL, the
//! demo world's splits): POPE's answer rule and binary-classification metrics. Also the
//! yes/no run report POPE and MME share.

use std::path::Path;

use tita_core::{Error, Result};

use crate::benchmark::{Benchmark, DataSpec, RunOutput, ScoreOptions, Scorecard};
use crate::eval::QuestionSet;
use crate::pope::{self, Reading, YesNoMetrics};
use crate::report::{score_all, write_reports};

pub struct YesNo;

impl Benchmark for YesNo {
    fn name(&self) -> &'static str {
        "yesno"
    }

    fn title(&self) -> &'static str {
        "yes/no evaluation"
    }

    fn about(&self) -> &'static str {
        "yes/no questions, JSONL {\"image\", \"text\", \"label\"}: --data the question files \
         (images next to them or under --images); score: one question file"
    }

    fn question_sets(&self, data: &DataSpec) -> Result<Vec<QuestionSet>> {
        read_files(&data.paths, data)
    }

    fn parse_answer(&self, text: &str) -> String {
        yes_no(pope::is_yes(text)).into()
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        report(self.title(), run, pope::pope_reading)
    }

    /// The project's own table (there is no official code): what `pope-score` prints.
    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        if data.is_dir() {
            return Err(Error::checkpoint(
                data,
                "a folder; yesno scores one question file (--data FILE)",
            ));
        }
        let questions = pope::read_questions(data)?;
        let m = pope::score(&questions, answers)?;
        Ok(Scorecard {
            printed: table(&pope::split_name(data), &m),
            metrics: serde_json::to_value(m).expect("plain data"),
            files: Vec::new(),
        })
    }
}

/// `"yes"` or `"no"`.
pub fn yes_no(yes: bool) -> &'static str {
    if yes {
        "yes"
    } else {
        "no"
    }
}

/// One question set per file, named after the file's split (`coco_pope_random.json` ->
/// random); `paths` must not be empty.
pub(crate) fn read_files(
    paths: &[std::path::PathBuf],
    data: &DataSpec,
) -> Result<Vec<QuestionSet>> {
    if paths.is_empty() {
        return Err(Error::argument("data", "no question files given"));
    }
    let sets = paths
        .iter()
        .map(|q| QuestionSet::read(q, data.images.as_deref(), data.limit))
        .collect::<Result<Vec<_>>>()?;
    // Answers are filed by set name: two files of one name would mix their answers and labels.
    for (i, set) in sets.iter().enumerate() {
        if let Some(j) = sets[..i].iter().position(|s| s.name == set.name) {
            return Err(Error::argument(
                "questions",
                format!(
                    "{} and {} are both the split `{}` (named after the file); rename one",
                    paths[j].display(),
                    paths[i].display(),
                    set.name
                ),
            ));
        }
    }
    Ok(sets)
}

/// The markdown table of one split's metrics, as `tita-bench pope-score` prints it.
pub fn table(split: &str, m: &YesNoMetrics) -> String {
    format!(
        "| split | count | accuracy | precision | recall | F1 | yes ratio |\n\
         |---|---|---|---|---|---|---|\n\
         | {split} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
        m.count, m.accuracy, m.precision, m.recall, m.f1, m.yes_ratio
    )
}

/// The yes/no report of a run: per set and pooled metrics of every method
/// (`results.json`, `report.md`, plots); returns the report (the command prints it).
pub fn report(title: &str, run: &RunOutput, read: Reading) -> Result<String> {
    let results = score_all(run.out, run.sets, run.config, run.speed.clone(), read)?;
    write_reports(run.out, title, &results)?;
    let path = run.out.join("report.md");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text)
}
