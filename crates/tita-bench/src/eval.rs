//! Yes/no hallucination evaluation (POPE, MME, any `{"image", "text", "label"}` set) of several
//! decoding methods side by side in one run: plain greedy and any registered method (TITA
//! interpolate at a list of λ, TITA reference mode, VCD, M3ID, MARINE). Answers are appended to
//! LLaVA-format JSONL files as they come, so an interrupted run resumes without asking anything
//! twice. All methods of one question share one prefill of each branch they read
//! ([`Tita::sweep`]), so a λ sweep costs about one run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use tita_core::{jsonl, Error, Result};
use tita_decode::guidance::{GuideModel, Vcd};
use tita_decode::{
    Fusion, Generation, GenerationConfig, Generator, ImageInput, Knobs, Pipeline, Request, Tita,
    TitaConfig,
};

use crate::benchmark::QuestionId;
use crate::pope::Question;

/// LLaVA-1.5's instruction for short answers, appended on a new line to every question.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";

/// A decoding method under evaluation: plain greedy decoding, or any registered method
/// ([`Fusion`]) with its knobs.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Greedy,
    Guided(Fusion),
}

impl Method {
    /// `greedy` or `MODE[:VALUE]` ([`Fusion::from_spec`]); `shared` knobs (MARINE's `objects`,
    /// VCD's `noise_seed`) go to every method that takes them.
    pub fn parse(s: &str, shared: &Knobs) -> Result<Self> {
        Ok(Fusion::from_spec(s, shared, "methods")?.map_or(Method::Greedy, Method::Guided))
    }

    /// TITA interpolate with weight λ.
    pub fn tita(lambda: f32) -> Self {
        Method::Guided(Fusion::interpolate(lambda))
    }

    /// TITA reference mode with weight α.
    pub fn reference(alpha: f32) -> Self {
        Method::Guided(Fusion::reference(alpha))
    }

    /// VCD with weight α, its noise drawn from `noise_seed`.
    pub fn vcd(alpha: f32, noise_seed: u64) -> Self {
        Method::Guided(
            Vcd {
                noise_seed,
                ..Vcd::new(alpha)
            }
            .into(),
        )
    }

    /// The name of its answer folder and report row: `greedy`, `tita-0.3`, `vcd-1`, ….
    pub fn name(&self) -> String {
        match self {
            Method::Greedy => "greedy".into(),
            Method::Guided(f) => f.label(),
        }
    }

    pub fn fusion(&self) -> Fusion {
        match self {
            Method::Greedy => Fusion::interpolate(0.0),
            Method::Guided(f) => f.clone(),
        }
    }

    /// Whether the method answers a question plainly (greedy), as the server does: one that
    /// contrasts the image has nothing to contrast on a text-only question
    /// ([`Fusion::plain_for`]).
    pub fn plain_for(&self, has_image: bool) -> bool {
        matches!(self, Method::Guided(f) if f.plain_for(has_image))
    }

    /// The fusion it decodes `request` with: greedy's for a question it answers plainly.
    fn fusion_for(&self, request: &Request) -> Fusion {
        match self.plain_for(request.image.is_some()) {
            true => Method::Greedy.fusion(),
            false => self.fusion(),
        }
    }

    /// λ of the interpolate family (greedy is λ = 0), for plots against λ.
    pub fn lambda(&self) -> Option<f32> {
        match self {
            Method::Greedy => Some(0.0),
            Method::Guided(Fusion::Interpolate(i)) if i.tau.is_none() => Some(i.lambda),
            Method::Guided(_) => None,
        }
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Method::Greedy => serde_json::json!({"mode": "greedy"}).serialize(s),
            Method::Guided(f) => f.describe().serialize(s),
        }
    }
}

/// The models of a run.
pub struct Models<'a, B: Backend> {
    pub target: &'a Pipeline<B>,
    pub reward: Option<&'a Pipeline<B>>,
    pub reference: Option<&'a Pipeline<B>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalConfig {
    pub methods: Vec<Method>,
    /// Appended on a new line to every question (empty: none).
    pub suffix: String,
    pub max_new_tokens: usize,
    pub pad: bool,
    /// Share prefills and answer prefixes across all methods (exact; see module docs).
    pub shortcut: bool,
    /// The conversation template the prompts were rendered with (recorded from the target).
    pub template: String,
    /// The system message, if any.
    pub system: Option<String>,
    /// Answer only this part of every set.
    pub shard: Option<Shard>,
    /// Questions decoded together per method (1: one at a time, sharing prefills across
    /// methods). Answers do not depend on it, so it is no setting of the run (not recorded,
    /// free to change on resume).
    #[serde(skip)]
    pub batch: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            methods: vec![Method::Greedy, Method::tita(0.3)],
            suffix: SHORT_ANSWER.into(),
            max_new_tokens: 16,
            pad: true,
            shortcut: true,
            template: String::new(),
            system: None,
            shard: None,
            batch: 1,
        }
    }
}

