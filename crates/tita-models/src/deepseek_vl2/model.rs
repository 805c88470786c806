//! DeepSeek-VL2's vision half (`DeepseekVLV2ForCausalLM` less its language model): tiles through
//! the SigLIP tower and the projector, the image rows laid out with the `image_newline` and
//! `view_seperator` (sic) parameters, one run of rows per image; [`crate::Vlm`] writes them into
//! the token embeddings at the image positions (the authors' `images_seq_mask`) and runs the
//! language model ([`super::DeepseekV2`]).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use tita_core::image::PixelValues;
use tita_core::{Error, Result};

use crate::deepseek_vl2::config::{DeepseekVl2Config, GlobalViewPos, TileTag};
use crate::deepseek_vl2::projector::Projector;
use crate::deepseek_vl2::vision::SiglipVit;
use crate::scope::Scope;
use crate::vlm::ImageFeatures;
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

/// The vision half: tower, projector and the two layout embeddings.
#[derive(Module, Debug)]
pub struct DeepseekVision<B: Backend> {
    pub vision: SiglipVit<B>,
    pub projector: Projector<B>,
    pub image_newline: Param<Tensor<B, 1>>,
    pub view_seperator: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub config: DeepseekVl2Config,
}

impl<B: Backend> DeepseekVision<B> {
    /// Builds the vision half from a checkpoint (`vision.*`, `projector.*`, `image_newline`,
    /// `view_seperator`). Layouts the authors' model does not build or this port does not
    /// cover are refused by name.
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
        Ok(DeepseekVision {
            vision,
            projector,
            image_newline: root.param("image_newline", [n], device)?,
            view_seperator: root.param("view_seperator", [n], device)?,
            config: c.clone(),
        })
    }

    /// Image embeddings of `tiles` `[n, 3, size, size]`: `[n, side², hidden]`.
    pub fn encode_tiles(&self, tiles: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        self.projector.forward(self.vision.forward(tiles)?)
    }

    /// Images in the processor's band layout as the tower takes them: every image's global
    /// view and local tiles `[Σ tiles, 3, size, size]`, and each image's `[across, down]`.
    pub fn pixels(
        &self,
        images: &[&PixelValues],
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Tensor<B, 4>, Vec<[usize; 2]>)> {
        let s = self.config.vision.image_size;
        let mut data = Vec::new();
        let mut crops = Vec::with_capacity(images.len());
        for img in images {
            let [across, down] = self.config.tiling_of(img)?;
            let w = img.width;
            let plane = img.height * w;
            // The band's top row of tiles holds the global view in its first tile; the local
            // canvas below is cut row by row.
            let mut tile = |ty: usize, tx: usize| {
                for c in 0..3 {
                    for y in 0..s {
                        let at = c * plane + (ty * s + y) * w + tx * s;
                        data.extend_from_slice(&img.data[at..at + s]);
                    }
                }
            };
            tile(0, 0);
            for ty in 1..=down {
                for tx in 0..across {
                    tile(ty, tx);
                }
            }
            crops.push([across, down]);
        }
        let n = data.len() / (3 * s * s);
        Ok((
            Tensor::from_data(TensorData::new(data, [n, 3, s, s]), (device, dtype)),
            crops,
        ))
    }

    /// The image-token rows of every image, laid out as the prompt holds them (global view,
    /// separator, local grid, newlines): `crops[i]`'s `config.image_tokens` rows per image.
    pub fn encode(&self, tiles: Tensor<B, 4>, crops: &[[usize; 2]]) -> Result<ImageFeatures<B>> {
        let need = tiles_used(crops);
        let have = tiles.dims()[0];
        if crops.iter().any(|&[a, d]| a == 0 || d == 0) || have != need {
            return Err(Error::argument(
                "pixels",
                format!("{have} tiles for images tiled {crops:?}, which need {need}"),
            ));
        }
        let features = self.encode_tiles(tiles)?;
        let [n, per, hidden] = features.dims();
        let rows = n * per;
        // One table: features, newline, separator; each image-token row picks its row.
        let table = Tensor::cat(
            vec![
                features.reshape([rows, hidden]),
                self.image_newline.val().reshape([1, hidden]),
                self.view_seperator.val().reshape([1, hidden]),
            ],
            0,
        );
        let side = self.config.tokens_per_side();
        let mut index = Vec::new();
        let mut counts = Vec::with_capacity(crops.len());
        let mut first_tile = 0;
        for &crop in crops {
            let layout = image_layout(&[crop], side);
            counts.push(layout.len());
            index.extend(layout.iter().map(|r| match r {
                ImageRow::Feature(i) => (first_tile * per + i) as i64,
                ImageRow::Newline => rows as i64,
                ImageRow::Separator => rows as i64 + 1,
            }));
            first_tile += tiles_used(&[crop]);
        }
        let len = index.len();
        let device = table.device();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [len]), &device);
        Ok(ImageFeatures {
            rows: table.select(0, index),
            counts,
            grids: Vec::new(),
        })
    }
}
