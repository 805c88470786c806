//! MME (Fu et al., 2023): yes/no questions in 14 categories, two per image. Reads the release
//! layout (one folder per category: images plus `questions_answers_YN/*.txt`, or images beside
//! one `question<TAB>answer` txt each, or beside `image<TAB>question<TAB>answer` lines in a
//! `.txt`) and scores predictions as the MME tool does: per category accuracy and accuracy+
//! (both questions of an image right), score = 100·(acc + acc+), summed into perception and
//! cognition totals. (`benchmarks::mme` has the official tool's exact arithmetic and output.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tita_core::{Error, Result};

pub const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
pub const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

/// One MME question.
#[derive(Debug, Clone, PartialEq)]
pub struct MmeQuestion {
    pub category: String,
    /// Image path, absolute or relative to the release root.
    pub image: PathBuf,
    /// Image file name (the pairing key for accuracy+).
    pub image_name: String,
    pub question: String,
    /// "yes" or "no".
    pub answer: String,
}

fn parse_line(file: &Path, line: usize, text: &str) -> Result<(String, String)> {
    let mut parts = text.split('\t');
    let (q, a) = (
        parts.next().unwrap_or("").trim(),
        parts.next().unwrap_or("").trim(),
    );
    let a = a.to_ascii_lowercase();
    if q.is_empty() || (a != "yes" && a != "no") {
        return Err(Error::data(file, line, "expected `question<TAB>yes|no`"));
    }
    Ok((q.to_string(), a))
}

/// The `.txt` files of `dir`, in name order.
fn txt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    Ok(files)
}

/// All questions of a release directory, categories in name order.
pub fn read_release(root: &Path) -> Result<Vec<MmeQuestion>> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let category = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let before = out.len();
        let split = dir.join("questions_answers_YN").is_dir();
        if split {
            read_split_folder(&dir, &category, &mut out)?;
        } else {
            read_flat_folder(&dir, &category, &mut out)?;
        }
        let known =
            PERCEPTION.contains(&category.as_str()) || COGNITION.contains(&category.as_str());
        if out.len() == before && (split || known) {
            // Its score would be missing from the perception or cognition total.
            return Err(Error::checkpoint(
                &dir,
                "this MME category holds no questions (no `question<TAB>yes|no` lines in its txt files); restore them or remove the folder",
            ));
        }
    }
    if out.is_empty() {
        return Err(Error::checkpoint(
            root,
            "no MME category folders with questions here",
        ));
    }
    Ok(out)
}

/// The image `{stem}.jpg|png|jpeg` in `dir`, if there is one.
fn image_named(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["jpg", "png", "jpeg"]
        .iter()
        .map(|x| dir.join(format!("{stem}.{x}")))
        .find(|p| p.is_file())
}

/// The non-blank lines of a txt file with their line numbers.
fn txt_lines(f: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect())
}

fn question(category: &str, image: PathBuf, name: &str, qa: (String, String)) -> MmeQuestion {
    MmeQuestion {
        category: category.to_string(),
        image,
        image_name: name.to_string(),
        question: qa.0,
        answer: qa.1,
    }
}

/// Layout A: images in `images/` (or the folder itself), `questions_answers_YN/<image>.txt`.
fn read_split_folder(dir: &Path, category: &str, out: &mut Vec<MmeQuestion>) -> Result<()> {
    let images = if dir.join("images").is_dir() {
        dir.join("images")
    } else {
        dir.to_path_buf()
    };
    for f in txt_files(&dir.join("questions_answers_YN"))? {
        let stem = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let image = image_named(&images, &stem).ok_or_else(|| {
            Error::data(
                &f,
                1,
                format!("no image `{stem}.jpg|png` in {}", images.display()),
            )
        })?;
        let name = image
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        for (line, l) in txt_lines(&f)? {
            let qa = parse_line(&f, line, &l)?;
            out.push(question(category, image.clone(), &name, qa));
        }
    }
    Ok(())
}

/// Layout B: images and txt files side by side; a txt named after an image holds that image's
/// `question<TAB>yes|no` lines (the release's own layout), any other txt holds
/// `image<TAB>question<TAB>yes|no` lines.
fn read_flat_folder(dir: &Path, category: &str, out: &mut Vec<MmeQuestion>) -> Result<()> {
    for f in txt_files(dir)? {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let own = image_named(dir, stem);
        for (line, l) in txt_lines(&f)? {
            if let (Some(image), 2) = (&own, l.split('\t').count()) {
                let name = image
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let qa = parse_line(&f, line, &l)?;
                out.push(question(category, image.clone(), name, qa));
                continue;
            }
            let (name, rest) = l
                .split_once('\t')
                .ok_or_else(|| Error::data(&f, line, "expected `image<TAB>question<TAB>yes|no`"))?;
            let qa = parse_line(&f, line, rest)?;
            let image = dir.join(name.trim());
            if !image.is_file() {
                return Err(Error::data(
                    &f,
                    line,
                    format!("image `{}` not found", image.display()),
                ));
            }
            out.push(question(category, image, name.trim(), qa));
        }
    }
    Ok(())
}

