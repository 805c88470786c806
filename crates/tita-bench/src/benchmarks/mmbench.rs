//! MMBench and MMBench-CN as [`Benchmark`]s: the TSV's questions with LLaVA-1.5's prompts
//! (`llava/eval/model_vqa_mmbench.py`), images decoded from the TSV's base64 cells; scoring as
//! LLaVA's `scripts/convert_mmbench_for_submission.py` writes the upload `.xlsx`, and as
//! VLMEvalKit's CircularEval with exact matching (no judge model) scores it.
//!
//! The rules, kept here on purpose:
//! - prompt: `[hint\n]question\nA. a\nB. b…`, options up to the first empty cell (or a cell
//!   reading `nan`/`none` in any case); the instruction (EN or CN) is the runner's suffix;
//! - upload: the TSV without hint, category, source, image, comment, l2-category, with
//!   `prediction` as the 7th column; a question without an answer, or with an empty one, is an
//!   empty cell;
//! - CircularEval (VLMEvalKit after PR #1552): rows are grouped by `index mod 1e6` and read in
//!   index order; each prediction (an empty cell read back as `nan`) is matched to a letter by
//!   `can_infer`; a group fails at the first letter that is not its answer, succeeds when every
//!   letter is right, and fails when any row yields no letter (no judge under exact matching);
//!   `report_acc` averages the groups' hits overall, per l2-category (abbreviated) and per
//!   category. [`Matching::BeforePr1552`] gives the reading of the version before, which lacks
//!   the `answer is X` pattern.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use regex::Regex;
use serde_json::{json, Map, Value};
use tita_core::{jsonl, Error, Result};
use tita_decode::ImageInput;

use crate::benchmark::{
    headlines_in, read_answers, Benchmark, DataSpec, Headline, QuestionId, RunOutput, ScoreOptions,
    Scorecard,
};
use crate::benchmarks::scienceqa::{write_run_report, LETTER_INSTRUCTION};
use crate::eval::{answers_path, Query, QuerySet, RunAnswer};
use crate::python;

/// MMBench (English) or MMBench-CN: the same code, another instruction.
pub struct MmBench {
    cn: bool,
}

pub const MMBENCH: MmBench = MmBench { cn: false };
pub const MMBENCH_CN: MmBench = MmBench { cn: true };

/// model_vqa_mmbench.py's `--lang cn` instruction.
const CN_INSTRUCTION: &str = "请直接回答选项字母。";
const OPTIONS: [&str; 4] = ["A", "B", "C", "D"];
/// The columns convert_mmbench_for_submission.py drops.
const DROPPED: [&str; 6] = [
    "hint",
    "category",
    "source",
    "image",
    "comment",
    "l2-category",
];
/// VLMEvalKit's `MMB_abbrs`.
const L2_ABBREVIATIONS: [(&str, &str); 6] = [
    ("coarse_perception", "CP"),
    ("finegrained_perception (instance-level)", "FP-S"),
    ("finegrained_perception (cross-instance)", "FP-C"),
    ("logic_reasoning", "LR"),
    ("relation_reasoning", "RR"),
    ("attribute_reasoning", "AR"),
];
const PREFETCH_FAILED: &str =
    "Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy.";

fn overall(eval: &Value) -> Option<Headline> {
    Some(Headline {
        metric: "CircularEval overall % (exact matching)".into(),
        value: 100.0 * eval["report_acc"]["Overall"][0].as_f64()?,
    })
}

