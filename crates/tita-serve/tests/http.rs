//! The server over HTTP on the fixture models, against the library's own answers: greedy and
//! TITA text, streaming, concurrency, a client that leaves mid-stream, and refusals.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tita_core::template::{Message, Part};
use tita_decode::{
    Fusion, GenerationConfig, Generator, ImageInput, Knobs, Pipeline, Request, Tita, TitaConfig,
};
use tita_serve::{router, Models, ServerConfig};
use ureq::Agent;

type B = burn::backend::Flex;

const KEY: &str = "test-key";
const PROMPT: &str = "Describe the image.";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn pipeline(name: &str) -> Pipeline<B> {
    Pipeline::load(&fixtures().join(name), &Default::default()).unwrap()
}

fn image_bytes() -> Vec<u8> {
    std::fs::read(fixtures().join("images/rocket.jpg")).unwrap()
}

/// A server for the fixture target and reward on an ephemeral loopback port; its URL.
fn serve(methods: Vec<Option<Fusion>>) -> String {
    let models = Models {
        target: pipeline("llava-target"),
        reward: Some(pipeline("llava-reward")),
        reference: None,
    };
    models.check_methods(&methods).unwrap();
    let config = ServerConfig {
        model_name: "llava-target".into(),
        api_key: Some(KEY.into()),
        max_body_bytes: 256 << 10,
        max_tokens: 2048,
        methods,
        ..ServerConfig::default()
    };
    serve_models(models, config)
}

/// Serves `models` under `config` on an ephemeral loopback port; its URL.
fn serve_models(models: Models<B>, config: ServerConfig) -> String {
    let header_timeout = config.header_timeout;
    let app = router(models, config);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let forever = std::future::pending();
            tita_serve::serve(listener, app, header_timeout, forever)
                .await
                .unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// A server of the fixture target alone under `config` (the key is [`KEY`]); its URL.
fn serve_target(config: ServerConfig) -> String {
    let models = Models {
        target: pipeline("llava-target"),
        reward: None,
        reference: None,
    };
    let config = ServerConfig {
        model_name: "llava-target".into(),
        api_key: Some(KEY.into()),
        ..config
    };
    serve_models(models, config)
}

/// One server for most tests (the models load once), with no served methods.
fn base() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| serve(Vec::new()))
}

fn agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn post(body: &Value) -> (u16, Value) {
    post_to(base(), body)
}

fn post_to(url: &str, body: &Value) -> (u16, Value) {
    let mut resp = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(body)
        .unwrap();
    (resp.status().as_u16(), resp.body_mut().read_json().unwrap())
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn chat(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": "llava-target",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(&image_bytes())}},
            {"type": "text", "text": prompt},
        ]}],
    })
}

fn library_request(prompt: &str) -> Request {
    Request {
        prompt: String::new(),
        image: Some(ImageInput::Encoded(image_bytes().into())),
        pad: false,
        messages: Some(vec![Message {
            role: "user".into(),
            content: vec![
                Part::Image {},
                Part::Text {
                    text: prompt.into(),
                },
            ],
        }]),
        position: None,
    }
}

fn generation(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        ..GenerationConfig::default()
    }
}

/// What `Generator` answers for `prompt` (greedy).
fn expected_greedy(prompt: &str, max_tokens: usize) -> (String, usize) {
    let p = pipeline("llava-target");
    let ids = p.request_prompt(&library_request(prompt)).unwrap();
    let g = Generator::new(&p, generation(max_tokens))
        .generate(&ids)
        .unwrap();
    (g.text, g.prompt_tokens)
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap()
}

#[test]
fn greedy_answer_equals_the_generator() {
    let (status, v) = post(&chat(PROMPT, 8));
    assert_eq!(status, 200, "{v}");
    let (text, prompt_tokens) = expected_greedy(PROMPT, 8);
    assert_eq!(content(&v), text);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

/// The `data:` lines of a streamed answer, read until `[DONE]`.
fn stream(body: &Value) -> Vec<String> {
    let resp = agent()
        .post(format!("{}/v1/chat/completions", base()))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            out.push(data.to_string());
            if data == "[DONE]" {
                break;
            }
        }
    }
    out
}

