//! Writing a module's parameters from outside it (loaders, adapters).

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Replace a parameter's value, keeping it a parameter.
pub(crate) fn set_param<B: Backend, const D: usize>(
    param: &mut Param<Tensor<B, D>>,
    value: Tensor<B, D>,
) {
    *param = Param::from_tensor(value);
}