impl Benchmark for MmBench {
    fn name(&self) -> &'static str {
        if self.cn {
            "mmbench_cn"
        } else {
            "mmbench"
        }
    }

    fn title(&self) -> &'static str {
        if self.cn {
            "MMBench-CN"
        } else {
            "MMBench"
        }
    }

    fn about(&self) -> &'static str {
        if self.cn {
            "MMBench-CN (Liu et al., 2023): --data LLaVA's mmbench_cn folder or its TSV \
             (mmbench_dev_cn_20231003.tsv, base64 images; decoded images go to --images or \
             <split>_images/ beside it); score writes the upload .xlsx and prints VLMEvalKit's \
             CircularEval (exact matching) accuracies"
        } else {
            "MMBench (Liu et al., 2023): --data LLaVA's mmbench folder or its TSV \
             (mmbench_dev_20230712.tsv, base64 images; decoded images go to --images or \
             <split>_images/ beside it); score writes the upload .xlsx and prints VLMEvalKit's \
             CircularEval (exact matching) accuracies"
        }
    }

    fn instruction(&self) -> &'static str {
        if self.cn {
            CN_INSTRUCTION
        } else {
            LETTER_INSTRUCTION
        }
    }

    /// model_vqa_mmbench.py generates up to 1024 tokens.
    fn max_new_tokens(&self) -> usize {
        1024
    }

    /// Every row of the TSV (CircularEval's rotated copies included) as one set named after the
    /// TSV; the images are decoded into `--images` or `<split>_images/` beside the TSV.
    fn queries(&self, data: &DataSpec) -> Result<Vec<QuerySet>> {
        let tsv_path = self.find_tsv(data.single(self.name())?, None)?;
        let table = Table::read(&tsv_path)?;
        let split = split_name(&tsv_path);
        let images = data
            .images
            .clone()
            .unwrap_or_else(|| images_dir(&tsv_path, &split));
        std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
        let image_col = table.column("image")?;
        let mut set = QuerySet {
            name: split,
            queries: Vec::new(),
        };
        for row in &table.rows {
            if data.limit.is_some_and(|n| set.queries.len() >= n) {
                break;
            }
            let index = table.index(row)?;
            let bytes =
                decode_image(row.cells[image_col].as_deref().unwrap_or("")).map_err(|msg| {
                    Error::data(&tsv_path, row.line, format!("column `image`: {msg}"))
                })?;
            let name = format!(
                "{index}.{}",
                image_extension(&bytes).ok_or_else(|| {
                    Error::data(
                        &tsv_path,
                        row.line,
                        "column `image`: neither PNG nor JPEG data",
                    )
                })?
            );
            let file = images.join(&name);
            if std::fs::read(&file).ok().as_deref() != Some(&bytes[..]) {
                jsonl::write_atomic(&file, &bytes)?;
            }
            set.queries.push(Query {
                id: QuestionId::Int(index),
                text: table.prompt(row)?,
                image: Some(ImageInput::Path(file)),
            });
        }
        if set.queries.is_empty() {
            return Err(Error::checkpoint(&tsv_path, "no questions in this TSV"));
        }
        Ok(vec![set])
    }

    fn parse_answer(&self, text: &str) -> String {
        // Without the question's options the letters are all VLMEvalKit can read.
        let choices: Vec<(String, String)> = OPTIONS
            .iter()
            .map(|l| (l.to_string(), String::new()))
            .collect();
        can_infer_option(text, &choices, Matching::Current).unwrap_or_default()
    }

    // The table's MMBench number: CircularEval's overall accuracy (exact matching here).
    fn headline(&self, metrics: &Value) -> Option<Headline> {
        overall(&metrics["vlmevalkit_circular_exact_matching"])
    }

    fn run_headlines(&self, out: &Path) -> Result<BTreeMap<String, Headline>> {
        headlines_in(&out.join(format!("{}.json", self.name())), overall)
    }

    fn report_run(&self, run: &RunOutput) -> Result<String> {
        let mut rows = Vec::new();
        let mut all = Map::new();
        let tsv = self.find_tsv(run.data.single(self.name())?, None)?;
        for set in run.queries {
            let table = Table::read(&tsv)?;
            for method in &run.config.methods {
                let path = answers_path(run.out, method, &set.name);
                let mut predictions = HashMap::new();
                for (line, a) in jsonl::read::<RunAnswer>(&path)? {
                    if let QuestionId::Int(id) = a.question_id {
                        predictions.insert(id, (line, a.text));
                    }
                }
                let answered = predictions.len();
                let xlsx = table.upload(&predictions, &path)?;
                jsonl::write_atomic(
                    &run.out.join(format!(
                        "answers_upload/{}/{}.xlsx",
                        set.name,
                        method.name()
                    )),
                    &xlsx,
                )?;
                let eval = table.circular_eval(&predictions, Matching::Current)?;
                let overall = eval
                    .report
                    .overall()
                    .map_or("-".to_string(), |v| format!("{:.2}", v * 100.0));
                rows.push(vec![
                    method.name(),
                    set.name.clone(),
                    answered.to_string(),
                    overall,
                ]);
                all.insert(format!("{}/{}", method.name(), set.name), eval.metrics());
            }
        }
        write_run_report(
            run,
            self.title(),
            &format!("{}.json", self.name()),
            &[
                "method",
                "split",
                "answers",
                "CircularEval overall (exact matching)",
            ],
            rows,
            Value::Object(all),
        )
    }

    /// Writes the converter's upload (`answers_upload/<split>/<experiment>.xlsx`) and prints
    /// the `_acc.csv` VLMEvalKit writes for it (LLaVA prints nothing: its official score comes
    /// from OpenCompass's server); the numbers hold both VLMEvalKit readings.
    fn score(&self, data: &Path, answers: &Path, _: &ScoreOptions) -> Result<Scorecard> {
        let tsv_path = self.find_tsv(data, Some(answers))?;
        let table = Table::read(&tsv_path)?;
        let mut predictions = HashMap::new();
        for (line, a) in read_answers(answers)? {
            let QuestionId::Int(id) = a.question_id else {
                return Err(Error::data(
                    answers,
                    line,
                    format!(
                        "field `question_id`: expected the TSV's integer index, found {}",
                        a.question_id
                    ),
                ));
            };
            // `cur_df.loc[...] = text`: the last answer of an index wins.
            predictions.insert(id, (line, a.text));
        }
        let xlsx = table.upload(&predictions, answers)?;
        let current = table.circular_eval(&predictions, Matching::Current)?;
        let before = table.circular_eval(&predictions, Matching::BeforePr1552)?;
        let experiment = answers
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("answers");
        let split = split_name(&tsv_path);
        Ok(Scorecard {
            printed: current.report.csv(),
            metrics: json!({
                "vlmevalkit_circular_exact_matching": current.metrics(),
                "vlmevalkit_pre_pr1552": {
                    "groups_hit": before.groups.iter()
                        .map(|g| (g.index.to_string(), json!(g.hit)))
                        .collect::<Map<String, Value>>(),
                    "report_acc": before.report.json(),
                },
            }),
            files: vec![(
                PathBuf::from(format!("answers_upload/{split}/{experiment}.xlsx")),
                xlsx,
            )],
        })
    }
}

