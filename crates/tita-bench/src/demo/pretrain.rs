//! The tower's pretraining, before any VLM exists, as LLaVA starts from a CLIP trained
//! elsewhere: multi-label classification of the world's 20 categories from the very features
//! LLaVA's projector reads (the selected hidden states, max-pooled over the patches, through
//! one linear layer), on images of their own split.

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use tita_core::image::ImageProcessor;
use tita_models::{llava::VisionPart, Vision, Vlm};
use tita_train::optim::{cosine_with_warmup, AdamW};

use super::*;

/// The classes: every category of the world.
const CLASSES: usize = COLORS.len() * SHAPES.len();

/// How the tower is pretrained.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Pretrain {
    /// Images of the pretraining split (drawn fresh from the world, shared by no other split).
    pub images: usize,
    /// Held-out images on which the report's accuracy is measured.
    pub held_out: usize,
    pub stage: Stage,
}

/// What the pretraining stage reports (in `training.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PretrainReport {
    pub steps: usize,
    pub images: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Held-out images whose 20 labels are all right (the set of categories, exactly).
    pub accuracy: f64,
    /// Held-out (image, category) decisions that are right.
    pub label_accuracy: f64,
    /// Held-out present objects found, and predicted objects that are present.
    pub recall: f64,
    pub precision: f64,
    pub held_out: usize,
    pub seconds: f64,
}

/// The vision part of a world model with a linear classifier of the categories on top.
#[derive(Module, Debug)]
struct TowerClassifier<B: Backend> {
    vision: VisionPart<B>,
    head: Linear<B>,
}

impl<B: Backend> TowerClassifier<B> {
    /// Category logits `[n, CLASSES]` of pixels `[n, C, H, W]`.
    fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let f = self.vision.selected_features(pixels);
        let [n, _, d] = f.dims();
        // Max over the patches, not the mean: each category must light up in the patches that
        // show it, which is what the language model reads later (measured: held-out exact-set
        // accuracy 0.44 with the mean, 0.75 with the max, same steps).
        self.head.forward(f.max_dim(1).reshape([n, d]))
    }
}

/// Preprocessed pixels and multi-hot labels of a split's scenes.
struct Examples {
    pixels: Vec<Vec<f32>>,
    labels: Vec<[f32; CLASSES]>,
    shape: [usize; 3],
}

impl Examples {
    fn of(scenes: &[Scene], processor: &ImageProcessor) -> Result<Self> {
        let cats = world::categories();
        let mut out = Examples {
            pixels: Vec::with_capacity(scenes.len()),
            labels: Vec::with_capacity(scenes.len()),
            shape: [0; 3],
        };
        for s in scenes {
            let p = processor.preprocess(&s.image, false)?;
            out.shape = [p.data.len() / (p.height * p.width), p.height, p.width];
            out.pixels.push(p.data);
            let present = s.present();
            out.labels.push(std::array::from_fn(|i| {
                f32::from(u8::from(present.contains(&cats[i])))
            }));
        }
        Ok(out)
    }

    fn batch<B: Backend>(
        &self,
        rows: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 2>) {
        let [c, h, w] = self.shape;
        let pixels: Vec<f32> = rows
            .iter()
            .flat_map(|&k| self.pixels[k].iter().copied())
            .collect();
        let labels: Vec<f32> = rows.iter().flat_map(|&k| self.labels[k]).collect();
        (
            Tensor::from_data(TensorData::new(pixels, [rows.len(), c, h, w]), device),
            Tensor::from_data(TensorData::new(labels, [rows.len(), CLASSES]), device),
        )
    }
}

/// Mean binary cross-entropy of category logits against multi-hot labels.
fn multi_label_loss<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 2>) -> Tensor<B, 1> {
    let present = labels.clone() * log_sigmoid(logits.clone());
    let absent = (labels.neg() + 1.0) * log_sigmoid(logits.neg());
    (present + absent).mean().neg()
}

