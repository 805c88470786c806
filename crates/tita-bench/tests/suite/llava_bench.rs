//! LLaVA-Bench-in-the-Wild through a real HTTP judge: the scripted replies of
//! `fixtures/benchmarks/llava-bench-in-the-wild/` (a rate limit and a server error before two
//! of them, unparsable score lines) served over 127.0.0.1; the review prompts and calls, the
//! review file and what eval_gpt_review_bench.py and summarize_gpt_review.py printed.

use std::path::PathBuf;

use serde_json::Value;
use tita_bench::benchmark::{by_name, DataSpec, ScoreOptions};
use tita_bench::judge::HttpJudge;

use crate::common::{assert_matches, data, expected};
use crate::judge_server::ScriptedJudge;

fn dir() -> PathBuf {
    data().join("llava-bench-in-the-wild")
}

#[test]
fn llava_bench_over_http_gives_what_the_review_scripts_gave() {
    let want = &expected()["llava-bench-in-the-wild"];
    let replies: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("judge_replies.json")).unwrap())
            .unwrap();
    let server = ScriptedJudge::start(&replies);
    let model = want["judge"]["model"].as_str().unwrap();
    let judge = HttpJudge::new(&server.url, model, None).without_pauses();
    let card = by_name("llava-bench-in-the-wild")
        .unwrap()
        .score(
            &dir(),
            &dir().join(want["files"]["answers"].as_str().unwrap()),
            &ScoreOptions {
                judge: Some(&judge),
                judge_runs: None,
            },
        )
        .unwrap();

    let calls = want["judge_calls"].as_array().unwrap();
    let got = server.received();
    assert_eq!(got.len(), calls.len());
    assert_eq!(server.unused(), 0);
    for (i, (g, w)) in got.iter().zip(calls).enumerate() {
        let qid = w["question_id"].to_string();
        let prompt = &want["judge_prompts"][&qid];
        assert_eq!(g.body["model"], w["model"], "call {i}");
        assert_eq!(g.body["max_tokens"], w["max_tokens"], "call {i}");
        assert_eq!(
            g.body["temperature"].as_f64(),
            w["temperature"].as_f64(),
            "call {i}"
        );
        assert_eq!(g.system(), prompt["system"].as_str(), "call {i}");
        assert_eq!(g.user(), prompt["user"].as_str().unwrap(), "call {i}");
    }

    let printed = format!(
        "{}{}",
        want["eval_stdout"].as_str().unwrap(),
        want["summarize_stdout"].as_str().unwrap()
    );
    assert_eq!(card.printed, printed);
    assert_matches(&card.metrics["summary"], &want["summary"], "summary");
    assert_eq!(card.metrics["reviews"], want["reviews"]);
    assert_eq!(card.metrics["judge"]["model"], model);

    let reviews = want["files"]["reviews"].as_str().unwrap();
    let (_, bytes) = card
        .files
        .iter()
        .find(|(p, _)| p.to_str() == Some(reviews))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(bytes),
        std::fs::read_to_string(dir().join(reviews)).unwrap()
    );

    // Every exchange recorded; the failed ones paused 0.5 s before asking again.
    let (_, log) = card
        .files
        .iter()
        .find(|(p, _)| p.to_string_lossy().ends_with("-judge-calls.jsonl"))
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(log)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), calls.len());
    for (line, w) in lines.iter().zip(calls) {
        assert_eq!(line["tag"]["question_id"], w["question_id"]);
        match w["raised"].as_str() {
            Some("RateLimitError") => {
                assert_eq!(line["error"]["kind"], "rate_limit");
                assert_eq!(line["pause_s"], 0.5);
            }
            Some(_) => {
                assert_eq!(line["error"]["kind"], "failed");
                assert_eq!(line["pause_s"], 0.5);
            }
            None => assert_eq!(line["reply"]["content"], w["reply"]),
        }
    }
}

#[test]
fn llava_bench_refuses_to_score_without_a_judge_or_with_unpaired_answers() {
    let b = by_name("llava-bench-in-the-wild").unwrap();
    let answers = dir().join("answers/llava-v1.5-7b.jsonl");
    let e = b
        .score(&dir(), &answers, &ScoreOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("llava-bench-in-the-wild is scored by a judge model"),
        "{e}"
    );

    // One answer short: refused before any call.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&answers).unwrap();
    let short: Vec<&str> = text.lines().skip(1).collect();
    let path = tmp.path().join("short.jsonl");
    std::fs::write(&path, short.join("\n")).unwrap();
    let server = ScriptedJudge::start(&serde_json::json!([]));
    let judge = HttpJudge::new(&server.url, "m", None);
    let e = b
        .score(
            &dir(),
            &path,
            &ScoreOptions {
                judge: Some(&judge),
                judge_runs: None,
            },
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("8 answers for 9 questions"), "{e}");
    assert!(server.received().is_empty());
}

#[test]
fn llava_bench_questions_are_llava_s_prompts() {
    let b = by_name("llava-bench-in-the-wild").unwrap();
    assert_eq!((b.instruction(), b.max_new_tokens()), ("", 1024));
    let sets = b
        .question_sets(&DataSpec {
            paths: vec![dir()],
            ..DataSpec::default()
        })
        .unwrap();
    let want = expected()["prompts"]["llava_bench"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(sets[0].questions.len(), want.len());
    for ((q, image), w) in sets[0].questions.iter().zip(&sets[0].images).zip(&want) {
        assert_eq!(Some(q.question_id.unwrap()), w["question_id"].as_u64());
        assert_eq!(q.text, w["prompt"].as_str().unwrap());
        assert!(image.is_file(), "{}", image.display());
    }
}