impl MmBench {
    /// `data` when it is the TSV; in a folder, the TSV named after the answers' folder
    /// (`answers/<split>/<experiment>.jsonl`), else the folder's only TSV.
    fn find_tsv(&self, data: &Path, answers: Option<&Path>) -> Result<PathBuf> {
        if data.is_file() {
            return Ok(data.to_path_buf());
        }
        if !data.is_dir() {
            return Err(Error::checkpoint(
                data,
                format!(
                    "not found; {} expects its TSV or the folder holding it",
                    self.name()
                ),
            ));
        }
        if let Some(split) = answers
            .and_then(|a| a.parent())
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        {
            let named = data.join(format!("{split}.tsv"));
            if named.is_file() {
                return Ok(named);
            }
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(data).map_err(|e| Error::io(data, e))? {
            let path = entry.map_err(|e| Error::io(data, e))?.path();
            if path.extension().is_some_and(|e| e == "tsv") {
                found.push(path);
            }
        }
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::checkpoint(
                data,
                format!(
                    "no .tsv here; {} expects e.g. mmbench_dev_20230712.tsv",
                    self.name()
                ),
            )),
            _ => Err(Error::checkpoint(
                data,
                "several .tsv files here: give the TSV itself as --data",
            )),
        }
    }
}

/// The split a TSV holds: its file stem (`mmbench_dev_20230712`).
fn split_name(tsv: &Path) -> String {
    tsv.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("mmbench")
        .to_string()
}

fn images_dir(tsv: &Path, split: &str) -> PathBuf {
    tsv.parent()
        .unwrap_or(Path::new("."))
        .join(format!("{split}_images"))
}