/// MME's reading of a free-form answer: "yes"/"no" as is, else look at the first four
/// characters (lower-cased) for "yes" or "no", else "other" (always wrong).
pub fn parse_prediction(text: &str) -> &'static str {
    let t = text.trim().to_ascii_lowercase();
    if t == "yes" || t == "no" {
        return if t == "yes" { "yes" } else { "no" };
    }
    let prefix: String = t.chars().take(4).collect();
    if prefix.contains("yes") {
        "yes"
    } else if prefix.contains("no") {
        "no"
    } else {
        "other"
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CategoryScore {
    pub accuracy: f64,
    pub accuracy_plus: f64,
    /// 100·(accuracy + accuracy+), out of 200.
    pub score: f64,
    pub questions: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MmeScores {
    pub categories: BTreeMap<String, CategoryScore>,
    /// Sum of the perception categories' scores present (out of 2000 with all ten).
    pub perception: f64,
    /// Sum of the cognition categories' scores present (out of 800).
    pub cognition: f64,
}

/// Scores predictions (one per question, same order as `questions`).
pub fn score(questions: &[MmeQuestion], predictions: &[String]) -> MmeScores {
    let mut per: BTreeMap<String, (usize, usize, BTreeMap<String, bool>)> = BTreeMap::new();
    for (q, p) in questions.iter().zip(predictions) {
        let right = parse_prediction(p) == q.answer;
        let e = per.entry(q.category.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(right);
        let img = e.2.entry(q.image_name.clone()).or_insert(true);
        *img &= right;
    }
    let categories: BTreeMap<String, CategoryScore> = per
        .into_iter()
        .map(|(c, (n, right, images))| {
            let accuracy = right as f64 / n as f64;
            let accuracy_plus =
                images.values().filter(|&&v| v).count() as f64 / images.len() as f64;
            (
                c,
                CategoryScore {
                    accuracy,
                    accuracy_plus,
                    score: 100.0 * (accuracy + accuracy_plus),
                    questions: n,
                },
            )
        })
        .collect();
    // A fold from +0.0: `sum()` of no floats is -0.0, printed "-0.00".
    let total = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| categories.get(*n))
            .fold(0.0, |t, c| t + c.score)
    };
    MmeScores {
        perception: total(&PERCEPTION),
        cognition: total(&COGNITION),
        categories,
    }
}

/// The release as one question set per category, for [`crate::eval::answer_all`]; question
/// ids count from 1 in release order.
pub fn question_sets(questions: &[MmeQuestion]) -> Vec<crate::eval::QuestionSet> {
    let mut sets: Vec<crate::eval::QuestionSet> = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        if sets.last().is_none_or(|s| s.name != q.category) {
            sets.push(crate::eval::QuestionSet {
                name: q.category.clone(),
                questions: Vec::new(),
                images: Vec::new(),
            });
        }
        let set = sets.last_mut().expect("pushed above");
        set.questions.push(crate::pope::Question {
            question_id: Some(i as u64 + 1),
            image: q.image_name.clone(),
            text: q.question.clone(),
            label: q.answer.clone(),
        });
        set.images.push(q.image.clone());
    }
    sets
}

/// Scores each method's answer files (as `answer_all` wrote them) with MME's rules.
pub fn score_methods(
    questions: &[MmeQuestion],
    out: &Path,
    methods: &[crate::eval::Method],
) -> Result<BTreeMap<String, MmeScores>> {
    let sets = question_sets(questions);
    let mut all = BTreeMap::new();
    for m in methods {
        let mut text: BTreeMap<u64, String> = BTreeMap::new();
        for set in &sets {
            let path = crate::eval::answers_path(out, m, &set.name);
            for (_, a) in tita_core::jsonl::read::<crate::pope::Answer>(&path)? {
                text.insert(a.question_id, a.text);
            }
        }
        let preds: Vec<String> = (1..=questions.len() as u64)
            .map(|id| text.get(&id).cloned().unwrap_or_default())
            .collect();
        all.insert(m.name(), score(questions, &preds));
    }
    Ok(all)
}
