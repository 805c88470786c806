//! The synthetic world of the built-in demo: images whose objects are known exactly. Each
//! object is a shape in a colour (20 categories); objects come from "scenes" of categories that
//! usually appear together, so a model trained on them learns co-occurrence priors that make it
//! hallucinate the way POPE measures on COCO. Everything is deterministic for a seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub const COLORS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 200, 20]),
];
pub const SHAPES: [&str; 5] = ["circle", "square", "triangle", "cross", "ring"];
/// Image side in pixels.
pub const SIZE: u32 = 64;
/// Categories that usually appear together (indices into [`categories`]).
const SCENES: usize = 5;

/// A category: (colour index, shape index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Category {
    pub color: usize,
    pub shape: usize,
}

impl Category {
    pub fn name(&self) -> String {
        format!("{} {}", COLORS[self.color].0, SHAPES[self.shape])
    }
}

/// All 20 categories in a fixed order.
pub fn categories() -> Vec<Category> {
    (0..COLORS.len())
        .flat_map(|color| (0..SHAPES.len()).map(move |shape| Category { color, shape }))
        .collect()
}

/// The scene of a category: four categories per scene, mixing colours and shapes.
pub fn scene_of(c: Category) -> usize {
    (c.shape + c.color * 2) % SCENES
}

/// One drawn object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub category: Category,
    /// Top-left corner and side of its square box.
    pub x: u32,
    pub y: u32,
    pub size: u32,
}

/// An image of the world and its ground truth.
#[derive(Debug, Clone)]
pub struct Scene {
    pub image: RgbImage,
    pub objects: Vec<Object>,
}

impl Scene {
    pub fn present(&self) -> BTreeSet<Category> {
        self.objects.iter().map(|o| o.category).collect()
    }

    /// "a red circle , a blue ring and a green cross ." (objects left to right).
    pub fn caption(&self) -> String {
        let mut objs = self.objects.clone();
        objs.sort_by_key(|o| (o.x, o.y));
        let names: Vec<String> = objs
            .iter()
            .map(|o| format!("a {}", o.category.name()))
            .collect();
        let body = match names.as_slice() {
            [] => "nothing".to_string(),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} and {last}", rest.join(" , ")),
        };
        format!("{body} .")
    }
}

/// Whether pixel (px, py) of an object's box belongs to its shape.
pub fn covers(shape: usize, size: u32, px: u32, py: u32) -> bool {
    let (s, x, y) = (size as f32, px as f32 + 0.5, py as f32 + 0.5);
    let (cx, cy, r) = (s / 2.0, s / 2.0, s / 2.0);
    let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
    match SHAPES[shape] {
        "circle" => d <= r,
        "square" => true,
        // Apex at the top middle, base along the bottom.
        "triangle" => (x - cx).abs() <= y / 2.0,
        "cross" => (x - cx).abs() <= s / 6.0 || (y - cy).abs() <= s / 6.0,
        "ring" => d <= r && d >= r * 0.55,
        _ => false,
    }
}

const SCENE_WEIGHTS: [u32; SCENES] = [6, 4, 3, 2, 1];
const MEMBER_WEIGHTS: [u32; 4] = [4, 3, 2, 1];

/// An index drawn with probability proportional to its weight.
fn weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
    let mut r = rng.random_range(0..weights.iter().sum::<u32>());
    weights
        .iter()
        .position(|&w| {
            let hit = r < w;
            r = r.saturating_sub(w);
            hit
        })
        .unwrap_or(weights.len() - 1)
}

