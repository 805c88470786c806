//! Plain versus TITA-guided decoding on the bundled fixture models, with the explanation view.
//!
//! `cargo run --release -p tita-decode --example tita`

use std::path::PathBuf;

use tita_decode::{Fusion, GenerationConfig, Generator, Pipeline, Request, Tita, TitaConfig};

type B = burn::backend::Flex;

fn main() -> Result<(), tita_core::Error> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let device = Default::default();
    let target = Pipeline::<B>::load(&fixtures.join("llava-target"), &device)?;
    let reward = Pipeline::<B>::load(&fixtures.join("llava-reward"), &device)?;
    let image = fixtures.join("images/chelsea.png");
    let generation = GenerationConfig {
        max_new_tokens: 8,
        ..Default::default()
    };

    let prompt = target.prompt("Describe the image in detail.", Some(&image), false)?;
    let plain = Generator::new(&target, generation.clone()).generate(&prompt)?;
    println!("plain: {:?}", plain.text);

    let config = TitaConfig {
        fusion: Fusion::interpolate(0.3),
        explain: true,
    };
    let tita = Tita::new(&target, Some(&reward), None, config, generation)?;
    let request = Request::new("Describe the image in detail.", Some(image), false);
    let out = tita.generate(&request)?;
    println!("TITA:  {:?}", out.generation.text);
    for e in &out.explain {
        println!(
            "  {:>14} target wanted {:>14}  reward wanted {:>14}  implicit reward {:+.3}",
            format!("{:?}", e.token.text),
            format!("{:?}", e.target_top.text),
            format!("{:?}", e.reward_top.text),
            e.implicit_reward
        );
    }
    Ok(())
}