#[test]
fn streamed_deltas_add_up_to_the_answer() {
    let mut body = chat(PROMPT, 8);
    body["stream"] = json!(true);
    let events = stream(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected_greedy(PROMPT, 8).0);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 8);
}

#[test]
fn tita_field_equals_the_sampler() {
    let mut body = chat(PROMPT, 8);
    body["tita"] = json!({"mode": "interpolate", "lambda": 0.3, "explain": true});
    let (status, v) = post(&body);
    assert_eq!(status, 200, "{v}");
    let (target, reward) = (pipeline("llava-target"), pipeline("llava-reward"));
    let config = TitaConfig {
        fusion: Fusion::interpolate(0.3),
        explain: true,
    };
    let want = Tita::new(&target, Some(&reward), None, config, generation(8))
        .unwrap()
        .generate(&library_request(PROMPT))
        .unwrap();
    assert_eq!(content(&v), want.generation.text);
    let rows = v["tita_explain"].as_array().unwrap();
    assert_eq!(rows.len(), want.explain.len());
    assert_eq!(rows[0]["token"]["id"], want.explain[0].token.id);
    // Without a reference model, reference mode is the caller's mistake.
    body["tita"] = json!({"mode": "reference"});
    let (status, v) = post(&body);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reference"));
}

/// The new methods through the `tita` field: their knobs by name, equal to the library's
/// answer; a knob of another mode and a server-side object file refused by name.
#[test]
fn m3id_and_marine_through_the_tita_field_equal_the_library() {
    let target = pipeline("llava-target");
    let cases = [
        (
            json!({"mode": "m3id", "m3id_lambda": 0.5, "m3id_alpha": 0.99}),
            Fusion::from_knobs(
                "m3id",
                &Knobs::new()
                    .with("m3id_lambda", Some(0.5))
                    .with("m3id_alpha", Some(0.99)),
            ),
        ),
        (
            json!({"mode": "marine", "objects": ["rocket", "tree"], "marine_gamma": 0.9}),
            Fusion::from_knobs(
                "marine",
                &Knobs::new()
                    .with("objects", Some(json!(["rocket", "tree"])))
                    .with("marine_gamma", Some(0.9)),
            ),
        ),
    ];
    for (tita, fusion) in cases {
        let mut body = chat(PROMPT, 8);
        body["tita"] = tita;
        let (status, v) = post(&body);
        assert_eq!(status, 200, "{v}");
        let config = TitaConfig {
            fusion: fusion.unwrap(),
            explain: false,
        };
        let want = Tita::new(&target, None, None, config, generation(8))
            .unwrap()
            .generate(&library_request(PROMPT))
            .unwrap();
        assert_eq!(content(&v), want.generation.text);
    }
    let mut body = chat(PROMPT, 4);
    body["tita"] = json!({"mode": "m3id", "lambda": 0.3});
    let (status, v) = post(&body);
    error_of(status, &v, 400, "lambda");
    body["tita"] = json!({"mode": "marine", "objects": "/etc/passwd"});
    let (status, v) = post(&body);
    error_of(status, &v, 400, "objects");
    body["tita"] = json!({"mode": "interpolate", "alpha": 1.0});
    let (status, v) = post(&body);
    error_of(status, &v, 400, "alpha");
    body["tita"] = json!({"mode": "m3id"});
    body["stop"] = json!("");
    let (status, v) = post(&body);
    error_of(status, &v, 400, "stop");
    let text_only = json!({
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4,
        "tita": {"mode": "contrastive"},
    });
    let (status, v) = post(&text_only);
    error_of(status, &v, 400, "no image");
}

