//! The few-row product against Burn's matmul: every tile shape and remainder of rows,
//! columns and depth, both weight layouts, f32 and f16 weights.

use burn::tensor::{DType, Distribution, Tensor};
use burn_flex::Flex;
use musketeers_lm::few_rows;

type B = Flex;

/// The largest difference from Burn's product, relative to the largest product element; and
/// whether the few-row path took the product at all.
fn compare(rows: usize, k: usize, n: usize, transposed: bool, dtype: DType) -> Option<f32> {
    let device = Default::default();
    let x = Tensor::<B, 2>::random([rows, k], Distribution::Uniform(-1.0, 1.0), &device);
    let w = if transposed {
        Tensor::<B, 2>::random([n, k], Distribution::Uniform(-1.0, 1.0), &device)
            .cast(dtype)
            .transpose()
    } else {
        Tensor::<B, 2>::random([k, n], Distribution::Uniform(-1.0, 1.0), &device).cast(dtype)
    };
    let ours = few_rows::matmul(&x, &w)?;
    assert_eq!(ours.dims(), [rows, n]);
    assert_eq!(ours.dtype(), DType::F32);
    let reference = x.matmul(w.cast(DType::F32));
    let scale: f32 = reference.clone().abs().max().into_scalar();
    let diff: f32 = (ours - reference).abs().max().into_scalar();
    Some(diff / scale.max(1e-6))
}

fn is_x86_with_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn few_row_products_equal_burns_for_every_tile_and_remainder() {
    if !is_x86_with_fma() {
        // The path declines every product without the instructions; nothing to compare.
        let x = Tensor::<B, 2>::ones([2, 8], &Default::default());
        assert!(few_rows::matmul(&x, &x.clone().transpose()).is_none());
        return;
    }
    let mut checked = 0;
    // Rows: streamed (up to 8; one and two by a weight wider than streaming takes go to wide
    // panels), full 6-row tiles and every remainder, the limit.
    // Columns: whole panels, a partial panel and a scalar tail. Depth: below, at and past
    // one 256-row block, and not a multiple of 8 (the dot-product tail); up to 8 rows split
    // into chunks of weight rows (1101 x 301: two to eight chunks, the last ending in a lone
    // row), and several column blocks of partial sums with a tail (70 x 4133).
    for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 32, few_rows::MAX_ROWS] {
        for (k, n) in [
            (8, 16),
            (37, 21),
            (64, 96),
            (300, 200),
            (513, 97),
            (1101, 301),
            (70, 4133),
            (9, 16_500),
        ] {
            for transposed in [false, true] {
                for dtype in [DType::F32, DType::F16] {
                    let taken = compare(rows, k, n, transposed, dtype);
                    let relative = taken.unwrap_or_else(|| {
                        panic!("{rows} x {k} x {n} (transposed {transposed}, {dtype:?}) declined")
                    });
                    assert!(
                        relative < 1e-5,
                        "{rows} x {k} x {n} (transposed {transposed}, {dtype:?}): relative \
                         difference {relative}"
                    );
                    checked += 1;
                }
            }
        }
    }
    // Every case was compared.
    assert_eq!(checked, 12 * 8 * 2 * 2);
}

#[test]
fn products_the_path_does_not_take_are_declined() {
    let device = Default::default();
    let w = Tensor::<B, 2>::ones([16, 32], &device);
    // Too many rows for it.
    let many = Tensor::<B, 2>::ones([few_rows::MAX_ROWS + 1, 16], &device);
    assert!(few_rows::matmul(&many, &w).is_none());
    // Activations that are not f32.
    let half = Tensor::<B, 2>::ones([4, 16], &device).cast(DType::F16);
    assert!(few_rows::matmul(&half, &w).is_none());
    // Autodiff's tensors (a product that needs a gradient) go to Burn.
    type A = burn::backend::Autodiff<Flex>;
    let x = Tensor::<A, 2>::ones([4, 16], &device).require_grad();
    assert!(few_rows::matmul(&x, &Tensor::<A, 2>::ones([16, 32], &device)).is_none());
}

#[test]
fn few_row_products_do_not_depend_on_the_thread_count() {
    if !is_x86_with_fma() {
        return;
    }
    let device = Default::default();
    for rows in [1, 7, 11] {
        let x = Tensor::<B, 2>::random([rows, 2048], Distribution::Uniform(-1.0, 1.0), &device);
        let w = Tensor::<B, 2>::random([2048, 1000], Distribution::Uniform(-1.0, 1.0), &device);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| few_rows::matmul(&x, &w).expect("taken").into_data())
        };
        let one = on(1);
        for threads in [2, 3] {
            assert_eq!(one, on(threads), "{rows} rows on {threads} threads");
        }
    }
}

#[test]
fn few_row_products_read_views_with_wider_strides() {
    if !is_x86_with_fma() {
        return;
    }
    let device = Default::default();
    for rows in [1, 5, 8, 13] {
        let (k, n) = (300, 200);
        let wide_x =
            Tensor::<B, 2>::random([rows, k + 5], Distribution::Uniform(-1.0, 1.0), &device);
        let wide_w = Tensor::<B, 2>::random([k, n + 7], Distribution::Uniform(-1.0, 1.0), &device);
        let (x, w) = (
            wide_x.slice([0..rows, 2..k + 2]),
            wide_w.slice([0..k, 3..n + 3]),
        );
        let ours = few_rows::matmul(&x, &w).expect("a row-major view is taken");
        let reference = x.matmul(w);
        let scale: f32 = reference.clone().abs().max().into_scalar();
        let diff: f32 = (ours - reference).abs().max().into_scalar();
        assert!(
            diff / scale < 1e-5,
            "{rows} rows: relative difference {}",
            diff / scale
        );
    }
}