/// One set of questions (a POPE split, an MME category, a yes/no file) with resolved images.
#[derive(Debug, Clone)]
pub struct QuestionSet {
    pub name: String,
    pub questions: Vec<Question>,
    /// Image file of each question.
    pub images: Vec<PathBuf>,
}

impl QuestionSet {
    /// Reads a questions file; images are looked up in `images` or next to the file.
    pub fn read(path: &Path, images: Option<&Path>, limit: Option<usize>) -> Result<Self> {
        let mut questions = crate::pope::read_questions(path)?;
        if let Some(n) = limit {
            questions.truncate(n);
        }
        let lines = jsonl::read::<serde_json::Value>(path)?;
        let files = questions
            .iter()
            .zip(&lines)
            .map(|(q, (line, _))| jsonl::resolve_image(path, *line, &q.image, images))
            .collect::<Result<Vec<_>>>()?;
        Ok(QuestionSet {
            name: crate::pope::split_name(path),
            questions,
            images: files,
        })
    }
}

impl QuestionSet {
    /// The set as any benchmark's questions: ids as numbers, images as files.
    pub fn queries(&self) -> QuerySet {
        QuerySet {
            name: self.name.clone(),
            queries: (self.questions.iter().zip(&self.images))
                .map(|(q, image)| Query {
                    id: QuestionId::Int(q.question_id.expect("set by read_questions") as i64),
                    text: q.text.clone(),
                    image: Some(ImageInput::Path(image.clone())),
                })
                .collect(),
        }
    }
}

/// One question as a run asks it, for any benchmark.
#[derive(Debug, Clone)]
pub struct Query {
    /// The `question_id` its answer line carries, as the benchmark's own files write it.
    pub id: QuestionId,
    /// The question as the model sees it before the instruction (options included).
    pub text: String,
    /// None for a text-only question.
    pub image: Option<ImageInput>,
}

impl Query {
    /// What the runner sends and records: the text, then `suffix` (the instruction) on a new
    /// line unless it is empty.
    pub fn prompt(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n{suffix}", self.text)
        }
    }

    /// Whether an answer line that recorded `prompt` answers this question (asked with any
    /// instruction): ids alone do not tell questions apart where a benchmark's file reuses
    /// them (TextVQA's ids are image ids).
    pub fn asked_as(&self, prompt: &str) -> bool {
        prompt
            .strip_prefix(self.text.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('\n'))
    }
}

/// A named group of questions (a split, a category, a whole benchmark).
#[derive(Debug, Clone)]
pub struct QuerySet {
    pub name: String,
    pub queries: Vec<Query>,
}

/// `--shard K/N`: the K-th of N parts of every set (K from 0, as Slurm array and Kubernetes
/// indexed-job indices count), split by a hash of the question id so that the parts do not
/// depend on the order or number of questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N` with 0 <= K < N.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::argument(
                "shard",
                format!("`{s}`: expected K/N with 0 <= K < N (K counts from 0)"),
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether question `id` is this shard's: FNV-1a of the id as its answer line writes it.
    pub fn holds(&self, id: &QuestionId) -> bool {
        let key = match id {
            QuestionId::Int(i) => i.to_string(),
            QuestionId::Str(s) => s.clone(),
        };
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        hash % self.count as u64 == self.index as u64
    }
}

/// One answer line as LLaVA's `model_vqa*.py` scripts write it (their random `answer_id` and
/// empty `metadata` left out, so reruns give identical files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunAnswer {
    pub question_id: QuestionId,
    #[serde(default)]
    pub prompt: String,
    pub text: String,
    #[serde(default)]
    pub model_id: String,
}

/// Time spent per method (a shared sweep is split evenly among its methods).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodSpeed {
    pub answers: usize,
    /// Answers to text-only questions decoded plainly, as the method contrasts the image
    /// ([`Method::plain_for`]); 0 for other methods.
    pub plain_text_only: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