#[test]
fn eight_concurrent_requests_all_answer_correctly() {
    let prompts = ["Describe the image.", "What is in the picture?"];
    let want: Vec<String> = prompts.iter().map(|p| expected_greedy(p, 6).0).collect();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let body = chat(prompts[i % 2], 6);
            std::thread::spawn(move || post(&body))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, v) = h.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(content(&v), want[i % 2], "request {i}");
    }
    // Those that queued while the first was answered were decoded as one batch.
    assert!(
        health()["largest_batch"].as_u64().unwrap() >= 2,
        "{}",
        health()
    );
}

fn health() -> Value {
    agent()
        .get(format!("{}/health", base()))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

#[test]
fn a_client_that_leaves_mid_stream_cancels_its_generation() {
    let before = health()["cancelled"].as_u64().unwrap();
    let mut body = chat(PROMPT, 2048);
    body["stream"] = json!(true);
    {
        let resp = agent()
            .post(format!("{}/v1/chat/completions", base()))
            .header("Authorization", format!("Bearer {KEY}"))
            .send_json(&body)
            .unwrap();
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("data: "), "{line}");
    } // the connection closes here
    let start = Instant::now();
    while health()["cancelled"].as_u64().unwrap() == before {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the generation was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, v) = post(&chat(PROMPT, 2));
    assert_eq!(status, 200, "{v}");
}

fn error_of(status: u16, v: &Value, want_status: u16, want: &str) {
    assert_eq!(status, want_status, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(want), "{msg}");
    assert!(v["error"]["type"].is_string());
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    // A bad image.
    let mut body = chat(PROMPT, 4);
    body["messages"][0]["content"][0]["image_url"]["url"] = json!(data_url(b"not an image"));
    let (status, v) = post(&body);
    error_of(status, &v, 400, "image");
    // Not JSON at all.
    let mut resp = agent()
        .post(format!("{}/v1/chat/completions", base()))
        .header("Authorization", format!("Bearer {KEY}"))
        .content_type("application/json")
        .send("{\"messages\": [")
        .unwrap();
    let v: Value = resp.body_mut().read_json().unwrap();
    error_of(resp.status().as_u16(), &v, 400, "");
    // An unknown field value and an unknown field.
    let mut body = chat(PROMPT, 4);
    body["tita"] = json!({"mode": "sideways"});
    let (status, v) = post(&body);
    error_of(status, &v, 400, "sideways");
    // Content of another type, and a body that is not an object.
    let bad_content = json!({"messages": [{"role": "user", "content": 42}], "max_tokens": 2});
    let (status, v) = post(&bad_content);
    error_of(status, &v, 400, "a string, or a list of");
    let (status, v) = post(&json!([]));
    error_of(status, &v, 400, "a JSON object with `messages`");
    let mut body = chat(PROMPT, 4);
    body["logit_bias"] = json!({});
    let (status, v) = post(&body);
    error_of(status, &v, 400, "logit_bias");
    // A body over the limit.
    let mut body = chat(PROMPT, 4);
    body["messages"][0]["content"][1]["text"] = json!("x".repeat(300 << 10));
    let (status, v) = post(&body);
    error_of(status, &v, 413, "");
    // Network images and paths without --allow-images.
    let mut body = chat(PROMPT, 4);
    body["messages"][0]["content"][0]["image_url"]["url"] = json!("https://example.com/a.png");
    let (status, v) = post(&body);
    error_of(status, &v, 400, "network");
    // A wrong key.
    let mut resp = agent()
        .post(format!("{}/v1/chat/completions", base()))
        .header("Authorization", "Bearer nope")
        .send_json(chat(PROMPT, 4))
        .unwrap();
    let v: Value = resp.body_mut().read_json().unwrap();
    error_of(resp.status().as_u16(), &v, 401, "key");
    // And the next request is answered.
    let (status, v) = post(&chat(PROMPT, 2));
    assert_eq!(status, 200, "{v}");
    // The scheme is case-insensitive.
    let mut resp = agent()
        .get(format!("{}/v1/models", base()))
        .header("Authorization", format!("bearer {KEY}"))
        .call()
        .unwrap();
    let v: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(v["data"][0]["id"], "llava-target");
}

