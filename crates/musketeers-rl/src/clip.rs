//! Gradient clipping by the global norm over every trained parameter, as
//! `torch.nn.utils.clip_grad_norm_` (and so TRL's `max_grad_norm`) does.
//!
//! Burn's `GradientClipping::Norm` clips each parameter tensor on its own, which changes the
//! direction of the update whenever one tensor is clipped and the others are not; GRPO's
//! reference implementation scales all gradients by one factor.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total += g.square().sum().into_scalar().elem::<f64>();
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The sum of squared gradient entries of `module`'s parameters found in `grads`.
pub fn squared_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm { grads, total: 0.0 };
    module.visit(&mut visitor);
    visitor.total
}

/// Multiply the gradients of `module`'s parameters in `grads` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    module.visit(&mut Scale { grads, factor });
}

/// torch's clipping factor for a global norm `norm` and a limit `max_norm`:
/// `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn_flex::Flex;

    type Ad = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    #[test]
    fn the_global_norm_is_over_all_parameters_and_scaling_keeps_direction() {
        let device = Default::default();
        let m = Two::<Ad> {
            a: LinearConfig::new(3, 2).init(&device),
            b: LinearConfig::new(2, 1).init(&device),
        };
        let x = Tensor::<Ad, 2>::from_floats([[1.0, -2.0, 3.0]], &device);
        let loss = m.b.forward(m.a.forward(x)).sum() * 10.0;
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        let by_hand: f64 = [
            grads.get::<Flex, 2>(m.a.weight.id),
            grads.get::<Flex, 2>(m.b.weight.id),
        ]
        .into_iter()
        .flatten()
        .map(|g| g.square().sum().into_scalar().elem::<f64>())
        .sum::<f64>()
            + [
                grads.get::<Flex, 1>(m.a.bias.as_ref().expect("bias").id),
                grads.get::<Flex, 1>(m.b.bias.as_ref().expect("bias").id),
            ]
            .into_iter()
            .flatten()
            .map(|g| g.square().sum().into_scalar().elem::<f64>())
            .sum::<f64>();
        let norm2 = squared_grad_norm(&m, &grads);
        assert!((norm2 - by_hand).abs() < 1e-6 * by_hand.max(1.0));
        let before = grads.get::<Flex, 2>(m.a.weight.id).expect("grad");
        let factor = clip_factor(norm2.sqrt(), 1.0);
        assert!(factor < 1.0);
        scale_grads(&m, &mut grads, factor);
        let after = squared_grad_norm(&m, &grads).sqrt();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        let scaled = grads.get::<Flex, 2>(m.a.weight.id).expect("grad");
        let diff = (scaled - before.mul_scalar(factor))
            .abs()
            .max()
            .into_scalar()
            .elem::<f64>();
        assert!(diff < 1e-6);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
    }
}
