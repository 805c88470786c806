//! MARINE (Zhao et al., ICML 2025; official code Linxi-ZHAO/MARINE,
//! `marine/utils/utils_guidance.py`): the target's log-probs on the question, `l_o`, moved
//! towards its log-probs on the same image with a guidance prompt that lists the objects a
//! detector found, `l_g`: `log_softmax(l_o + γ·(l_g − l_o))`, γ 0.7. The object lists are an
//! input, `[{"image", "objects"}]` as the official pipeline writes them offline (DETR ∩ RAM++);
//! the guidance prompt is built as its `eval/create_qa.py` and `eval/prompt_template.py` build it:
//! one of four templates per question, drawn with numpy's `seed(42)` / `randint(0, 4, n)` by the
//! question's position, the objects joined as `a`, `a and b`, `a, b, and c`, the question
//! lowercased after the template; an empty list leaves the question as it is. With
//! ground-truth objects the method is an oracle and is labelled so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};
use tita_core::template::Part;
use tita_core::{Error, Result};

use super::{
    check_range, log_softmax, ls_device, over_common_device, over_common_host, Guidance, Guide,
    GuideModel, Knob, Knobs, Step,
};
use crate::pipeline::{ImageInput, Pipeline, Prompt, Request};

/// `pope_grounding_dict`: the templates of POPE questions.
const POPE_TEMPLATES: [&str; 4] = [
    "This image contains only the following objects: <OBJECT_LIST>. Do not assume anything beyond these objects. Based solely on this list, <QUERY>",
    "The detected objects in the image are: <OBJECT_LIST>. Answer based only on these objects. <QUERY>",
    "This image shows the following objects: <OBJECT_LIST>. You must answer using only the objects in this list. Given these detected objects, <QUERY>",
    "The objects found in this image are limited to: <OBJECT_LIST>. You should rely strictly on this list of objects and make no other guesses. Based on this, <QUERY>",
];

/// `grounding_dict`: the templates of captions and open questions (CHAIR, qa90).
const GENERAL_TEMPLATES: [&str; 4] = [
    "This image contains <OBJECT_LIST>. Based on this, <QUERY>",
    "The image contains the following objects: <OBJECT_LIST>. Given these detected objects, <QUERY>",
    "This image shows the following objects: <OBJECT_LIST>. Using this information, <QUERY>",
    "The objects found in this image are: <OBJECT_LIST>. Considering this list of objects, <QUERY>",
];

/// Which template set: the official pipeline uses `pope` for POPE and `general` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateSet {
    General,
    Pope,
}

/// The objects of each image, or one list for every request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectList {
    /// The file they came from (None for a list given inline).
    pub source: Option<PathBuf>,
    #[serde(skip)]
    by_image: Arc<BTreeMap<String, Vec<String>>>,
    #[serde(skip)]
    fixed: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Entry {
    image: String,
    objects: Vec<String>,
}

impl ObjectList {
    /// One list for every request.
    pub fn fixed(objects: Vec<String>) -> Self {
        ObjectList {
            source: None,
            by_image: Arc::default(),
            fixed: Some(objects),
        }
    }

    /// Lists by image file name.
    pub fn by_image(entries: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        ObjectList {
            source: None,
            by_image: Arc::new(entries.into_iter().collect()),
            fixed: None,
        }
    }