/// The official `openai` Python client against the server (`scripts/openai_client.py`): plain,
/// streamed and TITA answers equal the library's. `cargo xtask ci` installs the client and
/// sets `TITA_REQUIRE_OPENAI=1`, which makes a missing client a failure; elsewhere the test
/// runs when `python3 -c "import openai"` works and says so when it does not.
#[test]
fn official_openai_client_gets_the_library_answers() {
    let required = std::env::var("TITA_REQUIRE_OPENAI").is_ok_and(|v| v == "1");
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(
            !required,
            "TITA_REQUIRE_OPENAI=1 but python3 cannot import openai"
        );
        eprintln!(
            "python3 with the openai package not found: the official-client check did not run"
        );
        return;
    }
    let script = fixtures().join("../scripts/openai_client.py");
    let image = fixtures().join("images/rocket.jpg");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--base-url", &format!("{}/v1", base()), "--api-key", KEY])
        .args(["--image", image.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let prompt = "Is there a rocket in the image?";
    let want = expected_greedy(prompt, 12).0;
    assert_eq!(v["greedy"], want.as_str());
    assert_eq!(v["streamed"], want.as_str());
    let (target, reward) = (pipeline("llava-target"), pipeline("llava-reward"));
    let tita = Tita::new(
        &target,
        Some(&reward),
        None,
        TitaConfig::default(),
        generation(12),
    )
    .unwrap()
    .generate(&library_request(prompt))
    .unwrap();
    assert_eq!(v["tita"], tita.generation.text.as_str());
}

/// `logprobs` in OpenAI's shape: one entry per token, the greedy token on top of its
/// alternatives, and the first token's log-probability equal to the library's prefill logits'.
#[test]
fn logprobs_come_from_the_distribution_each_token_was_chosen_from() {
    for tita in [None, Some(json!({"lambda": 0.3}))] {
        let mut body = chat(PROMPT, 5);
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(3);
        if let Some(t) = &tita {
            body["tita"] = t.clone();
        }
        let (status, v) = post(&body);
        assert_eq!(status, 200, "{v}");
        let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(entries.len(), 5);
        for e in entries {
            let top = e["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            assert_eq!(top[0]["token"], e["token"], "greedy picks the most likely");
            assert_eq!(top[0]["logprob"], e["logprob"]);
            let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            assert!(
                lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0,
                "{lps:?}"
            );
        }
        if tita.is_none() {
            let p = pipeline("llava-target");
            let prompt = p.request_prompt(&library_request(PROMPT)).unwrap();
            let (_, logits) =
                tita_decode::Session::prefill(&p.model, &[&prompt], &p.device).unwrap();
            let ls = tita_core::sampling::log_softmax(&logits[0]);
            let best = ls.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let got = entries[0]["logprob"].as_f64().unwrap() as f32;
            assert!((got - best).abs() < 1e-4, "{got} vs {best}");
        }
    }
    let mut body = chat(PROMPT, 2);
    body["top_logprobs"] = json!(2);
    let (status, _) = post(&body);
    assert_eq!(status, 400);
}

/// Guides that would fail every `tita` request are refused when the server starts.
#[test]
fn guides_of_another_family_or_without_a_reward_model_are_refused_at_start() {
    let models = |reward: Option<&str>, reference: Option<&str>| Models {
        target: pipeline("llava-target"),
        reward: reward.map(pipeline),
        reference: reference.map(pipeline),
    };
    assert!(models(Some("llava-reward"), Some("llava-reward-ref"))
        .check()
        .is_ok());
    let e = models(None, Some("llava-reward-ref")).check().unwrap_err();
    assert!(e.to_string().contains("reference"), "{e}");
    let e = models(Some("llava-reward"), Some("qwen2_5_vl/reward"))
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`reference`") && e.contains("family"), "{e}");
}

/// A server started with `--method`s answers clients that send only OpenAI's fields with
/// them: the plain name gets the first, `NAME+LABEL` picks one, a `tita` field still
/// overrides, and a served image-contrasting method answers a text-only request plainly.
#[test]
fn served_methods_are_chosen_by_model_name() {
    let no_knobs = Knobs::new();
    let spec = |s: &str| Fusion::from_spec(s, &no_knobs, "method").unwrap();
    let url = serve(vec![spec("tita:0.3"), spec("greedy"), spec("vcd:1")]);
    let mut resp = agent()
        .get(format!("{url}/v1/models"))
        .header("Authorization", format!("Bearer {KEY}"))
        .call()
        .unwrap();
    let listed: Value = resp.body_mut().read_json().unwrap();
    let names: Vec<&str> = (listed["data"].as_array().unwrap().iter())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "llava-target",
            "llava-target+tita-0.3",
            "llava-target+greedy",
            "llava-target+vcd-1"
        ]
    );

    let (target, reward) = (pipeline("llava-target"), pipeline("llava-reward"));
    let library = |fusion: Fusion| {
        let config = TitaConfig {
            fusion,
            explain: false,
        };
        Tita::new(&target, Some(&reward), None, config, generation(8))
            .unwrap()
            .generate(&library_request(PROMPT))
            .unwrap()
            .generation
            .text
    };
    let tita = library(Fusion::interpolate(0.3));
    let greedy = expected_greedy(PROMPT, 8).0;
    assert_ne!(tita, greedy, "the fixture must tell the two apart");
    let ask = |model: Option<&str>, tita_field: Option<Value>| {
        let mut body = chat(PROMPT, 8);
        match model {
            Some(m) => body["model"] = json!(m),
            None => drop(body.as_object_mut().unwrap().remove("model")),
        }
        if let Some(t) = tita_field {
            body["tita"] = t;
        }
        let (status, v) = post_to(&url, &body);
        assert_eq!(status, 200, "{v}");
        (
            content(&v).to_string(),
            v["model"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(ask(None, None), (tita.clone(), "llava-target".into()));
    assert_eq!(
        ask(Some("llava-target"), None),
        (tita.clone(), "llava-target".into())
    );
    assert_eq!(ask(Some("llava-target+tita-0.3"), None).0, tita);
    assert_eq!(
        ask(Some("llava-target+greedy"), None),
        (greedy.clone(), "llava-target+greedy".into())
    );
    let vcd = ask(Some("llava-target+vcd-1"), None).0;
    assert_eq!(
        vcd,
        ask(None, Some(json!({"mode": "contrastive", "alpha": 1.0}))).0
    );
    // The request's own field wins over the name's method.
    assert_eq!(
        ask(Some("llava-target+tita-0.3"), Some(json!({"lambda": 0.0}))).0,
        greedy
    );

    // Text only: VCD has nothing to contrast and decodes plainly, as greedy does.
    let text_only = |model: &str| {
        let body = json!({
            "model": model, "max_tokens": 8,
            "messages": [{"role": "user", "content": PROMPT}],
        });
        let (status, v) = post_to(&url, &body);
        assert_eq!(status, 200, "{v}");
        content(&v).to_string()
    };
    assert_eq!(
        text_only("llava-target+vcd-1"),
        text_only("llava-target+greedy")
    );

    let (status, v) = post_to(
        &url,
        &json!({
            "model": "llava-target+m3id", "messages": [{"role": "user", "content": "Hi"}],
        }),
    );
    error_of(
        status,
        &v,
        404,
        "this server has `llava-target`, `llava-target+tita-0.3`",
    );
}

/// `/v1/completions` tokenises its prompt as given (no chat template), plain and streamed,
/// and answers what `Generator` does for the raw prompt.
#[test]
fn completions_take_the_prompt_raw() {
    let p = pipeline("llava-target");
    let raw = "The capital of France is";
    let prompt = p
        .request_prompt(&Request::new(raw, None::<PathBuf>, false))
        .unwrap();
    assert_eq!(prompt.ids, p.tokenizer.encode(raw, true).unwrap());
    let want = Generator::new(&p, generation(6)).generate(&prompt).unwrap();
    let body = json!({"model": "llava-target", "prompt": raw, "max_tokens": 6});
    let mut resp = agent()
        .post(format!("{}/v1/completions", base()))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(&body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.text.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt.ids.len());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = agent()
        .post(format!("{}/v1/completions", base()))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(&streamed)
        .unwrap();
    let lines: Vec<String> = BufReader::new(resp.into_body().into_reader())
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect();
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = (lines[..lines.len() - 1].iter())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text: String = (chunks.iter())
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, want.text);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    // The chat endpoint templates the same text: another prompt.
    let (status, v) =
        post(&json!({"max_tokens": 1, "messages": [{"role": "user", "content": raw}]}));
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["usage"]["prompt_tokens"], prompt.ids.len());
}

fn text_chat(text: String, max_tokens: usize) -> Value {
    json!({"max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]})
}

/// Huge prompts are tokenised off the worker, in parallel, and refused there: a small request
/// sent while they are being refused is answered before any of them. A prompt over the cheap
/// bound (characters against the token cap) is refused without tokenising it.
#[test]
fn huge_prompts_never_hold_up_a_small_one() {
    let url = serve_target(ServerConfig {
        max_body_bytes: 8 << 20,
        max_prompt_tokens: 100_000,
        max_tokens: 16,
        ..ServerConfig::default()
    });
    // Passes the cheap bound (100,000 tokens of up to 64 characters), then tokenises to
    // more than 100,000 tokens.
    let big = "hello world ".repeat(250_000);
    let start = Instant::now();
    let bigs: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), text_chat(big.clone(), 4));
            std::thread::spawn(move || {
                let answer = post_to(&url, &body);
                (answer, start.elapsed())
            })
        })
        .collect();
    // Let the big bodies arrive first.
    std::thread::sleep(Duration::from_millis(300));
    let (status, v) = post_to(&url, &text_chat("Hello".into(), 4));
    let small_done = start.elapsed();
    assert_eq!(status, 200, "{v}");
    for h in bigs {
        let ((status, v), done) = h.join().unwrap();
        error_of(status, &v, 400, "tokens long (image tokens included)");
        assert!(
            small_done < done,
            "the small request ({small_done:?}) waited for a big one ({done:?})"
        );
    }

    let url = serve_target(ServerConfig {
        max_body_bytes: 8 << 20,
        max_prompt_tokens: 64,
        ..ServerConfig::default()
    });
    let (status, v) = post_to(&url, &text_chat(big, 4));
    error_of(status, &v, 400, "at least");
    let (status, v) = post_to(&url, &text_chat("Hello".into(), 2));
    assert_eq!(status, 200, "{v}");
}

