//! The bandwidth bound the GEMV microbenchmark measures against: a kernel that only reads a
//! buffer (widest loads, every byte once) and writes one f32 per unit, so that its time is
//! the device's read bandwidth and not a copy's read plus write.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{array_arg, contiguous, vector_size_for};
use crate::count_launch;

const UNITS_PER_CUBE: u32 = 256;

#[cube(launch)]
fn read_kernel<F: Float, N: Size>(
    input: &Array<Vector<F, N>>,
    partial: &mut Array<f32>,
    len: u32,
    #[define(F)] _dtype: StorageType,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let steps = len.div_ceil(stride);
    let mut acc = Vector::<f32, N>::new(0.0f32);
    for step in 0..steps {
        let i = step * stride + ABSOLUTE_POS_X;
        if i < len {
            acc += Vector::<f32, N>::cast_from(input[i as usize]);
        }
    }
    partial[ABSOLUTE_POS_X as usize] = f32::cast_from(acc.vector_sum());
}

/// Reads all of `t` once; returns the per-unit partial sums (so nothing is optimised away).
/// Eight cubes per SM (64 where the runtime does not say) keep enough loads in flight.
pub fn read_all<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = contiguous(t);
    let client = t.client.clone();
    let cubes = client
        .properties()
        .hardware
        .num_streaming_multiprocessors
        .map_or(64, |sms| sms * 8);
    let elems = t.meta.num_elements();
    let vector = vector_size_for(&client, t.dtype, elems);
    let units = (cubes * UNITS_PER_CUBE) as usize;
    let partial = empty_device_contiguous_dtype(
        client.clone(),
        t.device.clone(),
        Shape::new([units]),
        DType::F32,
    );
    count_launch();
    read_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_1d(UNITS_PER_CUBE),
        vector,
        array_arg(&t, vector),
        array_arg(&partial, 1),
        (elems / vector) as u32,
        t.dtype.into(),
    );
    partial
}
