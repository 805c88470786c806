//! MM-Vet through a real HTTP judge: the scripted replies of `fixtures/benchmarks/mm-vet/`
//! served over 127.0.0.1, the evaluator's calls (prompt, temperature, max_tokens, model) in
//! its order, its grade file, CSVs and printed output; refusals without a judge and on a
//! failing judge.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tita_bench::benchmark::{by_name, DataSpec, Judge, JudgeRequest, RunOutput, ScoreOptions};
use tita_bench::eval::{answers_path, EvalConfig};
use tita_bench::judge::{HttpJudge, JudgeError};

use crate::common::{assert_matches, data, expected};
use crate::judge_server::ScriptedJudge;

fn dir() -> PathBuf {
    data().join("mm-vet")
}

fn replies() -> Value {
    let text = std::fs::read_to_string(dir().join("judge_replies.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn score_with(
    server: &ScriptedJudge,
    model: &str,
    runs: usize,
) -> tita_core::Result<tita_bench::benchmark::Scorecard> {
    let judge = HttpJudge::new(&server.url, model, Some("sk-test".into())).without_pauses();
    by_name("mm-vet").unwrap().score(
        &dir(),
        &dir().join("answers/llava-v1.5-7b.jsonl"),
        &ScoreOptions {
            judge: Some(&judge),
            judge_runs: Some(runs),
        },
    )
}

#[test]
fn mm_vet_over_http_gives_what_the_evaluator_gave() {
    let want = &expected()["mm-vet"];
    let server = ScriptedJudge::start(&replies());
    let model = want["judge"]["model"].as_str().unwrap();
    let runs = want["judge"]["num_run"].as_u64().unwrap() as usize;
    let card = score_with(&server, model, runs).unwrap();

    // Every call, in the evaluator's order, as the evaluator made it.
    let calls = want["judge_calls"].as_array().unwrap();
    let got = server.received();
    assert_eq!(got.len(), calls.len());
    assert_eq!(server.unused(), 0);
    for (i, (g, w)) in got.iter().zip(calls).enumerate() {
        let id = w["id"].as_str().unwrap();
        let kind = w["kind"].as_str().unwrap();
        assert_eq!(g.path, "/v1/chat/completions");
        assert_eq!(g.authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(g.body["model"], w["model"], "call {i}");
        assert_eq!(g.body["max_tokens"], w["max_tokens"], "call {i}");
        assert_eq!(
            g.body["temperature"].as_f64(),
            w["temperature"].as_f64(),
            "call {i}"
        );
        assert_eq!(g.system(), None, "call {i}");
        let prompt = want["judge_prompts"][id][kind].as_str().unwrap();
        assert_eq!(g.user(), prompt, "call {i}: {id} {kind}");
    }

    assert_eq!(card.printed, want["stdout"].as_str().unwrap());
    assert_matches(&card.metrics["grade"], &want["grade"], "grade");
    assert_eq!(card.metrics["cap_score"], want["cap_score"]);
    // Combination names depend on Python's set order: compare them as sets, then the names
    // themselves (ours follow CPython 3.11 with PYTHONHASHSEED=0, as the fixture was made).
    let as_sets = |v: &Value| -> BTreeSet<(BTreeSet<String>, String)> {
        let sets = &want["cap_int_columns_as_sets"];
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, score)| {
                let set = match sets.get(k) {
                    Some(s) => serde_json::from_value(s.clone()).unwrap(),
                    None => BTreeSet::from([k.clone()]),
                };
                (set, score.as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(
        as_sets(&card.metrics["cap_int_score"]),
        as_sets(&want["cap_int_score"])
    );
    assert_eq!(
        card.metrics["cap_int_columns_as_sets"],
        want["cap_int_columns_as_sets"]
    );
    assert_eq!(card.metrics["judge"]["model"], model);
    assert!(card.metrics["judge"]["note"]
        .as_str()
        .unwrap()
        .contains("not comparable"));

    // The converted results, the grade file and both CSVs, byte for byte.
    let files = &want["files"];
    for key in ["results", "grade", "cap_score_csv", "cap_int_score_csv"] {
        let name = files[key].as_str().unwrap();
        let (_, bytes) = card
            .files
            .iter()
            .find(|(p, _)| p.to_str() == Some(name))
            .unwrap_or_else(|| panic!("{name} not written"));
        let recorded = std::fs::read_to_string(dir().join(name)).unwrap();
        assert_eq!(String::from_utf8_lossy(bytes), recorded, "{name}");
    }

    // The record of every exchange: one line per call, pauses on the rate-limited one.
    let (_, log) = card
        .files
        .iter()
        .find(|(p, _)| p.to_string_lossy().ends_with("-judge-calls-2runs.jsonl"))
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(log)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), calls.len());
    for (line, w) in lines.iter().zip(calls) {
        assert_eq!(line["tag"]["id"], w["id"]);
        assert_eq!(line["tag"]["kind"], w["kind"]);
        match w.get("raised") {
            Some(_) => {
                assert_eq!(line["error"]["kind"], "rate_limit");
                assert_eq!(line["pause_s"], 30.0);
            }
            None => assert_eq!(line["reply"]["content"], w["reply"]),
        }
    }
}

#[test]
fn mm_vet_refuses_to_score_without_a_judge() {
    let e = by_name("mm-vet")
        .unwrap()
        .score(
            &dir(),
            &dir().join("answers/llava-v1.5-7b.jsonl"),
            &ScoreOptions::default(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mm-vet is scored by a judge model"), "{e}");
    assert!(e.contains("--judge-url"), "{e}");
}

#[test]
fn a_failing_judge_stops_mm_vet_at_the_question_as_the_evaluator_does() {
    // The first question's first call fails with a server error: the evaluator does not
    // catch it.
    let mut script = replies();
    script[0]["replies"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"raise": "Exception", "message": "The server is on fire."}),
    );
    let server = ScriptedJudge::start(&script);
    let e = score_with(&server, "gpt-4-0613", 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mm-vet v1_0 (run 0)"), "{e}");
    assert!(e.contains("The server is on fire."), "{e}");
    assert_eq!(server.received().len(), 1);
}

#[test]
fn the_client_tells_rate_limits_from_other_failures() {
    let script = serde_json::json!([
        {"match": "a", "replies": [{"raise": "RateLimitError"}, {"raise": "Exception", "message": "down"}, "fine"]}
    ]);
    let server = ScriptedJudge::start(&script);
    let judge = HttpJudge::new(&format!("{}/chat/completions", server.url), "m", None);
    let request = JudgeRequest {
        model: "m".into(),
        system: Some("sys".into()),
        user: "a".into(),
        temperature: 0.2,
        max_tokens: 7,
    };
    assert!(matches!(
        judge.complete(&request),
        Err(JudgeError::RateLimited(_))
    ));
    assert_eq!(
        judge.complete(&request),
        Err(JudgeError::Failed("down".into()))
    );
    let reply = judge.complete(&request).unwrap();
    assert_eq!(
        (reply.content.as_str(), reply.model.as_str()),
        ("fine", "m")
    );
    let got = server.received();
    assert_eq!(got[0].body["temperature"].as_f64(), Some(0.2));
    assert_eq!(got[0].body["max_tokens"], 7);
    assert_eq!(got[0].system(), Some("sys"));
    assert_eq!(got[0].authorization, None);
    // Nothing listens on port 9 of this machine's loopback: a transport failure.
    let nowhere = HttpJudge::new("http://127.0.0.1:9/v1", "m", None);
    assert!(matches!(
        nowhere.complete(&request),
        Err(JudgeError::Failed(_))
    ));
}

#[test]
fn mm_vet_score_through_the_binary_with_a_judge() {
    let want = &expected()["mm-vet"];
    // Without the rate limit, which would make the binary sleep 30 s as the evaluator does.
    let mut script = replies();
    for entry in script.as_array_mut().unwrap() {
        entry["replies"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r.get("raise").is_none());
    }
    let server = ScriptedJudge::start(&script);
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_tita-bench"))
        .args(["score", "mm-vet", "--data"])
        .arg(dir())
        .arg("--answers")
        .arg(dir().join("answers/llava-v1.5-7b.jsonl"))
        .args([
            "--judge-url",
            &server.url,
            "--judge-model",
            "gpt-4-0613",
            "--judge-runs",
            "2",
        ])
        .arg("--out")
        .arg(out.path())
        .env("TITA_JUDGE_KEY", "sk-env")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let stdout = want["stdout"].as_str().unwrap().replace("sleep 30s\n", "");
    assert_eq!(String::from_utf8_lossy(&run.stdout), stdout);
    assert!(stderr.contains("judge: gpt-4-0613"), "{stderr}");
    assert!(stderr.contains("not comparable"), "{stderr}");
    assert_eq!(
        server.received()[0].authorization.as_deref(),
        Some("Bearer sk-env")
    );
    let grade = want["files"]["grade"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join(grade)).unwrap(),
        std::fs::read_to_string(dir().join(grade)).unwrap()
    );
    assert!(out
        .path()
        .join("results/llava-v1.5-7b_gpt-4-0613-judge-calls-2runs.jsonl")
        .exists());
}

#[test]
fn mm_vet_questions_are_llava_s_prompts_and_a_run_leaves_the_evaluator_s_results_file() {
    let b = by_name("mm-vet").unwrap();
    assert_eq!((b.instruction(), b.max_new_tokens()), ("", 1024));
    let sets = b
        .question_sets(&DataSpec {
            paths: vec![dir()],
            ..DataSpec::default()
        })
        .unwrap();
    assert_eq!(sets.len(), 1);
    let want = expected()["prompts"]["mmvet"].as_array().unwrap().clone();
    assert_eq!(sets[0].questions.len(), want.len());
    for ((q, image), w) in sets[0].questions.iter().zip(&sets[0].images).zip(&want) {
        assert_eq!(Some(q.question_id.unwrap()), w["question_id"].as_u64());
        assert_eq!(q.text, w["prompt"].as_str().unwrap());
        assert!(image.is_file(), "{}", image.display());
    }

    // A run has no judge: it converts each method's answers as convert_mmvet_for_eval.py does
    // and says how to score them.
    let out = tempfile::tempdir().unwrap();
    let config = EvalConfig::default();
    for m in &config.methods {
        let path = answers_path(out.path(), m, &sets[0].name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(dir().join("answers/llava-v1.5-7b.jsonl"), &path).unwrap();
    }
    let text = b
        .report_run(&RunOutput {
            out: out.path(),
            sets: &sets,
            queries: &sets.iter().map(|s| s.queries()).collect::<Vec<_>>(),
            data: &Default::default(),
            config: &config,
            speed: Default::default(),
        })
        .unwrap();
    assert!(text.contains("tita-bench score mm-vet"), "{text}");
    // Without a judge the suite gets no number, not a 0.
    assert!(b.run_headlines(out.path()).unwrap().is_empty());
    let recorded = std::fs::read_to_string(dir().join("results/llava-v1.5-7b.json")).unwrap();
    for m in &config.methods {
        let written = out.path().join(format!("results/{}.json", m.name()));
        assert_eq!(std::fs::read_to_string(written).unwrap(), recorded);
    }
}