impl MethodSpeed {
    pub fn tokens_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.generated_tokens as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Where the answers of `method` on `set` are written.
pub fn answers_path(out: &Path, method: &Method, set: &str) -> PathBuf {
    out.join("answers")
        .join(method.name())
        .join(format!("{set}.jsonl"))
}

/// What answers a question under the run's methods: a sweeper sharing prefills among them,
/// and each method alone (for `--no-shortcut`).
struct Answerer<'a, B: Backend> {
    target: &'a Pipeline<B>,
    methods: &'a [Method],
    /// None without guided methods or with the shortcut off.
    sweeper: Option<Tita<'a, B>>,
    plain: Generator<'a, B>,
    /// One sampler per guided method, built once (building one compares the vocabularies).
    solo: Vec<Option<Tita<'a, B>>>,
}

impl<'a, B: Backend> Answerer<'a, B> {
    fn new(models: &Models<'a, B>, config: &'a EvalConfig) -> Result<Self> {
        let generation = GenerationConfig {
            max_new_tokens: config.max_new_tokens,
            ..Default::default()
        };
        let guided = || {
            config.methods.iter().filter_map(|m| match m {
                Method::Greedy => None,
                Method::Guided(f) => Some((m, f)),
            })
        };
        // Every guide model a method needs must be there (the sweeper and each method's own
        // sampler keep all of them).
        for (m, f) in guided() {
            for g in f.guides() {
                let (given, flag) = match g.model {
                    GuideModel::Target => (true, ""),
                    GuideModel::Reward => (models.reward.is_some(), "reward"),
                    GuideModel::Reference => (models.reference.is_some(), "reference"),
                };
                if !given {
                    return Err(Error::argument(
                        flag,
                        format!("method {} needs --{flag}", m.name()),
                    ));
                }
            }
        }
        let tita = |fusion: &Fusion| {
            Tita::new(
                models.target,
                models.reward,
                models.reference,
                TitaConfig {
                    fusion: fusion.clone(),
                    explain: false,
                },
                generation.clone(),
            )
        };
        // Greedy shares the sweep of the guided methods (an identity setting runs no guide).
        let sweeper = match guided().next() {
            Some((_, f)) if config.shortcut => Some(tita(f)?),
            _ => None,
        };
        let solo = (config.methods.iter())
            .map(|m| match m {
                Method::Greedy => Ok(None),
                Method::Guided(f) => tita(f).map(Some),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Answerer {
            target: models.target,
            methods: &config.methods,
            sweeper,
            plain: Generator::new(models.target, generation),
            solo,
        })
    }

    /// The answers of methods `todo` to `request`, each with the seconds spent on it (a shared
    /// sweep's time split evenly).
    fn answer(&self, request: &Request, todo: &[usize]) -> Result<Vec<(usize, Generation, f64)>> {
        if let Some(sweeper) = &self.sweeper {
            let t = Instant::now();
            let fusions: Vec<Fusion> = (todo.iter())
                .map(|&i| self.methods[i].fusion_for(request))
                .collect();
            let gens = sweeper.sweep(request, &fusions)?;
            let each = t.elapsed().as_secs_f64() / todo.len() as f64;
            return Ok(todo.iter().zip(gens).map(|(&i, g)| (i, g, each)).collect());
        }
        todo.iter()
            .map(|&i| {
                let t = Instant::now();
                let plain = self.methods[i].plain_for(request.image.is_some());
                let g = match &self.solo[i] {
                    Some(tita) if !plain => tita.generate(request)?.generation,
                    _ => self.plain.generate(&self.target.request_prompt(request)?)?,
                };
                Ok((i, g, t.elapsed().as_secs_f64()))
            })
            .collect()
    }
}

impl<B: Backend> Answerer<'_, B> {
    /// The answers of method `i` to `requests`, decoded as one batch (each row as decoding it
    /// alone gives), with the seconds spent on each (the batch's time split evenly). The
    /// requests all have an image or all have none.
    fn answer_batch(&self, requests: &[Request], i: usize) -> Result<Vec<(Generation, f64)>> {
        let t = Instant::now();
        let plain =
            (requests.first()).is_some_and(|r| self.methods[i].plain_for(r.image.is_some()));
        let gens = match &self.solo[i] {
            Some(tita) if !plain => (tita.generate_batch(requests)?.into_iter())
                .map(|g| g.generation)
                .collect(),
            _ => {
                let prompts = (requests.iter())
                    .map(|r| self.target.request_prompt(r))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                self.plain
                    .generate_batch(&prompts.iter().collect::<Vec<_>>())?
            }
        };
        let each = t.elapsed().as_secs_f64() / requests.len().max(1) as f64;
        Ok(gens.into_iter().map(|g| (g, each)).collect())
    }
}

