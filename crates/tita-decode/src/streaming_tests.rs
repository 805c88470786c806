//! Streaming text through the decoding loop with the fixture tokenizer (LLaMA's byte-fallback
//! vocabulary): a scripted [`Stepper`] forces a chosen id sequence through the real
//! [`decode_loop`].

use std::path::PathBuf;

use tita_core::{Result, Tokenizer};

use super::{decode_loop, Next, Stepper};
use crate::{Cancel, FinishReason, GenerationConfig};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer"),
    )
    .unwrap()
}

/// Scores whose argmax is `id`.
fn one_hot(vocab: usize, id: u32) -> Vec<f32> {
    let mut s = vec![0.0; vocab];
    s[id as usize] = 1.0;
    s
}

type Run = (Vec<String>, Vec<u32>, String, FinishReason);

/// Hands the loop one scripted id per step, as host scores or as an id already chosen.
struct Script<'s> {
    script: &'s [u32],
    next: usize,
    chosen: bool,
    vocab: usize,
}

impl Stepper for Script<'_> {
    fn has_room(&self) -> bool {
        true
    }

    fn next(&mut self, fed: Option<&[u32]>, _draws: &[f64]) -> Result<Next> {
        assert_eq!(
            fed.is_none(),
            self.next == 0,
            "the first call feeds nothing"
        );
        let id = self.script[self.next];
        self.next += 1;
        Ok(if self.chosen {
            Next::Chosen(vec![id])
        } else {
            Next::Scores(vec![one_hot(self.vocab, id)])
        })
    }
}

/// Greedy-decodes exactly `script` (or until a stop condition), returning the streamed deltas
/// per token and the loop's result; the same whether each step hands the loop scores to pick
/// from (host) or the ids already chosen (device).
fn run(script: &[u32], stops: &[&str]) -> Run {
    let host = run_as(script, stops, false);
    assert_eq!(host, run_as(script, stops, true));
    host
}

fn run_as(script: &[u32], stops: &[&str], chosen: bool) -> Run {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let config = GenerationConfig {
        max_new_tokens: script.len(),
        stop_strings: stops.iter().map(|s| s.to_string()).collect(),
        eos_token_ids: Some(vec![2]),
        ..Default::default()
    };
    let mut deltas = Vec::new();
    let mut stepper = Script {
        script,
        next: 0,
        chosen,
        vocab,
    };
    let mut rows = decode_loop(&tok, &config, &[2], 1, &mut stepper, &mut |ev| {
        assert_eq!(ev.scores.is_some(), !chosen);
        deltas.push(ev.text_delta.to_string())
    })
    .unwrap();
    let (ids, text, finish) = rows.remove(0);
    (deltas, ids, text, finish)
}

fn id(token: &str) -> u32 {
    tokenizer().token_to_id(token).unwrap()
}

#[test]
fn byte_fallback_characters_stream_once_and_whole() {
    // "Hello é🙂 world." with é = C3 A9 and 🙂 = F0 9F 99 82, each byte its own token.
    let bytes = |b: &[u8]| -> Vec<u32> { b.iter().map(|x| id(&format!("<0x{x:02X}>"))).collect() };
    let mut script = vec![id("▁Hello"), id("▁")];
    script.extend(bytes("é".as_bytes()));
    script.extend(bytes("🙂".as_bytes()));
    script.extend([id("▁world"), id(".")]);
    let (deltas, ids, text, finish) = run(&script, &[]);
    assert_eq!(ids, script);
    assert_eq!(text, "Hello é🙂 world.");
    assert_eq!(text, tokenizer().decode(&script, true).unwrap());
    assert_eq!(deltas.concat(), text);
    assert_eq!(deltas.len(), script.len(), "one event per token");
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert!(
        deltas.contains(&"é".to_string()) && deltas.contains(&"🙂".to_string()),
        "{deltas:?}"
    );
    assert_eq!(finish, FinishReason::MaxNewTokens);
}

#[test]
fn stop_string_is_never_streamed() {
    // "Hello world. STOP" split as "▁ST" "OP": the stream holds " ST" back until the stop.
    let script = [
        id("▁Hello"),
        id("▁world"),
        id("."),
        id("▁ST"),
        id("OP"),
        id("▁world"),
    ];
    let (deltas, ids, text, finish) = run(&script, &[" STOP"]);
    assert_eq!(finish, FinishReason::StopString);
    assert_eq!(
        ids.len(),
        5,
        "stops at the token that completes the stop string"
    );
    assert_eq!(text, "Hello world.");
    assert_eq!(deltas.concat(), text, "{deltas:?}");
    // A held-back prefix that turns out not to be a stop string is released.
    let script = [id("▁Hello"), id("▁ST"), id("▁world")];
    let (deltas, _, text, finish) = run(&script, &[" STOP"]);
    assert_eq!(finish, FinishReason::MaxNewTokens);
    assert_eq!(text, "Hello ST world");
    assert_eq!(deltas, ["Hello", "", " ST world"]);
}

#[test]
fn a_character_cut_off_by_the_token_limit_ends_the_text_as_transformers_decodes_it() {
    let script = [id("▁Hello"), id("<0xC3>")];
    let (deltas, _, text, _) = run(&script, &[]);
    assert_eq!(text, tokenizer().decode(&script, true).unwrap());
    assert_eq!(deltas.concat(), text);
}

#[test]
fn a_cancelled_generation_stops_at_the_next_token_with_what_it_has() {
    let tok = tokenizer();
    let cancel = Cancel::new();
    let config = GenerationConfig {
        max_new_tokens: 10,
        eos_token_ids: Some(vec![2]),
        cancel: Some(cancel.clone()),
        ..Default::default()
    };
    let hello = [id("▁Hello"); 10];
    let mut stepper = Script {
        script: &hello,
        next: 0,
        chosen: true,
        vocab: tok.vocab_size(),
    };
    let mut deltas = Vec::new();
    let rows = decode_loop(&tok, &config, &[2], 1, &mut stepper, &mut |ev| {
        deltas.push(ev.text_delta.to_string());
        if deltas.len() == 3 {
            cancel.cancel();
        }
    })
    .unwrap();
    let (ids, text, finish) = &rows[0];
    assert_eq!(*finish, FinishReason::Cancelled);
    assert_eq!(ids.len(), 3);
    assert_eq!(text, "Hello Hello Hello");
    assert_eq!(deltas.concat(), *text);
}