/// The bytes of a base64 cell (`base64.b64decode`; line breaks are ignored).
fn decode_image(cell: &str) -> std::result::Result<Vec<u8>, String> {
    let clean: String = cell.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err("empty: expected a base64 image".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| format!("not base64: {e}"))
}

fn image_extension(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else {
        None
    }
}

/// pandas' default NA strings (`read_csv`/`read_excel` read these cells as NaN).
const NA_VALUES: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// One TSV row: its line and its cells (None where pandas reads NaN).
struct Row {
    line: usize,
    cells: Vec<Option<String>>,
}

/// A TSV as `pd.read_table` reads it (tab-separated, `"`-quoted fields, NA strings).
struct Table {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<Row>,
}

impl Table {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut records = parse_tsv(&text).map_err(|(line, msg)| Error::data(path, line, msg))?;
        if records.is_empty() {
            return Err(Error::checkpoint(path, "empty TSV"));
        }
        let (_, header) = records.remove(0);
        let mut rows = Vec::new();
        for (line, fields) in records {
            if fields.len() != header.len() {
                return Err(Error::data(
                    path,
                    line,
                    format!("{} fields, the header has {}", fields.len(), header.len()),
                ));
            }
            let cells = fields
                .into_iter()
                .map(|f| (!NA_VALUES.contains(&f.as_str())).then_some(f))
                .collect();
            rows.push(Row { line, cells });
        }
        let table = Table {
            path: path.to_path_buf(),
            header,
            rows,
        };
        for col in ["index", "question", "answer"] {
            table.column(col)?;
        }
        Ok(table)
    }

    fn column(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            Error::data(
                &self.path,
                1,
                format!("no column `{name}` (columns: {})", self.header.join(", ")),
            )
        })
    }

    fn cell<'a>(&self, row: &'a Row, name: &str) -> Option<&'a str> {
        let col = self.header.iter().position(|h| h == name)?;
        row.cells[col].as_deref()
    }

    fn index(&self, row: &Row) -> Result<i64> {
        let raw = self.cell(row, "index").unwrap_or("");
        raw.trim().parse().map_err(|_| {
            Error::data(
                &self.path,
                row.line,
                format!("column `index`: expected an integer, found {raw:?}"),
            )
        })
    }

    /// model_vqa_mmbench.py's question: `[hint\n]question` and the options up to the first
    /// missing one.
    fn prompt(&self, row: &Row) -> Result<String> {
        let mut options = Vec::new();
        for letter in OPTIONS {
            self.column(letter)?;
            match self.cell(row, letter) {
                Some(v) if !is_none(v) => options.push((letter, v)),
                _ => break,
            }
        }
        let question = self
            .cell(row, "question")
            .ok_or_else(|| Error::data(&self.path, row.line, "column `question` is empty"))?;
        let mut text = match self.cell(row, "hint") {
            Some(hint) if !is_none(hint) => format!("{hint}\n{question}"),
            _ => question.to_string(),
        };
        for (letter, option) in options {
            text.push_str(&format!("\n{letter}. {option}"));
        }
        Ok(text)
    }

    /// The row of every index.
    fn by_index(&self) -> Result<HashMap<i64, &Row>> {
        let mut out = HashMap::new();
        for row in &self.rows {
            out.insert(self.index(row)?, row);
        }
        Ok(out)
    }

    /// convert_mmbench_for_submission.py's `.xlsx`. `predictions`: index -> (answers line,
    /// text); an index the TSV lacks is refused (the script would drop it silently).
    fn upload(
        &self,
        predictions: &HashMap<i64, (usize, String)>,
        answers: &Path,
    ) -> Result<Vec<u8>> {
        for col in DROPPED {
            self.column(col)?;
        }
        let rows = self.by_index()?;
        for (id, (line, _)) in predictions {
            if !rows.contains_key(id) {
                return Err(Error::data(
                    answers,
                    *line,
                    format!(
                        "question_id {id} is not an index of {}",
                        self.path.display()
                    ),
                ));
            }
        }
        let kept: Vec<usize> = (0..self.header.len())
            .filter(|&c| !DROPPED.contains(&self.header[c].as_str()))
            .collect();
        let mut headers: Vec<&str> = kept.iter().map(|&c| self.header[c].as_str()).collect();
        let at = headers.len().min(6);
        headers.insert(at, "prediction");
        let index_col = self.column("index")?;
        let xlsx_err = |e: rust_xlsxwriter::XlsxError| {
            Error::checkpoint(answers, format!("writing the upload .xlsx: {e}"))
        };
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.set_name("Sheet1").map_err(xlsx_err)?;
        for (c, h) in headers.iter().enumerate() {
            sheet.write_string(0, c as u16, *h).map_err(xlsx_err)?;
        }
        for (r, row) in self.rows.iter().enumerate() {
            let r = r as u32 + 1;
            let index = self.index(row)?;
            let mut values: Vec<Option<&str>> =
                kept.iter().map(|&c| row.cells[c].as_deref()).collect();
            let prediction = predictions
                .get(&index)
                .map(|(_, t)| t.as_str())
                .filter(|t| !t.is_empty());
            values.insert(at, prediction);
            for (c, value) in values.into_iter().enumerate() {
                let is_index = c < at && kept[c] == index_col;
                match value {
                    None => {}
                    Some(_) if is_index => {
                        sheet
                            .write_number(r, c as u16, index as f64)
                            .map_err(xlsx_err)?;
                    }
                    Some(v) => {
                        sheet.write_string(r, c as u16, v).map_err(xlsx_err)?;
                    }
                }
            }
        }
        book.save_to_buffer().map_err(xlsx_err)
    }

    /// VLMEvalKit's `mcq_circular_eval` (exact matching) and `report_acc` over the TSV with
    /// these predictions.
    fn circular_eval(
        &self,
        predictions: &HashMap<i64, (usize, String)>,
        matching: Matching,
    ) -> Result<CircularEval> {
        let mut rows: Vec<(i64, &Row)> = self
            .rows
            .iter()
            .map(|r| Ok((self.index(r)?, r)))
            .collect::<Result<_>>()?;
        rows.sort_by_key(|(i, _)| *i);
        // `build_choices`: every column A–Z, in letter order.
        let mut letters: Vec<&String> = self
            .header
            .iter()
            .filter(|h| h.len() == 1 && h.chars().all(|c| c.is_ascii_uppercase()))
            .collect();
        letters.sort();
        // `str(prediction)`: a missing or empty prediction comes back from the .xlsx as NaN.
        let prediction = |index: i64| -> String {
            predictions
                .get(&index)
                .map(|(_, t)| t.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "nan".into())
        };
        let mut inferred = Vec::new();
        let mut by_group: HashMap<i64, Vec<Reading>> = HashMap::new();
        for (index, row) in &rows {
            let choices: Vec<(String, String)> = letters
                .iter()
                .filter_map(|l| self.cell(row, l).map(|v| (l.to_string(), v.to_string())))
                .collect();
            let pred = prediction(*index);
            let letter = can_infer(&pred, &choices, matching);
            inferred.push((*index, letter.clone()));
            let truth = self.cell(row, "answer").unwrap_or("").to_string();
            by_group
                .entry(index.rem_euclid(1_000_000))
                .or_default()
                .push(Reading {
                    truth,
                    prediction: pred,
                    letter,
                });
        }
        let mut groups = Vec::new();
        for (index, row) in &rows {
            if index.rem_euclid(1_000_000) != *index {
                continue;
            }
            let (hit, log) = prefetch_group(&by_group[index]);
            groups.push(Group {
                index: *index,
                hit,
                log,
                split: self.cell(row, "split").map(str::to_string),
                l2: self.cell(row, "l2-category").map(str::to_string),
                category: self.cell(row, "category").map(str::to_string),
            });
        }
        let has = |c: &str| self.header.iter().any(|h| h == c);
        let report = report_acc(&groups, has("split"), has("l2-category"), has("category"));
        Ok(CircularEval {
            groups,
            report,
            inferred,
        })
    }
}

