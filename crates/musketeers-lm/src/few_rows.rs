//! Products of a few rows of activations with a weight matrix, on the CPU backend.
//!
//! Decoding multiplies one row per sequence (1 to 32 rows) by every weight matrix of the
//! model. `gemm`, which Burn's CPU backend calls, is built for large products: below its
//! threading threshold (`m·n·k` < 192³, every projection of a batch-1 or batch-8 decode step)
//! it runs on one core, and above it packs the weight matrix on every call. Measured on a
//! 2-core EPYC (AVX-512; `cargo run --release -p musketeers-lm --example few_rows`): 8 rows
//! by SmolLM2's 576 x 1536 projection at 42 GFLOP/s, 32 rows by its tied 49,152-token head at
//! 84, where the same machine multiplies large matrices at 200.
//!
//! Here the weight is read where it lies, once per call, by a register-tiled AVX2/FMA kernel
//! split over column panels on rayon's threads: `6 x 16` tiles of a row-major weight (Burn's
//! `Linear` layout, `[in, out]`) and `3 x 4` dot-product tiles of a column-major one (a tied
//! head: the embedding table `[vocab, hidden]` read transposed); up to 8 rows by a row-major
//! weight instead stream chunks of whole weight rows, one chunk per task, since so few rows
//! are bound by memory, not arithmetic. Weights may be f32 or f16
//! (converted to f32 as they are loaded: f16 storage then halves the bytes streamed while
//! the arithmetic stays f32). Each output element is summed in a fixed order set by the
//! shapes alone (by one thread for the tiles; chunk by chunk, in chunk order, for streamed
//! rows), so results do not depend on the thread count. No crate does this: `gemm`'s kernels are
//! private, and `matrixmultiply` has no f16 weights and no threading below its own
//! thresholds.
//!
//! Only the backend's own tensors take this path (not autodiff's: a product that needs a
//! gradient goes to Burn), on x86-64 CPUs with AVX2 and FMA (F16C for f16 weights); any
//! other input returns `None` and the caller uses Burn's matmul.

// The workspace denies unsafe code; this module is the exception: SIMD intrinsics and
// shared raw pointers are its whole point. Each unsafe call says why it holds.
#![allow(unsafe_code)]

use crate::flex::{as_flex, float_tensor};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// The most rows this path takes: a batch-32 decode step with room to spare. With the example
/// above, at 48 rows this kernel was still even with `gemm` or ahead on SmolLM2's and
/// Qwen2.5-0.5B's projections but Qwen's 896 x 4864 (0.82-1.11x in three runs); at prefill
/// sizes `gemm`'s packing pays for itself (1,024 rows in 48-row calls: 84-154 GFLOP/s
/// against 119-184).
pub const MAX_ROWS: usize = 48;

/// `x · w` for `x` `[m, k]` f32 with `m <= MAX_ROWS` and `w` `[k, n]` f32 or f16, as an f32
/// tensor, when both are the CPU backend's tensors and the CPU can run the kernel; `None`
/// otherwise.
#[cfg(not(target_arch = "x86_64"))]
pub fn matmul<B: Backend>(_x: &Tensor<B, 2>, _w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    None
}