/// Pretrains the tower of the model in `init` and writes the model, tower replaced, to `out`
/// (skipped when `out` holds a model: a finished stage). The pretraining and held-out images
/// are the world's splits 3 and 4 of `seed`.
pub fn pretrain_tower<B: Backend>(
    init: &Path,
    out: &Path,
    config: &Pretrain,
    seed: u64,
    progress: bool,
    device: &B::Device,
) -> Result<Option<PretrainReport>> {
    if out.join("model.safetensors").is_file() {
        return Ok(None);
    }
    let t = Instant::now();
    let processor = ImageProcessor::from_file(init)?;
    let train_set = Examples::of(&world::split(seed, 3, config.images), &processor)?;
    let held_out = Examples::of(&world::split(seed, 4, config.held_out), &processor)?;
    let (classifier, losses) =
        fit::<Autodiff<B>>(init, &train_set, config, seed, progress, device)?;

    let (mut right, mut exact, mut found, mut present, mut said) = (0usize, 0usize, 0, 0, 0);
    let all: Vec<usize> = (0..held_out.pixels.len()).collect();
    for rows in all.chunks(64) {
        let (x, _) = held_out.batch::<B>(rows, device);
        let logits = classifier.forward(x).into_data().convert::<f32>();
        let logits = logits.as_slice::<f32>().map_err(|e| {
            Error::argument(
                "pretrain",
                format!("reading the classifier's logits: {e:?}"),
            )
        })?;
        for (i, &k) in rows.iter().enumerate() {
            let truth = &held_out.labels[k];
            let mut all_right = true;
            for (c, &y) in truth.iter().enumerate() {
                let (guess, real) = (logits[i * CLASSES + c] > 0.0, y > 0.5);
                right += usize::from(guess == real);
                all_right &= guess == real;
                found += usize::from(guess && real);
                present += usize::from(real);
                said += usize::from(guess);
            }
            exact += usize::from(all_right);
        }
    }

    // The model of `init` with the trained tower, written whole into a fresh folder and moved
    // into place, so `out` never holds half a model.
    let mut model = Vlm::<B>::load(init, device)?;
    match &mut model.vision {
        Some(Vision::Llava(v)) => v.vision_tower = classifier.vision.vision_tower,
        _ => return Err(Error::argument("pretrain", "not a LLaVA world model")),
    }
    let tmp = out.with_extension("partial");
    copy_dir(init, &tmp)?;
    tita_models::save_safetensors(&model, &model.stored, &tmp.join("model.safetensors"))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Some(PretrainReport {
        steps: config.stage.steps,
        images: config.images,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_loss: losses.last().copied().unwrap_or(f64::NAN),
        accuracy: ratio(exact, held_out.pixels.len()),
        label_accuracy: ratio(right, held_out.pixels.len() * CLASSES),
        recall: ratio(found, present),
        precision: ratio(found, said),
        held_out: config.held_out,
        seconds: t.elapsed().as_secs_f64(),
    }))
}

/// Trains the classifier (tower + head; the projector gets no gradient) and returns it with
/// the loss of every step.
fn fit<A: AutodiffBackend>(
    init: &Path,
    examples: &Examples,
    config: &Pretrain,
    seed: u64,
    progress: bool,
    device: &A::Device,
) -> Result<(TowerClassifier<A::InnerBackend>, Vec<f64>)> {
    let vision = match Vlm::<A>::load(init, device)?.vision {
        Some(Vision::Llava(v)) => v,
        _ => return Err(Error::argument("pretrain", "not a LLaVA world model")),
    };
    let width = vision.multi_modal_projector.linear_1.weight.dims()[0];
    A::seed(device, seed ^ 0x70e7);
    let mut classifier = TowerClassifier {
        vision,
        head: LinearConfig::new(width, CLASSES).init(device),
    };
    let stage = &config.stage;
    let mut opt = AdamW::<A::InnerBackend>::new(AdamWConfig {
        lr: stage.lr,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7033);
    let bar = tita_core::progress::bar(progress, stage.steps, "tower pretraining");
    let mut losses = Vec::with_capacity(stage.steps);
    for step in 0..stage.steps {
        let rows: Vec<usize> = (0..stage.batch_size)
            .map(|_| rng.random_range(0..examples.pixels.len()))
            .collect();
        let (x, y) = examples.batch::<A>(&rows, device);
        let loss = multi_label_loss(classifier.forward(x), y);
        let value = loss.clone().into_scalar().elem::<f64>();
        if !value.is_finite() {
            return Err(Error::argument(
                "pretrain",
                format!(
                    "the tower's classification loss is {value} at step {}",
                    step + 1
                ),
            ));
        }
        losses.push(value);
        let grads = GradientsParams::from_grads(loss.backward(), &classifier);
        let lr = cosine_with_warmup(stage.lr, step + 1, stage.steps / 20, stage.steps);
        classifier = opt.step(classifier, grads, lr, 1.0);
        bar.inc(1);
    }
    bar.finish();
    Ok((classifier.valid(), losses))
}