/// model_vqa_mmbench.py's `is_none` on a cell pandas read as a string.
fn is_none(value: &str) -> bool {
    let lower = value.to_lowercase();
    lower == "nan" || lower == "none"
}

/// A TSV's `(first line, fields)` records.
type Records = Vec<(usize, Vec<String>)>;

/// Splits a TSV into `(line, fields)` records as pandas' C parser does: tabs between fields,
/// `"`-quoted fields (`""` inside is one quote; tabs and line breaks inside are kept), blank
/// lines skipped.
fn parse_tsv(text: &str) -> std::result::Result<Records, (usize, String)> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut at_start = true;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err((start, "a quoted field is not closed".into()));
                }
                break;
            };
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => quoted = false,
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '"' if at_start => {
                    quoted = true;
                    at_start = false;
                }
                '\t' => {
                    fields.push(std::mem::take(&mut field));
                    at_start = true;
                }
                '\n' => {
                    line += 1;
                    break;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                _ => {
                    field.push(c);
                    at_start = false;
                }
            }
        }
        fields.push(field);
        if !(fields.len() == 1 && fields[0].is_empty()) {
            records.push((start, fields));
        }
    }
    Ok(records)
}

/// Which VLMEvalKit the letters are read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// After PR #1552 (June 2026): `… answer is **X**` is read as X.
    Current,
    /// The version just before (@ 0bccf452).
    BeforePr1552,
}