/// A connection that never finishes its headers is closed after the header timeout; a body
/// that stops arriving is answered 408 after the body timeout.
#[test]
fn unfinished_headers_and_bodies_time_out() {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(300);
    let url = serve_target(ServerConfig {
        header_timeout: timeout,
        body_timeout: timeout,
        ..ServerConfig::default()
    });
    let addr = url.strip_prefix("http://").unwrap();
    let connect = || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        // A server that never closes fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let mut s = connect();
    let start = Instant::now();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut got = Vec::new();
    // Closed: end of stream (or a reset); a read timeout would be an error of another kind.
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "));

    let mut s = connect();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\""
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
    // The server still answers.
    let (status, v) = post_to(&url, &text_chat("Hello".into(), 2));
    assert_eq!(status, 200, "{v}");
}

fn metrics(url: &str) -> String {
    agent()
        .get(format!("{url}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of a sample line of `/metrics` (name with its labels).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        .parse()
        .unwrap()
}

/// With the worker busy and the queue full, one more request is answered 429 with
/// `Retry-After` in OpenAI's error shape; the queued one is answered once the worker is free.
/// `/metrics` counts all of it.
#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let url = serve_target(ServerConfig {
        max_queue: 1,
        max_tokens: 2048,
        ..ServerConfig::default()
    });
    // A long stream keeps the worker busy.
    let mut long = text_chat("Hello".into(), 2048);
    long["stream"] = json!(true);
    let resp = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(&long)
        .unwrap();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: "), "{line}");
    // One waits in the queue...
    let queued = {
        let url = url.clone();
        std::thread::spawn(move || post_to(&url, &text_chat("Hi".into(), 2)))
    };
    let start = Instant::now();
    while sample(&metrics(&url), "tita_queue_depth") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...and the next is refused.
    let mut resp = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(text_chat("Hi".into(), 2))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = resp.body_mut().read_json().unwrap();
    error_of(429, &v, 429, "retry after");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    drop(reader); // the stream's client leaves: the worker takes the queued request
    let (status, v) = queued.join().unwrap();
    assert_eq!(status, 200, "{v}");

    let text = metrics(&url);
    assert_eq!(sample(&text, "tita_queue_depth"), 0.0);
    assert_eq!(sample(&text, "tita_queue_full_total"), 1.0);
    let chat = "tita_http_requests_total{endpoint=\"/v1/chat/completions\"";
    assert_eq!(sample(&text, &format!("{chat},status=\"429\"}}")), 1.0);
    assert_eq!(sample(&text, &format!("{chat},status=\"200\"}}")), 2.0);
    let latency = "tita_request_duration_seconds";
    // The stream whose client left has no latency: it never finished.
    assert_eq!(
        sample(&text, &format!("{latency}_count{{method=\"greedy\"}}")),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("{latency}_bucket{{method=\"greedy\",le=\"+Inf\"}}")
        ),
        1.0
    );
    assert!(sample(&text, "tita_completion_tokens_total") >= 2.0);
    assert!(text.contains("# TYPE tita_request_duration_seconds histogram"));
}

