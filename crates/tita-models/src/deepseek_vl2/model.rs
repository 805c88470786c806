//! The whole DeepSeek-VL2 (`DeepseekVLV2ForCausalLM`): tiles through the SigLIP tower and the
//! projector, the image rows laid out with the `image_newline` and `view_seperator` (sic)
//! parameters, written into the token embeddings where `images_seq_mask` is set, then the
//! language model.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use tita_core::{Error, Result};

use crate::deepseek_vl2::config::{DeepseekVl2Config, GlobalViewPos, TileTag};
use crate::deepseek_vl2::language::{hub_keys, DeepseekV2};
use crate::deepseek_vl2::projector::Projector;
use crate::deepseek_vl2::vision::SiglipVit;
use crate::scope::Scope;
use crate::state::DecodeState;
use crate::weights::TensorSource;

/// One image-token row of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRow {
    /// Row `i` of the projector output flattened over (tile, position in tile).
    Feature(usize),
    Newline,
    Separator,
}

/// The image-token rows of a prompt in sequence order (tile tag `2D`, global view first): per
/// image with `[across, down]` tiles, the global view's `side` rows of `side` features each
/// followed by a newline, the view separator, then the local tiles stitched into one
/// `(side·down) × (side·across)` grid, every grid row followed by a newline. Images with a zero
/// count (the processor's text-only placeholder) end the list, as in the authors' code.
pub fn image_layout(spatial_crop: &[[usize; 2]], side: usize) -> Vec<ImageRow> {
    let per_tile = side * side;
    let mut rows = Vec::new();
    let mut tile = 0;
    for &[across, down] in spatial_crop {
        if across == 0 || down == 0 {
            break;
        }
        let global = tile * per_tile;
        for y in 0..side {
            rows.extend((0..side).map(|x| ImageRow::Feature(global + y * side + x)));
            rows.push(ImageRow::Newline);
        }
        rows.push(ImageRow::Separator);
        let local = (tile + 1) * per_tile;
        for gy in 0..down * side {
            let (ty, y) = (gy / side, gy % side);
            for gx in 0..across * side {
                let (tx, x) = (gx / side, gx % side);
                rows.push(ImageRow::Feature(
                    local + (ty * across + tx) * per_tile + y * side + x,
                ));
            }
            rows.push(ImageRow::Newline);
        }
        tile += 1 + across * down;
    }
    rows
}

/// Tiles the layout of `spatial_crop` reads (the global view and the local tiles per image).
pub fn tiles_used(spatial_crop: &[[usize; 2]]) -> usize {
    spatial_crop
        .iter()
        .take_while(|&&[a, d]| a != 0 && d != 0)
        .map(|&[a, d]| 1 + a * d)
        .sum()
}

#[derive(Module, Debug)]
pub struct DeepseekVl2<B: Backend> {
    pub vision: SiglipVit<B>,
    pub projector: Projector<B>,
    pub image_newline: Param<Tensor<B, 1>>,
    pub view_seperator: Param<Tensor<B, 1>>,
    pub language: DeepseekV2<B>,
    #[module(skip)]
    pub config: DeepseekVl2Config,
}

impl<B: Backend> DeepseekVl2<B> {
    /// Builds the model from a checkpoint (`vision.*`, `projector.*`, `image_newline`,
    /// `view_seperator`, `language.*`). Layouts the authors' model does not build or this port
    /// does not cover are refused by name.
    pub fn load(
        w: &mut impl TensorSource,
        c: &DeepseekVl2Config,
        device: &B::Device,
    ) -> Result<Self> {
        if c.tile_tag != TileTag::TwoD {
            return Err(Error::argument(
                "tile_tag",
                "`1D` (learned tile indicators) is not supported; only `2D` (newline and view \
                 separator embeddings, every public checkpoint)",
            ));
        }
        if c.global_view_pos != GlobalViewPos::Head {
            return Err(Error::argument(
                "global_view_pos",
                "`tail` is not supported; only `head` (every public checkpoint)",
            ));
        }
        let vision = SiglipVit::load(Scope::new(w, "vision"), &c.vision, device)?;
        let projector = Projector::load(Scope::new(w, "projector"), &c.projector, device)?;
        let n = c.projector.n_embed;
        let mut root = Scope::new(w, "");
        let image_newline = root.param("image_newline", [n], device)?;
        let view_seperator = root.param("view_seperator", [n], device)?;
        let language = DeepseekV2::load(w, &hub_keys(), &c.language, device)?;
        Ok(DeepseekVl2 {
            vision,
            projector,
            image_newline,
            view_seperator,
            language,
            config: c.clone(),
        })
    }

