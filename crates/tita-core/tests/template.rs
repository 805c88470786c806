//! Conversation templates against transformers' `apply_chat_template` (fixtures/templates).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tita_core::template::{read_messages, ChatTemplate, Message};
use tita_core::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("templates/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn messages(case: &Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

fn kwargs(case: &Value) -> Map<String, Value> {
    case["kwargs"].as_object().cloned().unwrap_or_default()
}

#[test]
fn every_case_renders_transformers_text_and_ids() {
    let all = cases();
    let tokenizer = Tokenizer::from_file(&fixtures().join("tokenizer")).unwrap();
    let (mut rendered, mut tokenised) = (0, 0);
    for case in all["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let label = format!(
            "{name} / {} / {}",
            case["conversation"], case["add_generation_prompt"]
        );
        let mut template = ChatTemplate::new(
            all["templates"][name].as_str().unwrap().to_string(),
            name.to_string(),
        );
        template
            .read_special_tokens(&fixtures().join("llava-target/tokenizer_config.json"))
            .unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = template
            .render(&messages(case), add, &kwargs(case))
            .unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{label}");
        rendered += 1;
        if let Some(ids) = case["ids"].as_array() {
            let want: Vec<u32> = ids.iter().map(|i| i.as_u64().unwrap() as u32).collect();
            let got = tokenizer
                .encode(&text, template.add_special_tokens(&text))
                .unwrap();
            assert_eq!(got, want, "{label}");
            tokenised += 1;
        }
    }
    assert_eq!(rendered, 24);
    assert_eq!(tokenised, 8);
}

#[test]
fn builtins_are_the_llava_hf_and_llavas_own_conversations() {
    let all = cases();
    // llava_v1 / vicuna_v1: LLaVA's conv_llava_v1 / conv_vicuna_v1, the texts its own
    // conversation code renders (fixtures/templates/gen_llava_conversations.py).
    for (builtin, fixture) in [
        ("llava_1_5", "llava_hf"),
        ("llava_v1", "llava_v1"),
        ("vicuna_v1", "vicuna_v1"),
    ] {
        let template = ChatTemplate::builtin(builtin).unwrap();
        for case in all["cases"].as_array().unwrap() {
            if case["template"] != fixture {
                continue;
            }
            let add = case["add_generation_prompt"].as_bool().unwrap();
            let text = template
                .render(&messages(case), add, &kwargs(case))
                .unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{builtin}");
        }
    }
    // The one-turn LLaVA-1.5 prompt the project always used.
    let text = ChatTemplate::builtin("llava_1_5")
        .unwrap()
        .render(&[Message::user("Is there a dog?", true)], true, &Map::new())
        .unwrap();
    assert_eq!(text, tita_core::tokenizer::llava_prompt("Is there a dog?"));
}

#[test]
fn jinja_features_of_hub_templates() {
    let render = |source: &str, kwargs: Value| {
        ChatTemplate::new(source.into(), "t".into()).render(
            &[Message::user("hi", true)],
            true,
            kwargs.as_object().unwrap(),
        )
    };
    // `{% generation %}` with whitespace control, trim_blocks / lstrip_blocks as jinja2.
    let source = "{% for m in messages %}\n  {%- generation -%}\n  [{{ m.role }}]\n  {% endgeneration %}\n{% endfor %}";
    assert_eq!(render(source, json!({})).unwrap(), "[user]\n");
    // Python string methods, namespace, loop controls, kwargs such as add_vision_id.
    let source = "{% set n = namespace(i=0) %}{% for m in messages %}{% for c in m.content %}{% if c.type == 'image' %}{% set n.i = n.i + 1 %}{% if add_vision_id %}Picture {{ n.i }}: {% endif %}{% continue %}{% endif %}{{ c.text.upper().strip() }}{% endfor %}{% endfor %}";
    assert_eq!(
        render(source, json!({"add_vision_id": true})).unwrap(),
        "Picture 1: HI"
    );
    assert_eq!(render(source, json!({})).unwrap(), "HI");
    // tojson is Python's json.dumps(ensure_ascii=False).
    let source = "{{ {'a': [1, 'ü<'], 'b': none} | tojson }}|{{ [1] | tojson(indent=2) }}";
    assert_eq!(
        render(source, json!({})).unwrap(),
        "{\"a\": [1, \"ü<\"], \"b\": null}|[\n  1\n]"
    );
    // raise_exception is an error that carries the template's message.
    let err = render(
        "{{ raise_exception('Only user and assistant roles are supported!') }}",
        json!({}),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Only user and assistant roles are supported!"),
        "{err}"
    );
    // A syntax error names the template.
    let err = render("{% for %}", json!({})).unwrap_err().to_string();
    assert!(err.starts_with("chat template t:"), "{err}");
}