/// VLMEvalKit's `can_infer`: a letter, `Z` (the model declined), or None. `choices` are
/// (letter, option text) in letter order.
pub fn can_infer(answer: &str, choices: &[(String, String)], matching: Matching) -> Option<String> {
    can_infer_option(answer, choices, matching).or_else(|| can_infer_text(answer, choices))
}

/// Python's `str.split()` separators: Unicode white space and the ASCII separators 0x1c–0x1f.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn can_infer_option(
    answer: &str,
    choices: &[(String, String)],
    matching: Matching,
) -> Option<String> {
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    const REJECT: [&str; 4] = [
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided",
        "Cannot determine the answer",
    ];
    if REJECT.iter().any(|r| answer.contains(r)) {
        return Some("Z".into());
    }
    let cleaned: String = answer
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let splits: Vec<&str> = cleaned
        .split(is_python_space)
        .filter(|s| !s.is_empty())
        .collect();
    let count = choices
        .iter()
        .filter(|(l, _)| splits.contains(&l.as_str()))
        .count();
    if count == 1 {
        for (letter, _) in choices {
            if let Some(at) = splits.iter().position(|s| s == letter) {
                // `splits.index(ch) > len(splits) - 5`
                if at as i64 > splits.len() as i64 - 5 {
                    return Some(letter.clone());
                }
            }
        }
    } else if count == 0 && splits.contains(&"Z") {
        return Some("Z".into());
    }
    if matching == Matching::Current {
        static VERBOSE: OnceLock<Regex> = OnceLock::new();
        let re = VERBOSE.get_or_init(|| {
            Regex::new(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**").expect("a valid pattern")
        });
        if let Some(m) = re.captures(answer) {
            let letter = m[1].to_uppercase();
            if choices.iter().any(|(l, _)| *l == letter) {
                return Some(letter);
            }
        }
    }
    None
}

fn can_infer_text(answer: &str, choices: &[(String, String)]) -> Option<String> {
    let answer = answer.to_lowercase();
    let budget: usize = choices.iter().map(|(_, v)| v.chars().count()).sum();
    if answer.chars().count() > 2 * budget {
        return None;
    }
    let found: Vec<&String> = choices
        .iter()
        .filter(|(_, v)| answer.contains(&v.to_lowercase()))
        .map(|(l, _)| l)
        .collect();
    match found.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// One row of a CircularEval group: its answer, its prediction as read, the letter inferred.
struct Reading {
    truth: String,
    prediction: String,
    letter: Option<String>,
}

/// `prefetch_circular_group` followed by the exact-matching verdict; `rows` in index order.
fn prefetch_group(rows: &[Reading]) -> (u8, String) {
    for (i, r) in rows.iter().enumerate() {
        let (truth, prediction) = (&r.truth, &r.prediction);
        if let Some(letter) = &r.letter {
            if letter != truth {
                return (
                    0,
                    format!(
                        "Failed in Prefetching Rolling {i}: Answer is {truth}, Prediction is {prediction}, Pre-fetched is {letter}. "
                    ),
                );
            }
        }
    }
    if rows.iter().all(|r| r.letter.as_ref() == Some(&r.truth)) {
        (1, "Succeed During Pre-fetching".into())
    } else {
        (0, PREFETCH_FAILED.into())
    }
}

struct Group {
    index: i64,
    hit: u8,
    log: String,
    split: Option<String>,
    l2: Option<String>,
    category: Option<String>,
}

/// `report_acc`'s table: the `split` values (sorted; `none` without the column) and per column
/// (Overall, each l2-category abbreviated, each category) the mean hit of every split (None where
/// a split has no group of it: NaN).
struct Report {
    splits: Vec<String>,
    columns: Vec<(String, Vec<Option<f64>>)>,
}

fn report_acc(groups: &[Group], has_split: bool, has_l2: bool, has_category: bool) -> Report {
    let split_of = |g: &Group| {
        if has_split {
            g.split.clone().unwrap_or_else(|| "nan".into())
        } else {
            "none".into()
        }
    };
    let splits: Vec<String> = groups
        .iter()
        .map(split_of)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mean = |filter: &dyn Fn(&Group) -> bool| -> Vec<Option<f64>> {
        splits
            .iter()
            .map(|sp| {
                let hits: Vec<u8> = groups
                    .iter()
                    .filter(|g| split_of(g) == *sp && filter(g))
                    .map(|g| g.hit)
                    .collect();
                (!hits.is_empty())
                    .then(|| hits.iter().map(|&h| f64::from(h)).sum::<f64>() / hits.len() as f64)
            })
            .collect()
    };
    let mut columns = vec![("Overall".to_string(), mean(&|_| true))];
    for (present, l2) in [(has_l2, true), (has_category, false)] {
        if !present {
            continue;
        }
        let value = |g: &Group| -> String {
            let v = if l2 { &g.l2 } else { &g.category };
            v.clone().unwrap_or_else(|| "nan".into())
        };
        let abilities: BTreeSet<String> = groups.iter().map(value).collect();
        for ability in abilities {
            let name = L2_ABBREVIATIONS
                .iter()
                .find(|(full, _)| *full == ability)
                .map_or(ability.clone(), |(_, a)| a.to_string());
            let values = mean(&|g| value(g) == ability);
            // A later column of the same name replaces the earlier one, as in the dict.
            match columns.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = values,
                None => columns.push((name, values)),
            }
        }
    }
    Report { splits, columns }
}

impl Report {
    fn json(&self) -> Value {
        let mut out = Map::new();
        out.insert("split".into(), json!(self.splits));
        for (name, values) in &self.columns {
            out.insert(name.clone(), json!(values));
        }
        Value::Object(out)
    }

    fn overall(&self) -> Option<f64> {
        self.columns
            .first()
            .and_then(|(_, v)| v.first().copied().flatten())
    }

    /// The `_acc.csv` VLMEvalKit writes (`to_csv(index=False, quoting=QUOTE_ALL)`: floats as
    /// Python prints them, NaN as an empty field).
    fn csv(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = std::iter::once(quote("split"))
            .chain(self.columns.iter().map(|(n, _)| quote(n)))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for (i, split) in self.splits.iter().enumerate() {
            let row: Vec<String> = std::iter::once(quote(split))
                .chain(
                    self.columns
                        .iter()
                        .map(|(_, v)| quote(&v[i].map_or(String::new(), python::float))),
                )
                .collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
        out
    }
}

struct CircularEval {
    groups: Vec<Group>,
    report: Report,
    inferred: Vec<(i64, Option<String>)>,
}

impl CircularEval {
    fn metrics(&self) -> Value {
        json!({
            "groups": self.groups.iter()
                .map(|g| (g.index.to_string(), json!({"hit": g.hit, "log": g.log})))
                .collect::<Map<String, Value>>(),
            "report_acc": self.report.json(),
            "can_infer": self.inferred.iter()
                .map(|(i, l)| (i.to_string(), l.as_ref().map_or(json!(false), |l| json!(l))))
                .collect::<Map<String, Value>>(),
        })
    }
}
