//! One request decoded under several methods (a λ or α sweep) at about the cost of one: every
//! branch the methods need prefills once, and methods whose answers share a prefix share the
//! decode steps of that prefix.

use std::time::Instant;

use burn::tensor::backend::Backend;
use tita_core::{Error, Result};

use crate::generator::{decode_loop, finish, Generation, Next, Stepper};
use crate::guidance::{Fusion, Guide, Step};
use crate::pipeline::{Pipeline, Prompt, Request};
use crate::session::{logits_to_host, Session};
use crate::tita::Tita;

/// A distinct token history: every branch's session after it (target first) and its
/// next-token logits.
struct Branch<'m, B: Backend> {
    sessions: Vec<Session<'m, B>>,
    logits: Vec<Vec<f32>>,
}

// By hand: a derive would require `B: Clone`.
impl<B: Backend> Clone for Branch<'_, B> {
    fn clone(&self) -> Self {
        Branch {
            sessions: self.sessions.clone(),
            logits: self.logits.clone(),
        }
    }
}

/// The sweep's [`Stepper`]: one row per method, one [`Branch`] per distinct history.
struct Sweep<'f, 'm, B: Backend> {
    fusions: &'f [Fusion],
    /// Per method, the index of each of its guides among the shared branches (after the
    /// target's).
    slots: Vec<Vec<usize>>,
    branches: Vec<Branch<'m, B>>,
    /// Each row's branch.
    of_row: Vec<usize>,
    chosen: usize,
}

impl<B: Backend> Sweep<'_, '_, B> {
    /// Row `row`'s fused scores on branch `b`.
    fn scores(&self, row: usize, b: usize, step: Step) -> Vec<f32> {
        let logits = &self.branches[b].logits;
        let guides: Vec<&[f32]> = self.slots[row]
            .iter()
            .map(|&i| logits[1 + i].as_slice())
            .collect();
        self.fusions[row].fuse_host(step, &logits[0], &guides)
    }

    /// Steps every distinct (branch, token) pair once; rows that fed the same token after the
    /// same history share the result.
    fn advance(&mut self, tokens: &[u32]) -> Result<()> {
        let mut next: Vec<Branch<B>> = Vec::new();
        let mut made: Vec<(usize, u32)> = Vec::new();
        let mut of_row = Vec::with_capacity(tokens.len());
        for (row, &tok) in tokens.iter().enumerate() {
            let key = (self.of_row[row], tok);
            let idx = match made.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    let mut branch = self.branches[key.0].clone();
                    for (s, l) in branch.sessions.iter_mut().zip(&mut branch.logits) {
                        *l = s.step(&[tok])?.remove(0);
                    }
                    next.push(branch);
                    made.push(key);
                    made.len() - 1
                }
            };
            of_row.push(idx);
        }
        self.branches = next;
        self.of_row = of_row;
        Ok(())
    }
}

impl<B: Backend> Stepper for Sweep<'_, '_, B> {
    fn has_room(&self) -> bool {
        self.branches[0].sessions.iter().all(Session::has_room)
    }

    fn next(&mut self, fed: Option<&[u32]>, _draws: &[f64]) -> Result<Next> {
        if let Some(tokens) = fed {
            self.advance(tokens)?;
        }
        self.chosen += 1;
        let step = Step { t: self.chosen };
        Ok(Next::Scores(
            (0..self.fusions.len())
                .map(|row| self.scores(row, self.of_row[row], step))
                .collect(),
        ))
    }
}

impl<'p, B: Backend> Tita<'p, B> {
    /// One request decoded under several methods at about the cost of one: each branch the
    /// methods need (a model on an input) prefills once, shared by every method that needs it,
    /// and methods whose answers share a prefix share the decode steps of that prefix. For
    /// one-word answers this is one prefill per branch and a step or two per distinct answer.
    /// Each result equals what [`Tita::generate`] gives with that method. The guide models
    /// must have been given to [`Tita::new`].
    pub fn sweep(&self, request: &Request, fusions: &[Fusion]) -> Result<Vec<Generation>> {
        if fusions.is_empty() {
            return Err(Error::argument("fusions", "nothing to sweep"));
        }
        // The union of every method's branches, each prefilled by the first method needing it.
        let mut shared: Vec<(Guide, usize, usize)> = Vec::new();
        let mut slots = Vec::with_capacity(fusions.len());
        for (m, f) in fusions.iter().enumerate() {
            f.validate()?;
            let mut slot = Vec::new();
            // An identity setting reads no guide, so it runs none (greedy shares a sweep free).
            if f.is_identity() {
                slots.push(slot);
                continue;
            }
            self.check_models(f)?;
            for (i, g) in f.guides().into_iter().enumerate() {
                let at = match shared.iter().position(|(s, _, _)| *s == g) {
                    Some(at) => at,
                    None => {
                        shared.push((g, m, i));
                        shared.len() - 1
                    }
                };
                slot.push(at);
            }
            slots.push(slot);
        }
        let start = Instant::now();
        let t_prompt = self.target.request_prompt(request)?;
        let prefill = |p: &'p Pipeline<B>, prompt: &Prompt| {
            let room = Some(self.generation.max_new_tokens);
            let (s, l) = Session::prefill_reserving(&p.model, &[prompt], room, &p.device)?;
            Ok::<_, Error>((s, logits_to_host(&p.model, l)?))
        };
        let (ts, tl) = prefill(self.target, &t_prompt)?;
        let mut root = Branch {
            sessions: vec![ts],
            logits: tl,
        };
        for (guide, m, i) in &shared {
            let pipeline = self.pipeline(guide.model)?;
            let prompt = fusions[*m].guide_prompt(*i, pipeline, request)?;
            let (s, l) = prefill(pipeline, &prompt)?;
            root.sessions.push(s);
            root.logits.extend(l);
        }
        let prefill_s = start.elapsed().as_secs_f64();
        let mut stepper = Sweep {
            fusions,
            slots,
            branches: vec![root],
            of_row: vec![0; fusions.len()],
            chosen: 0,
        };
        let t0 = Instant::now();
        let rows = decode_loop(
            &self.target.tokenizer,
            &self.generation,
            &self.target.model.text_limits().eos_token_ids,
            fusions.len(),
            &mut stepper,
            &mut |_| {},
        )?;
        let decode_s = t0.elapsed().as_secs_f64();
        let prompts = vec![&t_prompt; fusions.len()];
        Ok(finish(rows, &prompts, prefill_s, decode_s))
    }
}