/// Draws one image: a noisy grey background of random lightness (never an object colour), then
/// 1-4 non-overlapping objects, most from one scene, frequent scenes and members more often.
pub fn draw(rng: &mut StdRng) -> Scene {
    let cats = categories();
    // Skewed like COCO's objects: some scenes, and some members of a scene, are far more
    // common than others, so "popular" negatives mean something.
    let scene = weighted(rng, &SCENE_WEIGHTS);
    let members: Vec<Category> = cats
        .iter()
        .copied()
        .filter(|&c| scene_of(c) == scene)
        .collect();
    let n = rng.random_range(1..=4);
    let mut chosen: Vec<Category> = Vec::new();
    while chosen.len() < n {
        let c = if rng.random_bool(0.85) {
            members[weighted(rng, &MEMBER_WEIGHTS[..members.len()])]
        } else {
            cats[rng.random_range(0..cats.len())]
        };
        if !chosen.contains(&c) {
            chosen.push(c);
        }
    }
    // A grey of random lightness with a faint tint and pixel noise: varied, but never close to
    // an object colour, so colour means object.
    let grey: i32 = rng.random_range(110..=220);
    let base: [i32; 3] = std::array::from_fn(|_| grey + rng.random_range(-8..=8));
    let mut image = RgbImage::from_fn(SIZE, SIZE, |_, _| {
        let v = rng.random_range(-10..=10);
        Rgb(base.map(|b| (b + v).clamp(0, 255) as u8))
    });
    let mut objects: Vec<Object> = Vec::new();
    for category in chosen {
        // Rejection sampling of a free box; give up on this object after a few tries.
        for _ in 0..50 {
            let size = rng.random_range(16..=26);
            let (x, y) = (
                rng.random_range(0..=SIZE - size),
                rng.random_range(0..=SIZE - size),
            );
            let free = objects.iter().all(|o| {
                x + size <= o.x || o.x + o.size <= x || y + size <= o.y || o.y + o.size <= y
            });
            if free {
                objects.push(Object {
                    category,
                    x,
                    y,
                    size,
                });
                break;
            }
        }
    }
    for o in &objects {
        let color = Rgb(COLORS[o.category.color].1);
        for py in 0..o.size {
            for px in 0..o.size {
                if covers(o.category.shape, o.size, px, py) {
                    image.put_pixel(o.x + px, o.y + py, color);
                }
            }
        }
    }
    Scene { image, objects }
}

/// A yes/no question about one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldQuestion {
    pub image: usize,
    pub category: Category,
    pub label: bool,
}

pub fn question_text(c: Category) -> String {
    format!("Is there a {} in the image?", c.name())
}

/// POPE's ways of drawing absent objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// Uniformly among the absent categories.
    Random,
    /// The most frequent categories of the training images that are absent.
    Popular,
    /// The categories that most often co-occur (in training) with the present ones.
    Adversarial,
}

/// Category frequencies and pairwise co-occurrence counts of a set of scenes.
#[derive(Debug, Clone, Default)]
pub struct Statistics {
    pub frequency: BTreeMap<Category, usize>,
    pub cooccurrence: BTreeMap<(Category, Category), usize>,
}

impl Statistics {
    pub fn of(scenes: &[Scene]) -> Self {
        let mut s = Statistics::default();
        for sc in scenes {
            let present = sc.present();
            for &a in &present {
                *s.frequency.entry(a).or_default() += 1;
                for &b in &present {
                    if a != b {
                        *s.cooccurrence.entry((a, b)).or_default() += 1;
                    }
                }
            }
        }
        s
    }

    /// Absent categories ranked for `sampler` (best first), ties broken by category order.
    pub fn ranked_negatives(
        &self,
        present: &BTreeSet<Category>,
        sampler: Sampler,
    ) -> Vec<Category> {
        let absent: Vec<Category> = categories()
            .into_iter()
            .filter(|c| !present.contains(c))
            .collect();
        let score = |c: &Category| -> usize {
            match sampler {
                Sampler::Random => 0,
                Sampler::Popular => self.frequency.get(c).copied().unwrap_or(0),
                Sampler::Adversarial => present
                    .iter()
                    .map(|p| self.cooccurrence.get(&(*p, *c)).copied().unwrap_or(0))
                    .sum(),
            }
        };
        let mut ranked = absent;
        ranked.sort_by_key(|c| std::cmp::Reverse(score(c)));
        ranked
    }
}

/// For each scene, every present category as a "yes" question and as many absent ones as
/// "no" questions, drawn by `sampler` (random draws use `rng`).
pub fn questions(
    scenes: &[Scene],
    stats: &Statistics,
    sampler: Sampler,
    rng: &mut StdRng,
) -> Vec<WorldQuestion> {
    let mut out = Vec::new();
    for (i, sc) in scenes.iter().enumerate() {
        let present = sc.present();
        let mut negatives = stats.ranked_negatives(&present, sampler);
        if sampler == Sampler::Random {
            for k in (1..negatives.len()).rev() {
                negatives.swap(k, rng.random_range(0..=k));
            }
        }
        for &c in &present {
            out.push(WorldQuestion {
                image: i,
                category: c,
                label: true,
            });
        }
        for &c in negatives.iter().take(present.len()) {
            out.push(WorldQuestion {
                image: i,
                category: c,
                label: false,
            });
        }
    }
    out
}