#[test]
fn model_directories_are_searched_as_transformers_does() {
    let dir = std::env::temp_dir().join(format!("tita-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(ChatTemplate::from_model_dir(&dir).unwrap().is_none());
    assert_eq!(ChatTemplate::for_model(&dir).unwrap().name, "llava_1_5");
    let tok = json!({"bos_token": {"content": "<B>"}, "eos_token": "<E>",
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}]});
    std::fs::write(dir.join("tokenizer_config.json"), tok.to_string()).unwrap();
    let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
    let text = t.render(&[], false, &Map::new()).unwrap();
    assert_eq!(text, "<B>D<E>");
    assert!(
        !t.add_special_tokens(&text),
        "BOS written by the template is not added twice"
    );
    std::fs::write(dir.join("chat_template.json"), r#"{"chat_template": "J"}"#).unwrap();
    assert_eq!(render_empty(&dir), "J");
    std::fs::write(dir.join("chat_template.jinja"), "K\n").unwrap();
    assert_eq!(render_empty(&dir), "K", "jinja2 drops one trailing newline");
    // --template accepts names, files and directories; anything else names the choices.
    assert!(ChatTemplate::resolve("vicuna_v1").is_ok());
    assert_eq!(
        ChatTemplate::resolve(dir.join("chat_template.json").to_str().unwrap())
            .unwrap()
            .render(&[], false, &Map::new())
            .unwrap(),
        "J"
    );
    let err = ChatTemplate::resolve("vicuna").unwrap_err().to_string();
    assert!(err.contains("llava_1_5, llava_v1, vicuna_v1"), "{err}");
    // Conversations from JSON: a list, or {"messages": [...]}, content as string or parts.
    let conv = dir.join("conv.json");
    std::fs::write(&conv, r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]}"#).unwrap();
    let m = read_messages(&conv).unwrap();
    assert_eq!(m[0], Message::system("Be brief."));
    assert_eq!(m[1], Message::user("What?", true));
    std::fs::write(
        &conv,
        r#"[{"role": "user", "content": [{"type": "video"}]}]"#,
    )
    .unwrap();
    let err = read_messages(&conv).unwrap_err().to_string();
    assert!(err.contains("conv.json"), "{err}");
    // An empty template file is named as such, not blamed on the tokenizer later.
    std::fs::write(dir.join("chat_template.jinja"), "\n").unwrap();
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("chat_template.jinja") && err.contains("empty"),
        "{err}"
    );
    // A template that reads what the conversation does not give says so.
    let t = ChatTemplate::new(
        "{{ messages[0].content + tools.x }}".into(),
        "t.jinja".into(),
    );
    let err = t
        .render(&[Message::user("Hi", false)], false, &Map::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.jinja")
            && err.contains("undefined value")
            && !err.contains("<string>")
            && err.contains("does not give"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn render_empty(dir: &Path) -> String {
    ChatTemplate::from_model_dir(dir)
        .unwrap()
        .unwrap()
        .render(&[], false, &Map::new())
        .unwrap()
}