/// A question waiting for its batch: its place in the set, the query, the prompt sent and the
/// methods still to answer it.
struct Pending<'q> {
    position: usize,
    query: &'q Query,
    prompt: String,
    todo: Vec<usize>,
}

/// Answers every question of every yes/no set with every method ([`answer_queries`]).
pub fn answer_all<B: Backend>(
    models: &Models<B>,
    sets: &[QuestionSet],
    out: &Path,
    config: &EvalConfig,
    progress: bool,
) -> Result<BTreeMap<String, MethodSpeed>> {
    let queries: Vec<QuerySet> = sets.iter().map(QuestionSet::queries).collect();
    answer_queries(models, &queries, out, config, progress)
}

/// Answers every question of every set (of the run's shard) with every method, appending to
/// the answer files and skipping what they already hold, so an interrupted run resumes where
/// it stopped and ends with the same files. Returns the time spent per method in this run.
pub fn answer_queries<B: Backend>(
    models: &Models<B>,
    sets: &[QuerySet],
    out: &Path,
    config: &EvalConfig,
    progress: bool,
) -> Result<BTreeMap<String, MethodSpeed>> {
    let answerer = Answerer::new(models, config)?;
    let mine = |q: &Query| config.shard.is_none_or(|s| s.holds(&q.id));
    let total: usize = sets
        .iter()
        .map(|s| s.queries.iter().filter(|q| mine(q)).count())
        .sum();
    let bar = tita_core::progress::bar(progress, total, "questions");
    let mut speed: BTreeMap<String, MethodSpeed> = BTreeMap::new();
    let model_id = models
        .target
        .dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("target")
        .to_string();
    for set in sets {
        let mut files = Vec::new();
        // Answered (id, prompt) pairs per method: ids alone may repeat (TextVQA).
        let mut done: Vec<HashSet<(QuestionId, String)>> = Vec::new();
        for m in &config.methods {
            let path = answers_path(out, m, &set.name);
            // A line cut short by a kill is dropped and asked again.
            let file = jsonl::open_resume(&path)?;
            let have = jsonl::read::<RunAnswer>(&path)?
                .into_iter()
                .map(|(_, a)| (a.question_id, a.prompt))
                .collect();
            done.push(have);
            files.push((file, path));
        }
        let mut pending: Vec<Pending> = Vec::new();
        // Answers the pending questions and appends every answer, each method's in question
        // order, so a file does not depend on the batch size.
        let flush = |pending: &mut Vec<Pending>,
                     files: &mut Vec<(std::fs::File, PathBuf)>,
                     speed: &mut BTreeMap<String, MethodSpeed>|
         -> Result<()> {
            let request = |p: &Pending| Request {
                // MARINE draws its guidance template by the question's place in its file.
                position: Some(p.position),
                ..Request::new(p.prompt.clone(), p.query.image.clone(), config.pad)
            };
            let mut answers: Vec<(usize, &Pending, Generation, f64)> = Vec::new();
            if config.batch <= 1 {
                for p in pending.iter() {
                    for (i, g, secs) in answerer.answer(&request(p), &p.todo)? {
                        answers.push((i, p, g, secs));
                    }
                }
            } else {
                for i in 0..config.methods.len() {
                    let rows: Vec<&Pending> =
                        pending.iter().filter(|p| p.todo.contains(&i)).collect();
                    if rows.is_empty() {
                        continue;
                    }
                    // A batch holds image questions or text-only ones, not both: each kind
                    // is decoded apart and the answers put back in question order.
                    let mut done: Vec<Option<(Generation, f64)>> =
                        (0..rows.len()).map(|_| None).collect();
                    for with_image in [true, false] {
                        let at: Vec<usize> = (0..rows.len())
                            .filter(|&r| rows[r].query.image.is_some() == with_image)
                            .collect();
                        if at.is_empty() {
                            continue;
                        }
                        let requests: Vec<Request> = at.iter().map(|&r| request(rows[r])).collect();
                        for (r, g) in at.into_iter().zip(answerer.answer_batch(&requests, i)?) {
                            done[r] = Some(g);
                        }
                    }
                    for (p, g) in rows.into_iter().zip(done) {
                        let (g, secs) = g.expect("every row answered");
                        answers.push((i, p, g, secs));
                    }
                }
            }
            for (i, p, g, secs) in answers {
                let m = &config.methods[i];
                let answer = RunAnswer {
                    question_id: p.query.id.clone(),
                    prompt: p.prompt.clone(),
                    text: g.text.trim().to_string(),
                    model_id: format!("{model_id}:{}", m.name()),
                };
                let (file, path) = &mut files[i];
                jsonl::append(file, path, &answer)?;
                let s = speed.entry(m.name()).or_default();
                s.answers += 1;
                s.plain_text_only += usize::from(m.plain_for(p.query.image.is_some()));
                s.generated_tokens += g.generated_tokens;
                s.seconds += secs;
            }
            pending.clear();
            Ok(())
        };
        for (position, q) in set.queries.iter().enumerate() {
            if !mine(q) {
                continue;
            }
            let prompt = q.prompt(&config.suffix);
            let key = (q.id.clone(), prompt.clone());
            let todo: Vec<usize> = (0..config.methods.len())
                .filter(|&i| !done[i].contains(&key))
                .collect();
            bar.inc(1);
            if todo.is_empty() {
                continue;
            }
            pending.push(Pending {
                position,
                query: q,
                prompt,
                todo,
            });
            if pending.len() >= config.batch.max(1) {
                flush(&mut pending, &mut files, &mut speed)?;
            }
            bar.set_message(set.name.clone());
        }
        flush(&mut pending, &mut files, &mut speed)?;
    }
    bar.finish();
    Ok(speed)
}

