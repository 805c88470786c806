//! The cubecl kernels and their launch on burn's `CubeBackend` (any cubecl runtime: CUDA on
//! GPUs, wgpu in CI).

pub mod bench;
mod kernels;

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::features::Plane;
use cubecl::prelude::*;

use crate::{count_launch, shared_reduction_forced, Epilogue, KernelBackend};
use kernels::{gemv_kernel, rms_norm_kernel, EpilogueKind};

/// Output rows of a GEMV that one cube computes (one group of `lanes` units each).
const GEMV_OUTPUTS_PER_CUBE: u32 = 4;
/// Units that share one RMSNorm row.
const NORM_UNITS: u32 = 256;

/// The widest vector (in elements) the runtime loads for `dtype` that divides `len`: K not a
/// multiple of the widest load falls back to narrower ones (down to scalars) rather than
/// reading past a row.
pub fn vector_size_for<R: Runtime>(client: &ComputeClient<R>, dtype: DType, len: usize) -> usize {
    client
        .io_optimized_vector_sizes(dtype.size())
        .find(|&v| len.is_multiple_of(v))
        .unwrap_or(1)
}

/// How the units of a row group sum their partial results: `plane_sum` across one plane when
/// the runtime has plane operations and a fixed plane size (CUDA: 32), else a tree through
/// shared memory over `lanes` units (lavapipe's plane size is not fixed, nor 32).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReduceShape {
    pub lanes: u32,
    pub plane: bool,
}

pub(crate) fn reduce_shape<R: Runtime>(
    client: &ComputeClient<R>,
    fallback_lanes: u32,
) -> ReduceShape {
    let props = client.properties();
    let hw = &props.hardware;
    let fixed = hw.plane_size_min == hw.plane_size_max && hw.plane_size_max.is_power_of_two();
    let planes = props.features.plane.contains(Plane::Ops) && fixed && hw.plane_size_max >= 8;
    if planes && !shared_reduction_forced() {
        ReduceShape {
            lanes: hw.plane_size_max,
            plane: true,
        }
    } else {
        ReduceShape {
            lanes: fallback_lanes,
            plane: false,
        }
    }
}

fn contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.is_contiguous() {
        t
    } else {
        count_launch();
        into_contiguous(t)
    }
}

/// `t`'s buffer as an array of `vector` wide elements (`t` contiguous).
fn array_arg<R: CubeRuntime>(t: &CubeTensor<R>, vector: usize) -> ArrayArg<R> {
    let len = t.meta.num_elements() / vector;
    // SAFETY: `t` is contiguous and holds `len · vector` elements of its dtype.
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> KernelBackend
    for CubeBackend<R, F, I, BT>
{
    fn gemv(
        x: CubeTensor<R>,
        w: CubeTensor<R>,
        epilogue: Epilogue<CubeTensor<R>>,
    ) -> CubeTensor<R> {
        let x = contiguous(x);
        let w = contiguous(w);
        let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
        let rows = w.meta.shape()[0];
        let (kind, n, residual) = match epilogue {
            Epilogue::None => (EpilogueKind::None, rows, None),
            Epilogue::Residual(r) => (EpilogueKind::Residual, rows, Some(contiguous(r))),
            Epilogue::SiluGateUp => (EpilogueKind::SiluGateUp, rows / 2, None),
        };
        let client = x.client.clone();
        let dtype = x.dtype;
        let vector = vector_size_for(&client, dtype, k);
        let reduce = reduce_shape(&client, 32);
        let out = empty_device_contiguous_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([m, n]),
            dtype,
        );
        // Without a residual the kernel's residual binding is x read as scalars and never
        // read: a placeholder, since a launch takes a fixed set of bindings.
        let residual_arg = match &residual {
            Some(r) => array_arg(r, 1),
            None => array_arg(&x, 1),
        };
        let cubes = (n as u32).div_ceil(GEMV_OUTPUTS_PER_CUBE);
        count_launch();
        gemv_kernel::launch::<R>(
            &client,
            CubeCount::Static(cubes, 1, 1),
            CubeDim::new_2d(reduce.lanes, GEMV_OUTPUTS_PER_CUBE),
            vector,
            array_arg(&x, vector),
            array_arg(&w, vector),
            residual_arg,
            array_arg(&out, 1),
            (k / vector) as u32,
            n as u32,
            m as u32,
            reduce.lanes,
            GEMV_OUTPUTS_PER_CUBE,
            kind,
            reduce.plane,
            dtype.into(),
        );
        out
    }

    fn rms_norm(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
        let x = contiguous(x);
        let weight = contiguous(weight);
        let [m, h] = [x.meta.shape()[0], x.meta.shape()[1]];
        let client = x.client.clone();
        let dtype = x.dtype;
        let vector = vector_size_for(&client, dtype, h);
        let reduce = reduce_shape(&client, NORM_UNITS);
        // One plane per row where planes reduce; else a cube of NORM_UNITS.
        let out = empty_device_contiguous_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([m, h]),
            dtype,
        );
        count_launch();
        rms_norm_kernel::launch::<R>(
            &client,
            CubeCount::Static(m as u32, 1, 1),
            CubeDim::new_1d(reduce.lanes),
            vector,
            array_arg(&x, vector),
            array_arg(&weight, vector),
            array_arg(&out, vector),
            (h / vector) as u32,
            h as u32,
            eps as f32,
            reduce.lanes,
            reduce.plane,
            dtype.into(),
        );
        out
    }

    fn describe(device: &R::Device) -> String {
        let client = R::client(device);
        let hw = &client.properties().hardware;
        let reduce = reduce_shape(&client, NORM_UNITS);
        format!(
            "{}; planes of {}..{} units{}; loads of {} bits; {} SMs",
            if reduce.plane {
                "plane_sum reduction"
            } else {
                "shared-memory reduction"
            },
            hw.plane_size_min,
            hw.plane_size_max,
            if client.properties().features.plane.contains(Plane::Ops) {
                " with plane ops"
            } else {
                ", no plane ops"
            },
            hw.load_width,
            hw.num_streaming_multiprocessors
                .map_or("unknown".to_string(), |s| s.to_string()),
        )
    }
}
