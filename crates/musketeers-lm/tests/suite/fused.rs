//! The one-pass element-wise chains against the Burn operations they replace, bit for bit,
//! and the inputs they decline.

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor};
use burn_flex::Flex;
use musketeers_lm::fused;

type B = Flex;

fn bits<const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .expect("f32")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn random<const D: usize>(shape: [usize; D], std: f64) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default())
}

/// The chain `llama::Mlp` runs when the fused pass declines.
fn silu_times_reference(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    gate.clone() / (gate.neg().exp() + 1.0) * up
}

/// `rope::apply`'s chain when the fused pass declines.
fn rotate_reference(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, d / 2..d]);
    x * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin
}

#[test]
fn silu_times_is_the_chain_bit_for_bit() {
    // Large gates too: exp(-gate) overflows to inf below -88, where SiLU is -0.
    for shape in [[1, 1, 7], [3, 5, 1536], [32, 32, 1536]] {
        let (gate, up) = (random(shape, 30.0), random(shape, 1.0));
        let ours = fused::silu_times(&gate, &up).expect("contiguous f32 on Flex is taken");
        assert_eq!(ours.dims(), shape);
        assert_eq!(
            bits(ours),
            bits(silu_times_reference(gate, up)),
            "{shape:?}"
        );
    }
}

#[test]
fn rotate_is_the_chain_bit_for_bit_on_strided_heads() {
    let (b, t, h, d) = (3, 11, 9, 64);
    // As the attention hands it over: `[b, t, h, d]` projections with the heads swapped forward.
    let x = random::<4>([b, t, h, d], 1.0).swap_dims(1, 2);
    let angles = random::<4>([b, 1, t, d], 3.0);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let ours = fused::rotate(&x, &cos, &sin).expect("a strided f32 view on Flex is taken");
    assert_eq!(ours.dims(), [b, h, t, d]);
    assert_eq!(
        bits(ours),
        bits(rotate_reference(x.clone(), cos.clone(), sin.clone()))
    );
    // The tables as the layers hold them: repeated per head (`llama::KindInputs`).
    let (cos_heads, sin_heads) = (cos.repeat_dim(1, h), sin.repeat_dim(1, h));
    let ours = fused::rotate(&x, &cos_heads, &sin_heads).expect("per-head tables are taken");
    assert_eq!(bits(ours), bits(rotate_reference(x, cos_heads, sin_heads)));
}

#[test]
fn declines_what_it_does_not_handle() {
    // Autodiff tensors: the chain must record its graph.
    type A = Autodiff<Flex>;
    let device = Default::default();
    let gate = Tensor::<A, 2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    assert!(fused::silu_times(&gate, &gate).is_none());
    let x = Tensor::<A, 4>::random([1, 2, 3, 4], Distribution::Normal(0.0, 1.0), &device);
    let table = Tensor::<A, 4>::ones([1, 1, 3, 4], &device);
    assert!(fused::rotate(&x, &table, &table).is_none());
    // Shapes that differ, a strided operand, an odd head size, tables of another shape.
    let gate = random::<2>([4, 8], 1.0);
    assert!(fused::silu_times(&gate, &random([4, 9], 1.0)).is_none());
    assert!(fused::silu_times(&gate, &random::<2>([8, 4], 1.0).swap_dims(0, 1)).is_none());
    let odd = random::<4>([1, 2, 3, 5], 1.0);
    let table = random::<4>([1, 1, 3, 5], 1.0);
    assert!(fused::rotate(&odd, &table, &table).is_none());
    let x = random::<4>([1, 2, 3, 4], 1.0);
    assert!(fused::rotate(&x, &random([1, 3, 3, 4], 1.0), &random([1, 3, 3, 4], 1.0)).is_none());
    assert!(fused::rotate(&x, &random([1, 1, 2, 4], 1.0), &random([1, 1, 2, 4], 1.0)).is_none());
    // Other dtypes.
    let half = gate.clone().cast(burn::tensor::DType::F16);
    assert!(fused::silu_times(&half, &half).is_none());
}