/// Instruction questions about a scene beyond yes/no, as LLaVA's instruction data asks them:
/// how many objects there are, and the colour of every shape that appears once.
pub fn instructions(scene: &Scene) -> Vec<(String, String)> {
    let mut out = vec![(
        "How many objects are in the image?".to_string(),
        NUMBERS[scene.objects.len().clamp(1, NUMBERS.len()) - 1].to_string(),
    )];
    for (shape, name) in SHAPES.iter().enumerate() {
        let mut of_shape = scene.objects.iter().filter(|o| o.category.shape == shape);
        if let (Some(o), None) = (of_shape.next(), of_shape.next()) {
            out.push((
                format!("What colour is the {name}?"),
                COLORS[o.category.color].0.to_string(),
            ));
        }
    }
    out
}

/// Scenes of one split; splits use disjoint seeds, so they share no image.
pub fn split(seed: u64, split: u64, count: usize) -> Vec<Scene> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(split));
    (0..count).map(|_| draw(&mut rng)).collect()
}

/// Words of the world's language: the chat template, questions, answers and captions.
const WORDS: &[&str] = &[
    "USER",
    ":",
    "ASSISTANT",
    "Is",
    "is",
    "there",
    "a",
    "in",
    "the",
    "image",
    "?",
    "Yes",
    "No",
    ",",
    ".",
    "and",
    "nothing",
    "Describe",
    "What",
    "this",
    "Answer",
    "question",
    "using",
    "single",
    "word",
    "or",
    "phrase",
    "How",
    "many",
    "objects",
    "are",
    "colour",
    "one",
    "two",
    "three",
    "four",
];

const NUMBERS: [&str; 4] = ["one", "two", "three", "four"];

/// The world's word-level tokenizer, built with the `tokenizers` crate: `<unk>` 0, `<s>` 1,
/// `</s>` 2, the words, colours and shapes, then `<image>` and `<pad>` as added special tokens;
/// whitespace/punctuation pre-tokenizer; BOS added as LLaMA's tokenizer does.
pub fn tokenizer() -> tokenizers::Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::AddedToken;

    let words = ["<unk>", "<s>", "</s>"]
        .into_iter()
        .chain(WORDS.iter().copied())
        .chain(COLORS.iter().map(|c| c.0))
        .chain(SHAPES.iter().copied());
    let vocab: ahash::AHashMap<String, u32> = words
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("<s> $A")
            .map_err(|e| e.to_string())?
            .special_tokens(vec![("<s>", 1)])
            .build()?,
    ));
    tok.add_special_tokens(&[
        AddedToken::from("<unk>", true),
        AddedToken::from("<s>", true),
        AddedToken::from("</s>", true),
        AddedToken::from("<image>", true),
        AddedToken::from("<pad>", true),
    ]);
    Ok(tok)
}

/// Files of a world model directory other than its weights: the tokenizer and a CLIP image
/// processor for [`SIZE`]-pixel images (OpenAI CLIP's mean and std).
fn write_model_files(dir: &Path, config: &tita_models::ModelConfig) -> tita_core::Result<()> {
    use tita_core::jsonl::write_atomic;
    let json = |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("plain data");
    write_atomic(
        &dir.join("config.json"),
        json(config.to_hf_json()).as_bytes(),
    )?;
    let tok = tokenizer().map_err(|e| tita_core::Error::Tokenizer {
        path: dir.join("tokenizer.json"),
        msg: e.to_string(),
    })?;
    let text = tok
        .to_string(true)
        .map_err(|e| tita_core::Error::Tokenizer {
            path: dir.join("tokenizer.json"),
            msg: e.to_string(),
        })?;
    write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
    let special = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "tokenizer_class": "PreTrainedTokenizerFast"});
    write_atomic(&dir.join("tokenizer_config.json"), json(special).as_bytes())?;
    let pre = serde_json::json!({
        "image_processor_type": "CLIPImageProcessor", "do_resize": true, "size": {"shortest_edge": SIZE},
        "resample": 3, "do_center_crop": true, "crop_size": {"height": SIZE, "width": SIZE},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true,
    });
    write_atomic(&dir.join("preprocessor_config.json"), json(pre).as_bytes())
}

