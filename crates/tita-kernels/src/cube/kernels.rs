//! The `#[cube]` kernels. Arrays are contiguous buffers read as `Vector<F, N>` (N the load
//! width chosen at launch); every sum is f32 whatever F is.

use cubecl::prelude::*;

/// The [`crate::Epilogue`] as a compile-time choice of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EpilogueKind {
    None,
    Residual,
    SiluGateUp,
}

/// Sums `value` over the `lanes` units of this unit's group (`UNIT_POS_X` the lane,
/// `UNIT_POS_Y` the group): `plane_sum` when a group is one plane, else a tree in `shared`
/// (`lanes · groups` long, at `slot`'s block of it). Every unit of the cube must call it.
#[cube]
fn group_sum(
    value: f32,
    shared: &mut SharedMemory<f32>,
    #[comptime] lanes: u32,
    #[comptime] plane: bool,
) -> f32 {
    if plane {
        plane_sum(value)
    } else {
        let base = (UNIT_POS_Y * lanes) as usize;
        let lane = UNIT_POS_X as usize;
        shared[base + lane] = value;
        sync_cube();
        let mut active = lanes.runtime() as usize;
        while active > 1 {
            active /= 2;
            if lane < active {
                let other = shared[base + lane + active];
                shared[base + lane] += other;
            }
            sync_cube();
        }
        let total = shared[base];
        // The next call writes the same slots: wait until every unit has read this sum.
        sync_cube();
        total
    }
}

/// `out[r, n] = epilogue(Σ_k x[r, k] · w[n, k])` for the `rows` rows of x; one group of `lanes`
/// units per output n, `outputs_per_cube` groups per cube. The lanes stride over K in vectors,
/// so a group reads a weight row in consecutive `lanes · N`-element runs.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    residual: &Array<F>,
    out: &mut Array<F>,
    k_vectors: u32,
    n_out: u32,
    #[comptime] rows: u32,
    #[comptime] lanes: u32,
    #[comptime] outputs_per_cube: u32,
    #[comptime] epilogue: EpilogueKind,
    #[comptime] plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let gate_up = comptime!(epilogue == EpilogueKind::SiluGateUp);
    // Gate and up dot products for silu·up: two per row.
    let dots = comptime!(if gate_up { 2 * rows } else { rows });
    let n = CUBE_POS_X * outputs_per_cube + UNIT_POS_Y;
    let lane = UNIT_POS_X;

    let mut acc = Array::<Vector<f32, N>>::new(comptime!(dots as usize));
    #[unroll]
    for j in 0..dots {
        acc[j as usize] = Vector::new(0.0f32);
    }
    // Groups past the last output still take part in the reduction's barriers.
    if n < n_out {
        let w_row = (n * k_vectors) as usize;
        let steps = k_vectors.div_ceil(lanes);
        for step in 0..steps {
            let kv = step * lanes + lane;
            if kv < k_vectors {
                let wv = Vector::<f32, N>::cast_from(w[w_row + kv as usize]);
                let mut uv = Vector::<f32, N>::new(0.0f32);
                if gate_up {
                    uv = Vector::<f32, N>::cast_from(w[((n + n_out) * k_vectors + kv) as usize]);
                }
                #[unroll]
                for r in 0..rows {
                    let xv = Vector::<f32, N>::cast_from(x[(r * k_vectors + kv) as usize]);
                    acc[r as usize] += xv * wv;
                    if gate_up {
                        acc[(rows + r) as usize] += xv * uv;
                    }
                }
            }
        }
    }

    let mut shared = SharedMemory::<f32>::new(comptime!((lanes * outputs_per_cube) as usize));
    let mut sums = Array::<f32>::new(comptime!(dots as usize));
    #[unroll]
    for j in 0..dots {
        sums[j as usize] = group_sum(
            f32::cast_from(acc[j as usize].vector_sum()),
            &mut shared,
            lanes,
            plane,
        );
    }

    if lane == 0 && n < n_out {
        #[unroll]
        for r in 0..rows {
            let mut value = sums[r as usize];
            if gate_up {
                let up = sums[(rows + r) as usize];
                value = value / (1.0f32 + f32::exp(-value)) * up;
            }
            let at = (r * n_out + n) as usize;
            if comptime!(epilogue == EpilogueKind::Residual) {
                value += f32::cast_from(residual[at]);
            }
            out[at] = F::cast_from(value);
        }
    }
}

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight`, one cube (one group of `lanes` units)
/// per row; the mean of squares in f32 and the output rounded once.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    weight: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    h_vectors: u32,
    h: u32,
    eps: f32,
    #[comptime] lanes: u32,
    #[comptime] plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = (CUBE_POS_X * h_vectors) as usize;
    let lane = UNIT_POS_X;
    let steps = h_vectors.div_ceil(lanes);
    let mut squares = Vector::<f32, N>::new(0.0f32);
    for step in 0..steps {
        let i = step * lanes + lane;
        if i < h_vectors {
            let v = Vector::<f32, N>::cast_from(x[row + i as usize]);
            squares += v * v;
        }
    }
    let mut shared = SharedMemory::<f32>::new(comptime!(lanes as usize));
    let total = group_sum(
        f32::cast_from(squares.vector_sum()),
        &mut shared,
        lanes,
        plane,
    );
    let scale = Vector::<f32, N>::new(f32::recip(f32::sqrt(total / f32::cast_from(h) + eps)));
    for step in 0..steps {
        let i = step * lanes + lane;
        if i < h_vectors {
            let v = Vector::<f32, N>::cast_from(x[row + i as usize]);
            let g = Vector::<f32, N>::cast_from(weight[i as usize]);
            out[row + i as usize] = Vector::cast_from(v * scale * g);
        }
    }
}
