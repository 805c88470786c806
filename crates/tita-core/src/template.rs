//! Conversation templates: the Jinja `chat_template` a model directory ships, rendered as
//! transformers' `apply_chat_template` renders it, or one of the built-in named templates.
//!
//! transformers compiles templates with jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls),
//! its `{% generation %}` tag, `raise_exception(msg)` and a `tojson` that is Python's
//! `json.dumps(ensure_ascii=False)`; the context holds `messages`, `add_generation_prompt`, the
//! tokenizer's special tokens and any extra keyword arguments (e.g. `add_vision_id`). Here
//! the same through minijinja, with Python's string methods (`.upper()`, `.strip()`, ...) from
//! minijinja-contrib's pycompat layer.

use std::path::Path;

use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::error::{read_json, Error, Result};

/// LLaVA-1.5 as llava-hf ships it (one user turn: `USER: <image>\n{prompt} ASSISTANT:`); the
/// fallback for model directories without a template.
const LLAVA_1_5: &str = "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/// LLaVA's `conv_vicuna_v1` (`llava/conversation.py`), the conversation its evaluation scripts
/// use (`--conv-mode vicuna_v1`), rendered as its `SeparatorStyle.TWO` `get_prompt` does: the
/// system sentence, a space, then `USER: {text} ` and `ASSISTANT: {text}</s>` turns, and
/// `ASSISTANT:` to ask. The numbers the paper and the leaderboards quote are computed with it.
const VICUNA_V1: &str = "{% set system = 'A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' %}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'][0]['text'] %}{% endif %}{{ system + ' ' }}{% for message in messages if message['role'] != 'system' %}{% if message['role'] == 'user' %}{{ 'USER: ' }}{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' ' }}{% else %}{{ 'ASSISTANT: ' }}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/// LLaVA's `conv_llava_v1`: `vicuna_v1` with the system sentence saying "human" (LLaVA-1.5's
/// training conversation; its evaluation uses `vicuna_v1`).
const LLAVA_V1: &str = "{% set system = 'A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human\\'s questions.' %}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'][0]['text'] %}{% endif %}{{ system + ' ' }}{% for message in messages if message['role'] != 'system' %}{% if message['role'] == 'user' %}{{ 'USER: ' }}{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' ' }}{% else %}{{ 'ASSISTANT: ' }}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/// The built-in templates by name (LLaVA's conversation names where they are LLaVA's).
pub const BUILTIN: [(&str, &str); 3] = [
    ("llava_1_5", LLAVA_1_5),
    ("llava_v1", LLAVA_V1),
    ("vicuna_v1", VICUNA_V1),
];

/// One part of a message's content, in transformers' multimodal message format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    Text { text: String },
    Image {},
}

/// A message: `role` (`system`, `user`, `assistant`) and its content parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(deserialize_with = "content_parts")]
    pub content: Vec<Part>,
}

/// Content given as a plain string is one text part, as transformers' processors treat it.
fn content_parts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Part>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    Ok(match Content::deserialize(d)? {
        Content::Text(text) => vec![Part::Text { text }],
        Content::Parts(parts) => parts,
    })
}

impl Message {
    pub fn system(text: &str) -> Self {
        Message {
            role: "system".into(),
            content: vec![Part::Text { text: text.into() }],
        }
    }

    /// A user turn: the image first (when there is one), then the text, as LLaVA prompts are.
    pub fn user(text: &str, with_image: bool) -> Self {
        let mut content = Vec::new();
        if with_image {
            content.push(Part::Image {});
        }
        content.push(Part::Text { text: text.into() });
        Message {
            role: "user".into(),
            content,
        }
    }

    /// The number of image parts.
    pub fn images(&self) -> usize {
        self.content
            .iter()
            .filter(|p| matches!(p, Part::Image {}))
            .count()
    }
}

/// Reads a conversation from a JSON file: a list of messages, or `{"messages": [...]}`.
pub fn read_messages(path: &Path) -> Result<Vec<Message>> {
    let v = read_json(path)?;
    let list = v.get("messages").cloned().unwrap_or(v);
    let messages: Vec<Message> = serde_json::from_value(list).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })?;
    if messages.is_empty() {
        return Err(Error::config(path, "messages", "the conversation is empty"));
    }
    Ok(messages)
}

/// A conversation template and where it came from.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    /// Where it came from: a built-in name or a file path (recorded by benchmark runs).
    pub name: String,
    /// The tokenizer's special tokens (`bos_token`, `eos_token`, ...) visible to the template.
    special_tokens: Map<String, serde_json::Value>,
}