/// What [`merge_shards`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Merged {
    /// Answer lines per method.
    pub answers: BTreeMap<String, usize>,
}

/// Joins the answer files of shard runs (`parts`, each an `--out` of `--shard K/N`) into
/// `out` as one unsharded run would have written them: every set's lines in question order,
/// byte for byte. A question answered in no part, or answered differently in two, is an error
/// naming it.
pub fn merge_shards(
    sets: &[QuerySet],
    methods: &[Method],
    parts: &[PathBuf],
    out: &Path,
) -> Result<Merged> {
    let mut merged = Merged::default();
    for m in methods {
        for set in sets {
            // Per id, every distinct answer line (prompt, line, file it came from).
            let mut lines: HashMap<QuestionId, Vec<(String, String, PathBuf)>> = HashMap::new();
            for part in parts {
                let path = answers_path(part, m, &set.name);
                if !path.exists() {
                    continue;
                }
                let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let a: RunAnswer = serde_json::from_str(line)
                        .map_err(|e| Error::data(&path, i + 1, format!("malformed line: {e}")))?;
                    let same = lines.entry(a.question_id.clone()).or_default();
                    match same.iter().find(|(p, _, _)| *p == a.prompt) {
                        Some((_, earlier, from)) if earlier != line => {
                            return Err(Error::data(
                                &path,
                                i + 1,
                                format!(
                                    "question {} has another answer in {}",
                                    a.question_id,
                                    from.display()
                                ),
                            ))
                        }
                        Some(_) => {}
                        None => same.push((a.prompt, line.to_string(), path.clone())),
                    }
                }
            }
            let mut text = String::new();
            for q in &set.queries {
                let found = (lines.get(&q.id).into_iter().flatten())
                    .find(|(prompt, _, _)| q.asked_as(prompt));
                let Some((_, line, _)) = found else {
                    return Err(Error::argument(
                        "merge",
                        format!(
                            "{} / {}: question {} is answered in none of the {} parts (a shard missing or unfinished?)",
                            m.name(),
                            set.name,
                            q.id,
                            parts.len()
                        ),
                    ));
                };
                text.push_str(line);
                text.push('\n');
            }
            jsonl::write_atomic(&answers_path(out, m, &set.name), text.as_bytes())?;
            *merged.answers.entry(m.name()).or_default() += set.queries.len();
        }
    }
    Ok(merged)
}

/// Every answer line of `method` in `out`, all sets in order (a set not begun has none).
pub fn run_answers(sets: &[QuerySet], method: &Method, out: &Path) -> Result<Vec<RunAnswer>> {
    let mut all = Vec::new();
    for set in sets {
        let path = answers_path(out, method, &set.name);
        if path.exists() {
            all.extend(jsonl::read::<RunAnswer>(&path)?.into_iter().map(|(_, a)| a));
        }
    }
    Ok(all)
}

/// Every answer of `method` in `out`, all sets in order, as one LLaVA answers file (what
/// LLaVA's scripts merge their chunks into), for the benchmark's official scorer.
pub fn llava_answers(sets: &[QuerySet], method: &Method, out: &Path) -> Result<PathBuf> {
    let mut text = String::new();
    for set in sets {
        let path = answers_path(out, method, &set.name);
        if path.exists() {
            let body = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            text.push_str(&body);
        }
    }
    let merged = out.join("llava").join(format!("{}.jsonl", method.name()));
    jsonl::write_atomic(&merged, text.as_bytes())?;
    Ok(merged)
}
