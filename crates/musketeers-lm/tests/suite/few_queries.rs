//! The fused decode attention against Burn's operations: strided cache views, forbidden keys,
//! a row with every key forbidden; and the exactness a zero gate relies on.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_lm::few_queries;

type B = Flex;

const FILL: f32 = -1e30;

fn reference(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * scale;
    softmax(scores.mask_fill(mask.clone(), FILL), 3).matmul(v.clone())
}

/// `[b, g, r, t]`, forbidden where `forbid(b, g, r, key)`.
fn mask(
    dims: [usize; 4],
    forbid: impl Fn(usize, usize, usize, usize) -> bool,
) -> Tensor<B, 4, Bool> {
    let [b, g, r, t] = dims;
    let mut data = Vec::with_capacity(b * g * r * t);
    for i in 0..b {
        for j in 0..g {
            for q in 0..r {
                data.extend((0..t).map(|key| forbid(i, j, q, key)));
            }
        }
    }
    Tensor::from_data(TensorData::new(data, dims), &Default::default())
}

#[test]
fn decode_attention_equals_burns_operations() {
    let device = Default::default();
    let (b, g, r, d, t, capacity) = (5, 3, 7, 20, 13, 40);
    let q = Tensor::<B, 4>::random([b, g, r, d], Distribution::Normal(0.0, 1.0), &device);
    // Keys and values as the cache hands them out: the first `t` positions of a larger buffer.
    let k = Tensor::<B, 4>::random([b, g, capacity, d], Distribution::Normal(0.0, 1.0), &device)
        .narrow(2, 0, t);
    let v = Tensor::<B, 4>::random([b, g, capacity, d], Distribution::Normal(0.0, 1.0), &device)
        .narrow(2, 0, t);
    // Left padding that differs per row; row 2, query 0 of group 1 may read nothing.
    let forbidden = mask([b, g, r, t], |i, j, q, key| {
        key < i || (i == 2 && j == 1 && q == 0)
    });
    let ours = few_queries::attend(&q, &k, &v, &forbidden, 0.125, FILL).expect("taken");
    let burn = reference(&q, &k, &v, &forbidden, 0.125);
    let diff: f32 = (ours - burn.clone()).abs().max().into_scalar();
    let scale: f32 = burn.abs().max().into_scalar();
    assert!(
        diff <= 1e-5 * scale,
        "largest difference {diff} (values up to {scale})"
    );
}

#[test]
fn forbidden_keys_change_no_bit_of_the_result() {
    // The same real keys with forbidden ones in front (the context slots a zero gate hides)
    // give the same bits: what makes gated context at a zero gate the model without C.
    let device = Default::default();
    let (b, g, r, d, t, extra) = (2, 2, 3, 16, 9, 4);
    let q = Tensor::<B, 4>::random([b, g, r, d], Distribution::Normal(0.0, 1.0), &device);
    let k = Tensor::<B, 4>::random([b, g, t, d], Distribution::Normal(0.0, 1.0), &device);
    let v = Tensor::<B, 4>::random([b, g, t, d], Distribution::Normal(0.0, 1.0), &device);
    let front = |x: &Tensor<B, 4>| {
        let noise =
            Tensor::<B, 4>::random([b, g, extra, d], Distribution::Normal(0.0, 9.0), &device);
        Tensor::cat(vec![noise, x.clone()], 2)
    };
    let plain = few_queries::attend(
        &q,
        &k,
        &v,
        &mask([b, g, r, t], |_, _, _, _| false),
        0.25,
        FILL,
    )
    .expect("taken");
    let hidden = few_queries::attend(
        &q,
        &front(&k),
        &front(&v),
        &mask([b, g, r, t + extra], |_, _, _, key| key < extra),
        0.25,
        FILL,
    )
    .expect("taken");
    assert_eq!(plain.into_data(), hidden.into_data());
}

#[test]
fn inputs_the_path_does_not_take_are_declined() {
    let device = Default::default();
    let rows = few_queries::MAX_QUERY_ROWS + 1;
    let q = Tensor::<B, 4>::ones([1, 1, rows, 8], &device);
    let k = Tensor::<B, 4>::ones([1, 1, 4, 8], &device);
    let none = mask([1, 1, rows, 4], |_, _, _, _| false);
    assert!(few_queries::attend(&q, &k, &k, &none, 1.0, FILL).is_none());
    type A = burn::backend::Autodiff<Flex>;
    let qa = Tensor::<A, 4>::ones([1, 1, 2, 8], &device).require_grad();
    let ka = Tensor::<A, 4>::ones([1, 1, 4, 8], &device);
    let ma =
        Tensor::<A, 4, Bool>::from_data(TensorData::new(vec![false; 8], [1, 1, 2, 4]), &device);
    assert!(few_queries::attend(&qa, &ka, &ka, &ma, 1.0, FILL).is_none());
}