/// Sampled requests with the same settings are decoded as one batch, and each answer equals
/// the library's answer for that request alone (every row draws from its own generator).
#[test]
fn sampled_requests_batch_and_equal_their_solo_answers() {
    let url = serve_target(ServerConfig::default());
    let sampling = tita_decode::SamplingConfig {
        temperature: 1.0,
        top_p: Some(0.9),
        seed: 11,
        ..Default::default()
    };
    let prompts = ["Describe the image.", "What is in the picture?"];
    let p = pipeline("llava-target");
    let solo: Vec<String> = (prompts.iter())
        .map(|prompt| {
            let ids = p.request_prompt(&library_request(prompt)).unwrap();
            let config = GenerationConfig {
                sampling: sampling.clone(),
                ..generation(8)
            };
            Generator::new(&p, config).generate(&ids).unwrap().text
        })
        .collect();
    let greedy: Vec<String> = prompts.iter().map(|p| expected_greedy(p, 8).0).collect();
    assert_ne!(solo, greedy, "the fixture must tell sampling from greedy");
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let mut body = chat(prompts[i % 2], 8);
            body["temperature"] = json!(1.0);
            body["top_p"] = json!(0.9);
            body["seed"] = json!(11);
            let url = url.clone();
            std::thread::spawn(move || post_to(&url, &body))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, v) = h.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(content(&v), solo[i % 2], "request {i}");
    }
    let health: Value = agent()
        .get(format!("{url}/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert!(health["largest_batch"].as_u64().unwrap() >= 2, "{health}");
}