/// A LLaVA of the world's vocabulary: a CLIP tower over [`SIZE`]-pixel images in `patch`-pixel
/// patches ((SIZE/patch)² image tokens) and a LLaMA of the given width and depth.
pub fn model_config(
    hidden: usize,
    layers: usize,
    heads: usize,
    vision_hidden: usize,
    vision_layers: usize,
    patch: usize,
) -> tita_models::ModelConfig {
    let tok = tokenizer().expect("the world tokenizer builds");
    let id = |t: &str| tok.token_to_id(t).expect("special token present");
    let mut text = tita_models::LlamaConfig::sized(hidden, layers, heads, heads, hidden * 3);
    text.vocab_size = tok.get_vocab_size(true);
    text.max_position_embeddings = 128;
    text.pad_token_id = Some(id("<pad>"));
    let vision = tita_models::ClipVisionConfig {
        hidden_size: vision_hidden,
        intermediate_size: vision_hidden * 4,
        num_hidden_layers: vision_layers,
        num_attention_heads: 4,
        image_size: SIZE as usize,
        patch_size: patch,
        ..Default::default()
    };
    let mut config = tita_models::LlavaConfig::llava_1_5(text, vision);
    if let tita_models::ModelConfig::Llava(c) = &mut config {
        c.image_token_id = id("<image>");
    }
    config
}

/// A freshly initialised world model, saved as a Hugging Face LLaVA checkpoint directory.
pub fn init_model<B: burn::tensor::backend::Backend>(
    dir: &Path,
    config: &tita_models::ModelConfig,
    seed: u64,
    device: &B::Device,
) -> tita_core::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| tita_core::Error::io(dir, e))?;
    B::seed(device, seed);
    let model = tita_models::Vlm::<B>::random(config.clone(), seed, device)?;
    write_model_files(dir, config)?;
    tita_models::save_safetensors(&model, &model.stored, &dir.join("model.safetensors"))
}

/// Writes a split: `images/NAME-K.png`, `NAME-captions.jsonl` ({"image", "prompt", "response"}
/// with the caption) and `NAME-SAMPLER.jsonl` yes/no questions ({"question_id", "image", "text",
/// "label"}) for each negative sampler, drawn with `stats` of the training split.
pub fn write_split(
    dir: &Path,
    name: &str,
    scenes: &[Scene],
    stats: &Statistics,
    seed: u64,
) -> tita_core::Result<()> {
    use tita_core::jsonl::write_atomic;
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| tita_core::Error::io(&images, e))?;
    let file = |k: usize| format!("images/{name}-{k}.png");
    let mut captions = String::new();
    for (k, s) in scenes.iter().enumerate() {
        let path = dir.join(file(k));
        s.image.save(&path).map_err(|e| tita_core::Error::Image {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let line = serde_json::json!({"image": file(k), "prompt": CAPTION_PROMPT, "response": s.caption()});
        captions.push_str(&format!("{line}\n"));
    }
    write_atomic(
        &dir.join(format!("{name}-captions.jsonl")),
        captions.as_bytes(),
    )?;
    for sampler in [Sampler::Random, Sampler::Popular, Sampler::Adversarial] {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut text = String::new();
        for (i, q) in questions(scenes, stats, sampler, &mut rng)
            .iter()
            .enumerate()
        {
            let label = if q.label { "yes" } else { "no" };
            let line = serde_json::json!({"question_id": i + 1, "image": file(q.image), "text": question_text(q.category), "label": label});
            text.push_str(&format!("{line}\n"));
        }
        let s = serde_json::to_value(sampler).expect("plain enum");
        write_atomic(
            &dir.join(format!("{name}-{}.jsonl", s.as_str().unwrap_or("random"))),
            text.as_bytes(),
        )?;
    }
    Ok(())
}

/// The caption instruction of the world.
pub const CAPTION_PROMPT: &str = "Describe the image.";
