//! The interface's initial values, drawn from a generator its caller owns.
//!
//! Why not Burn's initialisers: they draw from one generator per process (on Flex a global
//! `StdRng` that `Backend::seed` replaces), so a run whose start overlaps any other draw in the
//! process (a second run in another thread, a test, user code) gets other initial values
//! than the same run alone, and a GPU backend draws other values again. Here each run owns
//! its stream: the same seed gives the same interface in every thread and on every backend.
//!
//! The distributions and the order of the draws are Burn's own (Linear's default
//! Kaiming-uniform bound, a parameter at a time in the module's field order) and the
//! generator is the one Flex seeds, so on Flex an interface built here equals, bit for bit,
//! the one Burn's initialisers gave after `Backend::seed(seed)`: runs measured before keep
//! their numbers (`draws_equal_burns_seeded_initialisers_on_flex_whatever_else_draws` checks it).

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand_burn::SeedableRng;
use rand_burn::rngs::StdRng;

/// A seeded stream of initial values (see the module documentation).
#[derive(Debug)]
pub struct InitRng(StdRng);

impl InitRng {
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// A trainable parameter of `shape` drawn from `distribution` (as f32, then the backend's
    /// float type, as Burn's own initialisers do).
    pub fn param<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        distribution: Distribution,
        device: &B::Device,
    ) -> Param<Tensor<B, D>> {
        let data = TensorData::random::<f32, _, _>(shape, distribution, &mut self.0);
        Param::from_data(data, device)
    }

    /// A `d_input -> d_output` linear layer with bias, both drawn as Burn's `LinearConfig`
    /// default draws them: uniform in `±1/sqrt(d_input)`, the weight first.
    pub fn linear<B: Backend>(
        &mut self,
        d_input: usize,
        d_output: usize,
        device: &B::Device,
    ) -> Linear<B> {
        // Burn's default `KaimingUniform { gain: 1/sqrt(3) }` bound, in its order of operations
        // (a different rounding would change the draws' last bits).
        let bound = 3.0f64.sqrt() * (1.0 / 3.0f64.sqrt()) * (1.0 / (d_input as f64).sqrt());
        let uniform = Distribution::Uniform(-bound, bound);
        // Zeros draw nothing: the layer's structure without touching any generator.
        let mut linear = LinearConfig::new(d_input, d_output)
            .with_initializer(Initializer::Zeros)
            .init(device);
        linear.weight = self.param([d_input, d_output], uniform, device);
        linear.bias = Some(self.param([d_output], uniform, device));
        linear
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_flex::Flex;

    fn values<const D: usize>(param: &Param<Tensor<Flex, D>>) -> Vec<f32> {
        param.val().into_data().to_vec().expect("f32")
    }

    /// The one test in this binary that draws from Burn's process-wide generator: no other
    /// test here may, or the two would interleave.
    #[test]
    fn draws_equal_burns_seeded_initialisers_on_flex_whatever_else_draws() {
        let device = Default::default();
        Flex::seed(&device, 17);
        let burns = LinearConfig::new(5, 3).init::<Flex>(&device);
        let (burn_weight, burn_bias) = (values(&burns.weight), values(&burns.bias.unwrap()));
        let burn_normal = values(
            &Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init::<Flex, 2, _>([4, 2], &device),
        );

        let mut ours = InitRng::new(17);
        let linear = ours.linear::<Flex>(5, 3, &device);
        assert_eq!(values(&linear.weight), burn_weight);
        assert_eq!(values(&linear.bias.unwrap()), burn_bias);
        // Burn's generator reseeded and drawn from in between: our stream goes on unchanged.
        Flex::seed(&device, 99);
        let _ = Tensor::<Flex, 1>::random([64], Distribution::Default, &device);
        let normal = ours.param::<Flex, 2>([4, 2], Distribution::Normal(0.0, 0.02), &device);
        assert_eq!(values(&normal), burn_normal);
    }

    #[test]
    fn a_seed_fixes_the_stream_and_bounds_the_draws() {
        let device = Default::default();
        let draw = |seed| {
            let mut rng = InitRng::new(seed);
            values(&rng.linear::<Flex>(6, 4, &device).weight)
        };
        let first = draw(3);
        // Another stream's draws in between change nothing.
        let _ = draw(4);
        assert_eq!(draw(3), first);
        assert_ne!(draw(4), first);
        let bound = 1.0 / 6.0f32.sqrt();
        assert!(first.iter().all(|v| v.abs() <= bound), "{first:?}");
    }
}