    /// Image embeddings of `tiles` `[n, 3, size, size]`: `[n, side², hidden]`.
    pub fn encode_tiles(&self, tiles: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        self.projector.forward(self.vision.forward(tiles)?)
    }

    /// Rows per side of one tile's image embeddings.
    pub fn tile_side(&self) -> usize {
        self.config
            .vision
            .grid()
            .div_ceil(self.config.projector.downsample_ratio)
    }

    /// Input embeddings `[1, T, hidden]` of one prompt: the token embeddings of `ids`, with the
    /// image rows (from `tiles`, laid out by `spatial_crop`) at the positions `images_seq_mask`
    /// sets. Without images (`spatial_crop` all zero, or `tiles` None) the tower is not run.
    pub fn input_embeds(
        &self,
        ids: &[u32],
        images_seq_mask: &[bool],
        tiles: Option<Tensor<B, 4>>,
        spatial_crop: &[[usize; 2]],
    ) -> Result<Tensor<B, 3>> {
        let device = self.image_newline.val().device();
        let text = self.language.embed(&[ids.to_vec()], &device)?;
        if images_seq_mask.len() != ids.len() {
            return Err(Error::argument(
                "images_seq_mask",
                format!(
                    "{} entries for {} token ids",
                    images_seq_mask.len(),
                    ids.len()
                ),
            ));
        }
        let layout = image_layout(spatial_crop, self.tile_side());
        let marked = images_seq_mask.iter().filter(|&&m| m).count();
        if marked != layout.len() {
            return Err(Error::argument(
                "images_seq_mask",
                format!(
                    "{marked} image positions, but the images {spatial_crop:?} make {} rows",
                    layout.len()
                ),
            ));
        }
        if layout.is_empty() {
            return Ok(text);
        }
        let Some(tiles) = tiles else {
            return Err(Error::argument(
                "pixels",
                "the prompt has image positions but no tiles were given",
            ));
        };
        let need = tiles_used(spatial_crop);
        let have = tiles.dims()[0];
        if have < need {
            return Err(Error::argument(
                "pixels",
                format!("{have} tiles for images {spatial_crop:?}, which need {need}"),
            ));
        }
        let [_, ch, hgt, wid] = tiles.dims();
        let tiles = tiles.slice([0..need, 0..ch, 0..hgt, 0..wid]);
        let features = self.encode_tiles(tiles)?;
        let [n, per, hidden] = features.dims();
        let rows = n * per;
        // One table: text rows, then features, newline, separator; each position picks its row.
        let table = Tensor::cat(
            vec![
                text.reshape([ids.len(), hidden]),
                features.reshape([rows, hidden]),
                self.image_newline.val().reshape([1, hidden]),
                self.view_seperator.val().reshape([1, hidden]),
            ],
            0,
        );
        let t = ids.len();
        let mut image = layout.iter();
        let index: Vec<i64> = images_seq_mask
            .iter()
            .enumerate()
            .map(|(p, &m)| {
                if !m {
                    return p as i64;
                }
                match image.next().expect("counted above") {
                    ImageRow::Feature(i) => (t + i) as i64,
                    ImageRow::Newline => (t + rows) as i64,
                    ImageRow::Separator => (t + rows + 1) as i64,
                }
            })
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [t]), &device);
        Ok(table.select(0, index).reshape([1, t, hidden]))
    }

    /// Runs input embeddings through the language model after what `state` holds; returns the
    /// final-normed hidden states.
    pub fn forward(&self, x: Tensor<B, 3>, state: &mut DecodeState<B>) -> Result<Tensor<B, 3>> {
        self.language.forward(x, state)
    }

    /// Vocabulary logits of hidden states, in f32.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.language.logits(hidden)
    }
}