impl ChatTemplate {
    /// A built-in template by name (see [`BUILTIN`]).
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, s)| Self::new(s.to_string(), n.to_string()))
    }

    /// A template from its Jinja source; `name` says where it came from.
    pub fn new(source: String, name: String) -> Self {
        let special_tokens = [
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
            ("unk_token", "<unk>"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
        ChatTemplate {
            source,
            name,
            special_tokens,
        }
    }

    /// The template of a model directory, as transformers looks for it: `chat_template.jinja`,
    /// then `chat_template.json`, then `tokenizer_config.json`'s `chat_template` (a string, or
    /// a list of named templates of which `default` is taken). `None` when it has none.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let jinja = dir.join("chat_template.jinja");
        let found = if jinja.is_file() {
            Some(Self::read_jinja(&jinja)?)
        } else {
            let json = dir.join("chat_template.json");
            let tok = dir.join("tokenizer_config.json");
            if json.is_file() {
                Some(Self::from_json_field(&json)?.ok_or_else(|| {
                    Error::config(
                        &json,
                        "chat_template",
                        "missing: expected a template string",
                    )
                })?)
            } else if tok.is_file() {
                Self::from_json_field(&tok)?
            } else {
                None
            }
        };
        let Some(mut template) = found else {
            return Ok(None);
        };
        template.read_special_tokens(&dir.join("tokenizer_config.json"))?;
        Ok(Some(template))
    }

    /// `--template NAME|PATH`: a built-in name, a `.jinja` file, a JSON file with a
    /// `chat_template` field, or a model directory.
    pub fn resolve(spec: &str) -> Result<Self> {
        if let Some(t) = Self::builtin(spec) {
            return Ok(t);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_model_dir(path)?.ok_or_else(|| {
                Error::argument(
                    "template",
                    format!("{spec} holds no chat_template.jinja, chat_template.json or tokenizer_config.json `chat_template`"),
                )
            });
        }
        if path.is_file() {
            return if path.extension().is_some_and(|e| e == "json") {
                Self::from_json_field(path)?.ok_or_else(|| {
                    Error::config(path, "chat_template", "missing: expected a template string")
                })
            } else {
                Self::read_jinja(path)
            };
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        Err(Error::argument(
            "template",
            format!(
                "`{spec}` is neither a built-in template ({}) nor an existing file or directory",
                names.join(", ")
            ),
        ))
    }

    /// The model directory's template, or `llava_1_5` where it ships none.
    pub fn for_model(dir: &Path) -> Result<Self> {
        Ok(Self::from_model_dir(dir)?
            .unwrap_or_else(|| Self::builtin("llava_1_5").expect("built in")))
    }

    fn read_jinja(path: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if source.trim().is_empty() {
            return Err(Error::config(
                path,
                "chat_template",
                "the template file is empty; restore it or remove it (then the model's other template files are used)",
            ));
        }
        Ok(Self::new(source, path.display().to_string()))
    }

    fn from_json_field(path: &Path) -> Result<Option<Self>> {
        let v = read_json(path)?;
        let name = path.display().to_string();
        match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(Self::new(s.clone(), name))),
            Some(serde_json::Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                match default
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                {
                    Some(s) => Ok(Some(Self::new(s.to_string(), format!("{name}#default")))),
                    None => Err(Error::config(
                        path,
                        "chat_template",
                        "a list of templates without one named `default`",
                    )),
                }
            }
            Some(_) => Err(Error::config(
                path,
                "chat_template",
                "expected a string or a list of {name, template}",
            )),
        }
    }

    /// Takes `bos_token`, `eos_token`, `unk_token`, `pad_token` from `tokenizer_config.json`
    /// (plain strings or `{"content": ...}` objects) when the file exists.
    pub fn read_special_tokens(&mut self, path: &Path) -> Result<()> {
        if !path.is_file() {
            return Ok(());
        }
        let v = read_json(path)?;
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let token = match v.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => {
                    o.get("content").and_then(|c| c.as_str()).map(String::from)
                }
                _ => None,
            };
            if let Some(t) = token {
                self.special_tokens.insert(key.into(), t.into());
            }
        }
        Ok(())
    }

    /// Sets a special token the template sees (`bos_token`, ...).
    pub fn set_special_token(&mut self, key: &str, token: &str) {
        self.special_tokens.insert(key.into(), token.into());
    }

    /// A special token's text as the template sees it (e.g. `bos_token`).
    pub fn special_token(&self, key: &str) -> Option<&str> {
        self.special_tokens.get(key).and_then(|v| v.as_str())
    }

    /// Whether the tokenizer should add its special tokens (BOS) to `rendered`: yes, unless the
    /// template already wrote BOS itself (transformers' processors avoid a double BOS so).
    pub fn add_special_tokens(&self, rendered: &str) -> bool {
        !self
            .special_token("bos_token")
            .is_some_and(|bos| !bos.is_empty() && rendered.starts_with(bos))
    }

    /// Renders `messages` as `apply_chat_template(messages, add_generation_prompt, **kwargs)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &Map<String, serde_json::Value>,
    ) -> Result<String> {
        let source = without_generation_tags(&self.source);
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, _> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", tojson);
        let template = env.template_from_str(&source).map_err(|e| self.error(e))?;
        let mut context = self.special_tokens.clone();
        for (k, v) in kwargs {
            context.insert(k.clone(), v.clone());
        }
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());
        // transformers hands the template the messages as the caller wrote them; ours always
        // hold parts. A template that never looks at parts (ChatML's `'<|im_start|>' +
        // message['content']`, as GGUF files carry) was written for string content, which a
        // text-only message then is; otherwise parts. The other form is tried when the first
        // fails on text-only messages.
        let strings_first = !self.reads_content_parts() && messages.iter().all(|m| m.images() == 0);
        let mut render = |as_strings: bool| {
            context.insert("messages".into(), messages_value(messages, as_strings));
            template.render(Value::from(Serde(&context)))
        };
        match render(strings_first) {
            Ok(text) => Ok(text),
            Err(e) if messages.iter().all(|m| m.images() == 0) => {
                render(!strings_first).map_err(|_| self.error(e))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// Whether the template inspects content parts (their `type`, or `selectattr` over them).
    fn reads_content_parts(&self) -> bool {
        ["'type'", "\"type\"", ".type", "selectattr"]
            .iter()
            .any(|k| self.source.contains(k))
    }

    fn error(&self, e: minijinja::Error) -> Error {
        // minijinja names a template made from a string `<string>`: the name is ours to give.
        let mut msg = e.to_string().replace("<string>", "line");
        if let Some(detail) = e.detail() {
            if !msg.contains(detail) {
                msg = format!("{msg}: {detail}");
            }
        }
        if e.kind() == ErrorKind::UndefinedError {
            msg.push_str("; the template reads a value this conversation does not give (a message field, or a variable such as a template argument): is it this model's template?");
        }
        Error::Template {
            name: self.name.clone(),
            msg,
        }
    }
}

/// The messages as the template sees them: content as its parts, or (`as_strings`, for
/// text-only messages) as the string its text parts make.
fn messages_value(messages: &[Message], as_strings: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(messages).expect("messages serialise");
    if as_strings {
        for (m, out) in messages.iter().zip(v.as_array_mut().expect("a list")) {
            let text: String = m
                .content
                .iter()
                .map(|p| match p {
                    Part::Text { text } => text.as_str(),
                    Part::Image {} => "",
                })
                .collect();
            out["content"] = text.into();
        }
    }
    v
}

/// transformers' `{% generation %}...{% endgeneration %}` only marks assistant text for
/// masks; it renders its body. As a block that always runs, it keeps the whitespace rules
/// (`trim_blocks`, `lstrip_blocks`, `-` markers) of the original tags.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let body = &tag[2..tag.len() - 2];
        let marker = |c: Option<char>| match c {
            Some(m @ ('-' | '+')) => m.to_string(),
            _ => String::new(),
        };
        let (lead, trail) = (marker(body.chars().next()), marker(body.chars().last()));
        let replacement = match body.trim_matches(['-', '+']).trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..start]);
        match replacement {
            Some(r) => out.push_str(&format!("{{%{lead} {r} {trail}%}}")),
            None => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// whose separators are `", "` and `": "` (`","` at line ends when indenting).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, sort_keys.unwrap_or(false), &mut out);
    Ok(Value::from_safe_string(out))
}

fn python_json(
    v: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    sort: bool,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, sort, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            let mut entries: Vec<_> = map.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, sort, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The built-in template names and where templates can come from, for help texts.
pub fn template_help() -> String {
    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
    format!(
        "a built-in name ({}), a .jinja file, a JSON file with `chat_template`, or a model directory",
        names.join(", ")
    )
}
