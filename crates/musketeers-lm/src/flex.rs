//! Reaching the CPU backend's tensors from backend-generic code: the decode paths
//! (`few_rows`, `few_queries`, the KV cache's in-place writes) work on Flex's storage
//! directly when, and only when, the backend is Flex. A downcast of the tensor primitive
//! decides it at run time, so model code stays generic over the backend.

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use std::any::Any;

/// `primitive` as the CPU backend's tensor, if it is one.
pub(crate) fn as_flex<P: Any>(primitive: &P) -> Option<&FlexTensor> {
    (primitive as &dyn Any).downcast_ref::<FlexTensor>()
}

/// `primitive` by value as the CPU backend's tensor, if it is one.
pub(crate) fn into_flex<P: Any>(primitive: P) -> Option<FlexTensor> {
    let boxed: Box<dyn Any> = Box::new(primitive);
    boxed.downcast::<FlexTensor>().ok().map(|f| *f)
}

/// A Flex tensor as a float tensor of `B`, when `B`'s float tensors are Flex's.
pub(crate) fn float_tensor<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(t);
    let primitive = *boxed.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}
