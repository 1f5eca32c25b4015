//! The latent interface of n-Musketeers, generic over the Burn backend.
//!
//! Each of n frozen experts contributes hidden states `[batch, T_i, d_i]` with a mask. They are
//! projected to a shared width and normalised ([`interface::ExpertProjection`]); K learned latent
//! queries cross-attend over all expert tokens ([`interface::LatentInterface`]); an output
//! projection, initialised at zero, gives the policy's context tokens `C` `[batch, K, d_policy]`.
//! The attention weights give the share of attention each expert receives
//! ([`stats::expert_utilization`]) and its entropy ([`stats::routing_entropy`]).

pub mod attention;
pub mod init;
pub mod interface;
pub mod stats;

pub use init::InitRng;
pub use interface::{ExpertInput, FusionOutput, LatentInterface, LatentInterfaceConfig};

/// A configuration or input the interface cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    #[error("latent interface config: {0}")]
    BadConfig(String),
    #[error("latent interface input: {0}")]
    BadInput(String),
}