/// `x · w` for `x` `[m, k]` f32 with `m <= MAX_ROWS` and `w` `[k, n]` f32 or f16, as an f32
/// tensor, when both are the CPU backend's tensors and the CPU can run the kernel; `None`
/// otherwise.
#[cfg(target_arch = "x86_64")]
pub fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([m, k], [k2, n]) = (x.dims(), w.dims());
    if m == 0
        || m > MAX_ROWS
        || k == 0
        || k != k2
        || n == 0
        || x.dtype() != DType::F32
        || !available()
    {
        return None;
    }
    let x_prim = x.clone().into_primitive().tensor();
    let w_prim = w.clone().into_primitive().tensor();
    let xf = as_flex(&x_prim)?;
    let wf = as_flex(&w_prim)?;
    let a = Matrix::of(xf, k)?;
    let weight = Matrix::of(wf, n)?;
    // One row too: `gemm` runs a single row on one thread, and one core does not draw the
    // memory bandwidth two do (batch-1 decode on an AVX2 EPYC: Qwen2.5-0.5B 7.1-7.4 tokens/s
    // through `gemm`, 10.2-10.8 through this module's column tiles, 12.2-13.6 streamed by
    // chunks of rows; f16 weights 12.4-12.6 tiled, 16.5-17.9 streamed).
    if a.col_stride != 1 {
        return None;
    }
    let a_values = &xf.storage::<f32>()[a.offset..];
    let mut out = vec![0f32; m * n];
    match wf.dtype() {
        DType::F32 => product(
            a_values,
            a.row_stride,
            m,
            k,
            &wf.storage::<f32>()[weight.offset..],
            &weight,
            n,
            &mut out,
        ),
        DType::F16 if half_available() => product(
            a_values,
            a.row_stride,
            m,
            k,
            &wf.storage::<half::f16>()[weight.offset..],
            &weight,
            n,
            &mut out,
        ),
        _ => return None,
    }?;
    let result = FlexTensor::from_data(TensorData::new(out, [m, n]));
    float_tensor(result)
}

/// Where a 2-D tensor's elements lie in its storage.
#[cfg(target_arch = "x86_64")]
struct Matrix {
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl Matrix {
    /// The layout of `t` if it is a 2-D matrix with positive strides and `cols` columns that
    /// is row-major (`col_stride == 1`) or column-major (`row_stride == 1`).
    fn of(t: &FlexTensor, cols: usize) -> Option<Self> {
        let layout = t.layout();
        let strides = layout.strides();
        if strides.len() != 2 || strides.iter().any(|&s| s <= 0) {
            return None;
        }
        let (row_stride, col_stride) = (strides[0] as usize, strides[1] as usize);
        (col_stride == 1 || row_stride == 1 || cols == 1).then_some(Self {
            offset: layout.start_offset(),
            row_stride,
            col_stride,
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn half_available() -> bool {
    std::arch::is_x86_feature_detected!("f16c")
}

/// `out[m, n] = a[m, k] · w`, `a` row-major with `lda`, `w` laid out as `layout` says.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn product<W: kernel::Weight>(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    w: &[W],
    layout: &Matrix,
    n: usize,
    out: &mut [f32],
) -> Option<()> {
    // Every element the kernels read must lie in the slices (they read through raw pointers).
    let last_a = (m - 1) * lda + k;
    let last_w = (k - 1) * layout.row_stride + (n - 1) * layout.col_stride + 1;
    if a.len() < last_a || w.len() < last_w {
        return None;
    }
    // SAFETY: `available()` checked AVX2 and FMA (and F16C for f16 weights) and the bounds
    // above cover every read; the tasks write disjoint column ranges of `out`.
    unsafe {
        if layout.col_stride == 1 {
            kernel::row_major(a, lda, m, k, w, layout.row_stride, n, out);
        } else {
            kernel::column_major(a, lda, m, k, w, layout.col_stride, n, out);
        }
    }
    Some(())
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// A weight element type the kernels load eight at a time as f32.
    pub(super) trait Weight: Copy + Send + Sync + 'static {
        /// Eight consecutive weights from `p`, as f32.
        ///
        /// # Safety
        /// `p..p + 8` must be readable, and the CPU must have AVX (F16C for f16).
        unsafe fn load8(p: *const Self) -> __m256;
        fn to_f32(self) -> f32;
    }

    impl Weight for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        fn to_f32(self) -> f32 {
            self
        }
    }

    impl Weight for half::f16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        fn to_f32(self) -> f32 {
            half::f16::to_f32(self)
        }
    }

    /// A raw pointer the tasks share; each writes its own columns.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the tasks write disjoint elements.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    impl Out {
        /// The pointer; a method, so that a closure captures the whole `Out` (which is `Send`)
        /// rather than the bare pointer field.
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    /// The fewest multiply-adds worth a rayon task of their own (column tasks and row chunks).
    const MIN_TASK: usize = 1 << 17;

    /// Columns per task: enough tasks for every thread to stay busy as tasks finish unevenly,
    /// each a whole number of `unit`-column tiles and at least [`MIN_TASK`] multiply-adds (a
    /// rayon task costs microseconds: a batch-1 product of SmolLM2's 576 x 192 projection ran
    /// 2.8x slower split in two than on one thread).
    fn task_columns(m: usize, k: usize, n: usize, unit: usize) -> usize {
        let by_work = (m * k * n / MIN_TASK).max(1);
        let tasks = (4 * rayon::current_num_threads().max(1)).min(by_work);
        n.div_ceil(tasks).div_ceil(unit).max(1) * unit
    }

    /// Rows per tile and columns per tile of a row-major weight.
    const MR: usize = 6;
    const NR: usize = 16;
    /// Rows of the weight per pass over the tiles: a `KC x 16` slice of it (16 KiB in f32)
    /// stays in L1 while every row tile reads it.
    const KC: usize = 256;

    /// # Safety
    /// AVX2, FMA (F16C for f16) present; `a` holds `m` rows of `k` at stride `lda`, `w` holds
    /// `k` rows of `n` at stride `ldw`, `out` holds `m x n`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn row_major<W: Weight>(
        a: &[f32],
        lda: usize,
        m: usize,
        k: usize,
        w: &[W],
        ldw: usize,
        n: usize,
        out: &mut [f32],
    ) {
        if m <= STREAM_MAX_ROWS && n <= STREAM_MAX_COLUMNS {
            // SAFETY: as this function's.
            unsafe { rows_streamed(a, lda, m, k, w, ldw, n, out) };
            return;
        }
        let unit = [96, 48].get(m - 1).copied().unwrap_or(NR);
        let (a, w) = (a.as_ptr() as usize, w.as_ptr() as usize);
        over_column_tasks(m, k, n, unit, out, |start, end, c| {
            let (a, w) = (a as *const f32, w as *const W);
            // SAFETY: as the function's; columns `start..end` are this task's alone.
            unsafe { row_major_columns(a, lda, m, k, w, ldw, n, start, end, c) };
        });
    }