    /// Reads `[{"image", "objects"}, …]` (a JSON list, or one object per line).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |e: serde_json::Error| {
            Error::argument(
                "objects",
                format!(
                    "{}: expected a list of {{\"image\", \"objects\"}} records: {e}",
                    path.display()
                ),
            )
        };
        let entries: Vec<Entry> = if text.trim_start().starts_with('[') {
            serde_json::from_str(&text).map_err(bad)?
        } else {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<std::result::Result<_, _>>()
                .map_err(bad)?
        };
        let mut list = Self::by_image(entries.into_iter().map(|e| (e.image, e.objects)));
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// What tells two lists apart: the file they came from, or the names themselves.
    fn identity(&self) -> String {
        match (&self.fixed, &self.source) {
            (Some(fixed), _) => format!("{fixed:?}"),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => format!("{:?}", self.by_image),
        }
    }

    /// The objects of `request`'s image (found by its file name).
    fn objects(&self, request: &Request) -> Result<&[String]> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed);
        }
        let from = self
            .source
            .as_ref()
            .map_or("the object list".to_string(), |p| p.display().to_string());
        let Some(ImageInput::Path(path)) = &request.image else {
            return Err(Error::argument(
                "objects",
                format!("{from} lists objects by image file; this request's image has no file name (give its objects inline)"),
            ));
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        name.and_then(|n| self.by_image.get(&n))
            .or_else(|| self.by_image.get(&path.display().to_string()))
            .map(Vec::as_slice)
            .ok_or_else(|| {
                Error::argument(
                    "objects",
                    format!("{from} has no entry for image {}", path.display()),
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marine {
    /// Guidance strength γ, in [0, 1].
    pub gamma: f32,
    pub objects: ObjectList,
    pub templates: TemplateSet,
    /// The objects are the ground truth: the method is an oracle.
    pub truth: bool,
}

impl Marine {
    pub fn new(objects: ObjectList) -> Self {
        Marine {
            gamma: 0.7,
            objects,
            templates: TemplateSet::General,
            truth: false,
        }
    }

    /// The guidance text for `query` about an image with `objects`, for the question at
    /// `position` of its set.
    pub fn guidance_text(&self, query: &str, objects: &[String], position: usize) -> String {
        let list = join_objects(objects);
        if list.is_empty() {
            return query.to_string();
        }
        let set = match self.templates {
            TemplateSet::General => &GENERAL_TEMPLATES,
            TemplateSet::Pope => &POPE_TEMPLATES,
        };
        set[template_index(position)]
            .replace("<OBJECT_LIST>", &list)
            .replace("<QUERY>", &query.to_lowercase())
    }
}

/// `obj_ls2str`: `a`, `a and b`, `a, b, and c`.
fn join_objects(objects: &[String]) -> String {
    match objects {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

/// The template of the question at `position`: numpy's `seed(42)` then `randint(0, 4, n)[i]`.
/// Legacy numpy draws each value as the next MT19937 32-bit output masked to 2 bits.
pub fn template_index(position: usize) -> usize {
    let mut mt = Mt19937::new(42);
    let mut v = 0;
    for _ in 0..=position {
        v = mt.next_u32() & 3;
    }
    v as usize
}

/// The Mersenne Twister MT19937 (`init_genrand` seeding), as numpy's legacy `RandomState`.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_b0df;
                }
                self.state[i] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

impl Guidance for Marine {
    const NAME: &'static str = "marine";
    const KNOBS: &'static [Knob] = &[
        Knob {
            name: "marine_gamma",
            default: "0.7",
            help: "guidance strength γ towards the object-prompted branch, in [0, 1]",
        },
        Knob {
            name: "objects",
            default: "required",
            help: "the detected objects: a JSON file of [{\"image\", \"objects\"}] records, or (server) a list of names for this request",
        },
        Knob {
            name: "marine_templates",
            default: "general",
            help: "the official template set: general (captions, open questions) or pope",
        },
        Knob {
            name: "objects_truth",
            default: "false",
            help: "the objects are the ground truth: labels the method MARINE-truth (oracle)",
        },
    ];

    fn from_knobs(knobs: &Knobs) -> Result<Self> {
        let objects = match knobs.get("objects") {
            Some(serde_json::Value::String(path)) => ObjectList::read(Path::new(path))?,
            Some(serde_json::Value::Array(items)) => ObjectList::fixed(
                items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            Error::argument("objects", format!("expected object names, got {v}"))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(v) => {
                return Err(Error::argument(
                    "objects",
                    format!("expected a file path or a list of names, got {v}"),
                ))
            }
            None => {
                return Err(Error::argument(
                    "objects",
                    "MARINE needs the detected objects (--objects FILE, or the server's tita.objects list)",
                ))
            }
        };
        let templates = match knobs.str_opt("marine_templates")? {
            None | Some("general") => TemplateSet::General,
            Some("pope") => TemplateSet::Pope,
            Some(other) => {
                return Err(Error::argument(
                    "marine_templates",
                    format!("`{other}`: expected general or pope"),
                ))
            }
        };
        let m = Marine {
            gamma: knobs.f32("marine_gamma", 0.7)?,
            objects,
            templates,
            truth: knobs.bool("objects_truth", false)?,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        check_range("marine_gamma", self.gamma, 0.0, 1.0)
    }

    fn label(&self) -> String {
        if self.truth {
            "MARINE-truth (oracle)".to_string()
        } else {
            format!("marine-{}", self.gamma)
        }
    }

    fn guides(&self) -> Vec<Guide> {
        // The key names everything the prompt depends on, so that a sweep shares a branch
        // only between methods that read the same prompt.
        vec![Guide::derived(
            GuideModel::Target,
            format!(
                "object prompt ({:?} templates, objects {})",
                self.templates,
                self.objects.identity()
            ),
        )]
    }

    /// γ = 0: the official script runs without the guidance processor.
    fn is_identity(&self) -> bool {
        self.gamma == 0.0
    }

    fn fuse_device<B: Backend>(
        &self,
        _: Step,
        t: Tensor<B, 2>,
        g: &[Tensor<B, 2>],
    ) -> Tensor<B, 2> {
        over_common_device(&t, g, |head| {
            let lo = head(ls_device(t.clone()));
            let lg = head(ls_device(g[0].clone()));
            ls_device(lo.clone() + (lg - lo).mul_scalar(self.gamma))
        })
    }

    fn fuse_host(&self, _: Step, t: &[f32], g: &[&[f32]]) -> Vec<f32> {
        let (lo, lg) = (log_softmax(t), log_softmax(g[0]));
        let mixed = over_common_host(t, g, |y| lo[y] + self.gamma * (lg[y] - lo[y]));
        log_softmax(&mixed)
    }

    /// The same image with the guidance text in place of the question.
    fn guide_prompt<B: Backend>(
        &self,
        _: usize,
        pipeline: &Pipeline<B>,
        request: &Request,
    ) -> Result<Prompt> {
        let objects = self.objects.objects(request)?;
        let position = request.position.unwrap_or(0);
        let mut guided = request.clone();
        match &mut guided.messages {
            None => guided.prompt = self.guidance_text(&request.prompt, objects, position),
            Some(messages) => {
                let user = messages
                    .iter_mut()
                    .rev()
                    .find(|m| m.role == "user")
                    .ok_or_else(|| Error::argument("messages", "MARINE needs a user turn"))?;
                user.content =
                    guided_parts(&user.content, |q| self.guidance_text(q, objects, position));
            }
        }
        pipeline.request_prompt(&guided)
    }
}

/// A user turn's parts with its text replaced by `guide(text)`, image parts kept in place.
fn guided_parts(parts: &[Part], guide: impl Fn(&str) -> String) -> Vec<Part> {
    let query: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Text { text } => Some(text.as_str()),
            Part::Image {} => None,
        })
        .collect();
    let mut text = Some(guide(&query.join("")));
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Image {} => Some(Part::Image {}),
            Part::Text { .. } => text.take().map(|text| Part::Text { text }),
        })
        .collect()
}