    /// The most rows streamed by chunks of weight rows ([`rows_streamed`]); more go to the
    /// register tiles, whose arithmetic then bounds them. Decode tokens/s with the crossover
    /// at 1 and at 8, the generation bench on a 2-core AVX2 EPYC, two runs each: SmolLM2-135M's
    /// shape at batch 2 / 4 / 8 40 / 62 / 109 against 52-55 / 92-97 / 134-154, at 16 and 32
    /// 174-178 / 244-245 against 156-169 / 113-120 streamed; Qwen2.5-0.5B at batch 4 / 8 /
    /// 12 23-24 / 41-42 / 55 against 31-32 / 46 / 56-57.
    const STREAM_MAX_ROWS: usize = 8;
    /// The widest weight a few rows are streamed through: the partial sums of every chunk
    /// ([`rows_streamed`]) stay small beside the weight (8 x 16,384 f32 is 512 KiB per row).
    const STREAM_MAX_COLUMNS: usize = 1 << 14;
    /// At most this many chunks of weight rows: a fixed number, so that the sums do not depend
    /// on the thread count.
    const STREAM_CHUNKS: usize = 8;
    /// Partial sums a column block keeps in L1 while it walks its chunk's weight rows.
    const STREAM_BLOCK_SUMS: usize = 4096;

    /// `out[m, n] = a[m, k] · w` by chunks of whole weight rows, each chunk's partial sums
    /// kept in memory and the chunks added in order at the end.
    ///
    /// A few rows are bound by how fast the weight streams from memory. Split by columns
    /// (the tiled path), each task reads a few cache lines of every weight row, thousands of
    /// bytes apart, and a core waits on each new line; split by rows, each task reads one
    /// contiguous block of the matrix front to back, which the hardware prefetchers follow
    /// at full bandwidth.
    ///
    /// # Safety
    /// As [`row_major`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_streamed<W: Weight>(
        a: &[f32],
        lda: usize,
        m: usize,
        k: usize,
        w: &[W],
        ldw: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let chunks = (m * k * n / MIN_TASK).clamp(1, STREAM_CHUNKS);
        let rows_per_chunk = k.div_ceil(chunks).next_multiple_of(4);
        let chunks = k.div_ceil(rows_per_chunk);
        let (a, w) = (a.as_ptr() as usize, w.as_ptr() as usize);
        let partial_sums = |chunk: usize, sums: &mut [f32]| {
            let first = chunk * rows_per_chunk;
            let rows = rows_per_chunk.min(k - first);
            let (a, w) = (a as *const f32, w as *const W);
            // SAFETY: columns `first..first + rows` of `a` and rows of `w` lie in the
            // caller's slices.
            unsafe { stream_rows(a.add(first), lda, m, w.add(first * ldw), ldw, rows, n, sums) };
        };
        if chunks == 1 {
            partial_sums(0, out);
            return;
        }
        let mut partial = vec![0f32; chunks * m * n];
        partial
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(chunk, sums)| partial_sums(chunk, sums));
        out.copy_from_slice(&partial[..m * n]);
        for sums in partial[m * n..].chunks_exact(m * n) {
            for (o, s) in out.iter_mut().zip(sums) {
                *o += s;
            }
        }
    }

    /// `sums[m, n] = a[m, depth] · w[depth x n]`, four weight rows at a time, in column
    /// blocks whose sums stay in L1.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn stream_rows<W: Weight>(
        a: *const f32,
        lda: usize,
        m: usize,
        w: *const W,
        ldw: usize,
        depth: usize,
        n: usize,
        sums: &mut [f32],
    ) {
        sums.fill(0.0);
        let s = sums.as_mut_ptr();
        let block = (STREAM_BLOCK_SUMS / m).next_multiple_of(8);
        for j0 in (0..n).step_by(block) {
            let j1 = (j0 + block).min(n);
            let vector_end = j0 + (j1 - j0) / 8 * 8;
            let mut p = 0;
            unsafe {
                while p + 4 <= depth {
                    let row = [0, 1, 2, 3].map(|r| w.add((p + r) * ldw));
                    for j in (j0..vector_end).step_by(8) {
                        let wv = row.map(|row| W::load8(row.add(j)));
                        for i in 0..m {
                            let (a, s) = (a.add(i * lda + p), s.add(i * n + j));
                            let mut acc = _mm256_loadu_ps(s);
                            for (r, wv) in wv.iter().enumerate() {
                                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*a.add(r)), *wv, acc);
                            }
                            _mm256_storeu_ps(s, acc);
                        }
                    }
                    for j in vector_end..j1 {
                        for i in 0..m {
                            for (r, row) in row.iter().enumerate() {
                                *s.add(i * n + j) +=
                                    *a.add(i * lda + p + r) * (*row.add(j)).to_f32();
                            }
                        }
                    }
                    p += 4;
                }
                for p in p..depth {
                    let row = w.add(p * ldw);
                    for i in 0..m {
                        let scale = _mm256_broadcast_ss(&*a.add(i * lda + p));
                        let s = s.add(i * n);
                        for j in (j0..vector_end).step_by(8) {
                            let acc = _mm256_fmadd_ps(
                                scale,
                                W::load8(row.add(j)),
                                _mm256_loadu_ps(s.add(j)),
                            );
                            _mm256_storeu_ps(s.add(j), acc);
                        }
                        for j in vector_end..j1 {
                            *s.add(j) += *a.add(i * lda + p) * (*row.add(j)).to_f32();
                        }
                    }
                }
            }
        }
    }

    /// Runs `columns(start, end, out)` for column ranges of whole `unit`-column tiles
    /// ([`task_columns`]) on rayon's pool.
    fn over_column_tasks(
        m: usize,
        k: usize,
        n: usize,
        unit: usize,
        out: &mut [f32],
        columns: impl Fn(usize, usize, *mut f32) + Sync,
    ) {
        let cols = task_columns(m, k, n, unit);
        let c = Out(out.as_mut_ptr());
        (0..n.div_ceil(cols)).into_par_iter().for_each(|task| {
            columns(task * cols, ((task + 1) * cols).min(n), c.get());
        });
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_major_columns<W: Weight>(
        a: *const f32,
        lda: usize,
        m: usize,
        k: usize,
        w: *const W,
        ldw: usize,
        n: usize,
        start: usize,
        end: usize,
        c: *mut f32,
    ) {
        // One or two rows: panels of 96 or 48 columns, twelve sums in flight, and each weight
        // row read as six or three whole cache lines.
        let (wide, width) = match m {
            1 => (true, 96),
            2 => (true, 48),
            _ => (false, NR),
        };
        let mut start = start;
        if wide {
            let wide_end = start + (end - start) / width * width;
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for j in (start..wide_end).step_by(width) {
                    let (a, w, c) = unsafe { (a.add(k0), w.add(k0 * ldw + j), c.add(j)) };
                    unsafe {
                        if m == 1 {
                            tile::<W, 1, 12, 1>(a, lda, w, ldw, kc, c, n, k0 == 0);
                        } else {
                            tile::<W, 2, 6, 1>(a, lda, w, ldw, kc, c, n, k0 == 0);
                        }
                    }
                }
            }
            start = wide_end;
        }
        let full_end = start + (end - start) / NR * NR;
        // Weight rows in blocks, each block's panels in order: the task then walks its part of
        // the weight nearly row by row (a walk down whole panels of a row-major matrix touches
        // a new page every row, and the TLB misses).
        for k0 in (0..k).step_by(KC) {
            for j in (start..full_end).step_by(NR) {
                let kc = KC.min(k - k0);
                let first = k0 == 0;
                let mut i = 0;
                unsafe {
                    while i + MR <= m {
                        tile::<W, MR, 2, 1>(
                            a.add(i * lda + k0),
                            lda,
                            w.add(k0 * ldw + j),
                            ldw,
                            kc,
                            c.add(i * n + j),
                            n,
                            first,
                        );
                        i += MR;
                    }
                    let (a, w, c) = (a.add(i * lda + k0), w.add(k0 * ldw + j), c.add(i * n + j));
                    match m - i {
                        0 => {}
                        1 => tile::<W, 1, 2, 4>(a, lda, w, ldw, kc, c, n, first),
                        2 => tile::<W, 2, 2, 2>(a, lda, w, ldw, kc, c, n, first),
                        3 => tile::<W, 3, 2, 2>(a, lda, w, ldw, kc, c, n, first),
                        4 => tile::<W, 4, 2, 1>(a, lda, w, ldw, kc, c, n, first),
                        _ => tile::<W, 5, 2, 1>(a, lda, w, ldw, kc, c, n, first),
                    }
                }
            }
        }
        // The last few columns, one element at a time.
        for i in 0..m {
            for j in full_end..end {
                let mut sum = 0f32;
                for p in 0..k {
                    unsafe { sum += *a.add(i * lda + p) * (*w.add(p * ldw + j)).to_f32() };
                }
                unsafe { *c.add(i * n + j) = sum };
            }
        }
    }

    /// `c[R x 8NV] (+)= a[R x kc] · w[kc x 8NV]`. `S` sets of `R x NV` accumulators of 8 lanes
    /// take turns along `k`, so that a tile of few rows still has enough independent sums to
    /// keep both FMA units busy (one sum waits four cycles for its previous FMA).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<W: Weight, const R: usize, const NV: usize, const S: usize>(
        a: *const f32,
        lda: usize,
        w: *const W,
        ldw: usize,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        first: bool,
    ) {
        unsafe {
            let mut acc = [[[_mm256_setzero_ps(); NV]; R]; S];
            let step = |set: &mut [[__m256; NV]; R], p: usize| {
                let mut wv = [_mm256_setzero_ps(); NV];
                for (v, x) in wv.iter_mut().enumerate() {
                    *x = W::load8(w.add(p * ldw + 8 * v));
                }
                for (i, row) in set.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*a.add(i * lda + p));
                    for (acc, x) in row.iter_mut().zip(&wv) {
                        *acc = _mm256_fmadd_ps(ai, *x, *acc);
                    }
                }
            };
            let full = kc / S * S;
            for p0 in (0..full).step_by(S) {
                // The weight rows a few steps ahead lie in other pages, which the hardware
                // prefetcher does not follow.
                // `wrapping_add`: near the end the address lies past the weight, which a
                // prefetch may name (it never faults) but `add` may not.
                let ahead = w.wrapping_add((p0 + PREFETCH) * ldw).cast::<i8>();
                for line in (0..NV * 8 * std::mem::size_of::<W>()).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                }
                for (s, set) in acc.iter_mut().enumerate() {
                    step(set, p0 + s);
                }
            }
            for p in full..kc {
                step(&mut acc[0], p);
            }
            for i in 0..R {
                for v in 0..NV {
                    let mut sum = acc[0][i][v];
                    for set in &acc[1..] {
                        sum = _mm256_add_ps(sum, set[i][v]);
                    }
                    let c = c.add(i * ldc + 8 * v);
                    if !first {
                        sum = _mm256_add_ps(_mm256_loadu_ps(c), sum);
                    }
                    _mm256_storeu_ps(c, sum);
                }
            }
        }
    }

    /// How many weight rows ahead [`tile`] prefetches.
    const PREFETCH: usize = 64;

    /// Rows and columns per dot-product tile of a column-major weight: 12 accumulators, three
    /// rows of `a` held, one weight column loaded at a time (16 registers).
    const DR: usize = 3;
    const DC: usize = 4;

    /// # Safety
    /// As [`row_major`], with column `j` of `w` at `w[j * ldw..j * ldw + k]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn column_major<W: Weight>(
        a: &[f32],
        lda: usize,
        m: usize,
        k: usize,
        w: &[W],
        ldw: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let (a, w) = (a.as_ptr() as usize, w.as_ptr() as usize);
        over_column_tasks(m, k, n, DC, out, |start, end, c| {
            let (a, w) = (a as *const f32, w as *const W);
            // SAFETY: as the function's; columns `start..end` are this task's alone.
            unsafe { column_major_columns(a, lda, m, k, w, ldw, n, start, end, c) };
        });
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn column_major_columns<W: Weight>(
        a: *const f32,
        lda: usize,
        m: usize,
        k: usize,
        w: *const W,
        ldw: usize,
        n: usize,
        start: usize,
        end: usize,
        c: *mut f32,
    ) {
        let mut j = start;
        while j < end {
            let cols = DC.min(end - j);
            let mut i = 0;
            while i < m {
                let rows = DR.min(m - i);
                unsafe {
                    let (a, w, c) = (a.add(i * lda), w.add(j * ldw), c.add(i * n + j));
                    match (rows, cols) {
                        (3, 4) => dots::<W, 3, 4>(a, lda, w, ldw, k, c, n),
                        (2, 4) => dots::<W, 2, 4>(a, lda, w, ldw, k, c, n),
                        (1, 4) => dots::<W, 1, 4>(a, lda, w, ldw, k, c, n),
                        (3, _) => dots::<W, 3, 1>(a, lda, w, ldw, k, c, n),
                        (2, _) => dots::<W, 2, 1>(a, lda, w, ldw, k, c, n),
                        _ => dots::<W, 1, 1>(a, lda, w, ldw, k, c, n),
                    }
                }
                i += rows;
            }
            // A partial group of columns went one column at a time above; finish it.
            let done = if cols == DC { DC } else { 1 };
            j += done;
        }
    }

    /// `c[R x C] = a[R x k] · w[k x C]` as dot products along `k`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn dots<W: Weight, const R: usize, const C: usize>(
        a: *const f32,
        lda: usize,
        w: *const W,
        ldw: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let full = k / 8 * 8;
            for p in (0..full).step_by(8) {
                let mut rows = [_mm256_setzero_ps(); R];
                for (i, row) in rows.iter_mut().enumerate() {
                    *row = _mm256_loadu_ps(a.add(i * lda + p));
                }
                for col in 0..C {
                    let wv = W::load8(w.add(col * ldw + p));
                    for (sums, row) in acc.iter_mut().zip(&rows) {
                        sums[col] = _mm256_fmadd_ps(*row, wv, sums[col]);
                    }
                }
            }
            for (i, sums) in acc.iter().enumerate() {
                for (col, lanes) in sums.iter().enumerate() {
                    let mut sum = horizontal_sum(*lanes);
                    for p in full..k {
                        sum += *a.add(i * lda + p) * (*w.add(col * ldw + p)).to_f32();
                    }
                    *c.add(i * ldc + col) = sum;
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        unsafe {
            let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
        }
    }
}
