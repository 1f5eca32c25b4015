//! Everything a run trains, as one parameter set: the policy's LoRA adapters, the latent
//! interface and the router, visited in one fixed order derived from the module structure.
//!
//! Gradients are gathered, accumulated, measured, clipped, flattened (for an all-reduce across
//! processes) and applied through this one set, with a learning rate per [`Group`] as torch's
//! parameter groups have. The optimizer's state is kept by a parameter's position in that
//! order, not by Burn's `ParamId` (random per process), so that every data-parallel rank and
//! every resumed run agree on which state belongs to which tensor.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, SimpleOptimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Record, Recorder, RecorderError};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use musketeers_fusion::LatentInterface;
use musketeers_lm::Llama;
use musketeers_rl::clip::{scale_grads, squared_grad_norm};
use std::path::Path;

use super::TrainError;
use crate::method::system::hard_route::Router;

/// A part of the parameter set with its own learning rate and its own gradient norm in the
/// step's diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The policy's LoRA adapters (its base weights are frozen and carry no gradient).
    Adapters,
    Interface,
    Router,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Adapters, Group::Interface, Group::Router];

    fn index(self) -> usize {
        self as usize
    }
}

/// One value per [`Group`].
pub type PerGroup<T> = [T; 3];

/// The interface's squared gradient norm, its context gates counted per unit of their
/// argument `scale * gate` rather than of `gate`.
///
/// Why: `scale` only gives the gates their own rate of change under Adam (which moves a
/// parameter by about the learning rate whatever its gradient's size), and it multiplies
/// their gradient by `scale`. Counted as it is, the gates' gradient outweighed everything
/// else (norm 30-140 against 0.04-0.2 for the adapters at `gate_scale = 1000`), so the global
/// clip shrank every other gradient, the adapters' below Adam's epsilon. Per unit of
/// the argument the clip sees what a gate with a learning rate of its own would have.
fn interface_squared_norm<B: AutodiffBackend>(
    interface: &LatentInterface<B>,
    grads: &GradientsParams,
) -> f64 {
    let whole = squared_grad_norm(interface, grads);
    match &interface.context_gate {
        None => whole,
        Some(gate) => {
            // The gates' term is one f32 sum in both totals, so the difference is exact up
            // to f64 rounding.
            let gates = squared_grad_norm(gate, grads);
            (whole - gates).max(0.0) + gates / (gate.scale * gate.scale)
        }
    }
}

/// The trained modules, owned: taken out of the trainer for an optimizer step and put back.
#[derive(Debug, Clone)]
pub struct Trained<B: AutodiffBackend> {
    pub policy: Llama<B>,
    pub interface: Option<LatentInterface<B>>,
    pub router: Option<Router<B>>,
}

/// The trained modules, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct TrainedRef<'a, B: AutodiffBackend> {
    pub policy: &'a Llama<B>,
    pub interface: Option<&'a LatentInterface<B>>,
    pub router: Option<&'a Router<B>>,
}

/// A visitor told which group the parameters it sees next belong to.
pub trait GroupVisitor<B: AutodiffBackend>: ModuleVisitor<B> {
    fn enter(&mut self, group: Group);
}

impl<'a, B: AutodiffBackend> TrainedRef<'a, B> {
    /// Visit every parameter in the set's fixed order: adapters, interface, router.
    pub fn visit<V: GroupVisitor<B>>(&self, visitor: &mut V) {
        visitor.enter(Group::Adapters);
        self.policy.visit(visitor);
        if let Some(interface) = self.interface {
            visitor.enter(Group::Interface);
            interface.visit(visitor);
        }
        if let Some(router) = self.router {
            visitor.enter(Group::Router);
            router.visit(visitor);
        }
    }

    /// Which groups this run has.
    pub fn groups(&self) -> PerGroup<bool> {
        [true, self.interface.is_some(), self.router.is_some()]
    }

    /// Take the gradients of every trained parameter out of a backward pass.
    pub fn gradients(&self, grads: &mut B::Gradients) -> GradientsParams {
        let mut visitor = Gather {
            grads,
            gathered: GradientsParams::new(),
        };
        self.visit(&mut visitor);
        visitor.gathered
    }

    /// `total += part`, parameter by parameter (gradient accumulation over micro-batches).
    pub fn accumulate(&self, total: &mut GradientsParams, part: GradientsParams) {
        self.visit(&mut Accumulate { total, part });
    }

    /// The sum of squared gradient entries per group (`None` for a group the run lacks).
    pub fn squared_norms(&self, grads: &GradientsParams) -> PerGroup<Option<f64>> {
        [
            Some(squared_grad_norm(self.policy, grads)),
            self.interface.map(|m| interface_squared_norm(m, grads)),
            self.router.map(|m| squared_grad_norm(m, grads)),
        ]
    }

    /// Multiply every gradient by `factor` (clipping).
    pub fn scale(&self, grads: &mut GradientsParams, factor: f64) {
        scale_grads(self.policy, grads, factor);
        if let Some(m) = self.interface {
            scale_grads(m, grads, factor);
        }
        if let Some(m) = self.router {
            scale_grads(m, grads, factor);
        }
    }

    /// The parameters that train, in order: their shapes. Ranks compare this at start.
    pub fn layout(&self) -> Vec<Vec<usize>> {
        let mut visitor = Layout { shapes: Vec::new() };
        self.visit(&mut visitor);
        visitor.shapes
    }

    /// Every trained gradient in the set's order as one buffer, each parameter followed by
    /// a 1 where it has a gradient and a 0 where it has none (its entries then 0). Summing
    /// such buffers over processes sums the gradients and counts who had one.
    pub fn flatten(&self, grads: &GradientsParams) -> Vec<f32> {
        let mut visitor = Flatten {
            grads,
            flat: Vec::new(),
        };
        self.visit(&mut visitor);
        visitor.flat
    }

    /// The gradients a [`Self::flatten`]ed buffer holds (after a sum over processes); a
    /// parameter no process had a gradient for gets none.
    pub fn unflatten(&self, flat: &[f32]) -> Result<GradientsParams, TrainError> {
        let mut visitor = Unflatten {
            flat,
            offset: 0,
            grads: GradientsParams::new(),
            error: None,
        };
        self.visit(&mut visitor);
        if let Some(error) = visitor.error {
            return Err(error);
        }
        if visitor.offset != flat.len() {
            return Err(TrainError::BadInput(format!(
                "a flat gradient of {} values for {} trained values",
                flat.len(),
                visitor.offset
            )));
        }
        Ok(visitor.grads)
    }
}

fn trains<B: AutodiffBackend, const D: usize>(param: &Param<Tensor<B, D>>) -> bool {
    param.is_require_grad()
}

struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut B::Gradients,
    gathered: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad_remove(self.grads) {
            self.gathered.register(param.id, g);
        }
    }
}

impl<B: AutodiffBackend> GroupVisitor<B> for Gather<'_, B> {
    fn enter(&mut self, _: Group) {}
}

struct Accumulate<'a> {
    total: &'a mut GradientsParams,
    part: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Accumulate<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.part.remove::<B::InnerBackend, D>(param.id) {
            let sum = match self.total.remove::<B::InnerBackend, D>(param.id) {
                Some(total) => total.add(g),
                None => g,
            };
            self.total.register(param.id, sum);
        }
    }
}

impl<B: AutodiffBackend> GroupVisitor<B> for Accumulate<'_> {
    fn enter(&mut self, _: Group) {}
}

struct Layout {
    shapes: Vec<Vec<usize>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Layout {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if trains(param) {
            self.shapes.push(param.shape().dims::<D>().to_vec());
        }
    }
}

impl<B: AutodiffBackend> GroupVisitor<B> for Layout {
    fn enter(&mut self, _: Group) {}
}

struct Flatten<'a> {
    grads: &'a GradientsParams,
    flat: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !trains(param) {
            return;
        }
        match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => {
                let values = g.into_data().convert::<f32>();
                self.flat
                    .extend_from_slice(values.as_slice::<f32>().unwrap_or_default());
                self.flat.push(1.0);
            }
            None => {
                let n = param.shape().num_elements();
                self.flat.extend(std::iter::repeat_n(0.0, n + 1));
            }
        }
    }
}

impl<B: AutodiffBackend> GroupVisitor<B> for Flatten<'_> {
    fn enter(&mut self, _: Group) {}
}

struct Unflatten<'a> {
    flat: &'a [f32],
    offset: usize,
    grads: GradientsParams,
    error: Option<TrainError>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !trains(param) || self.error.is_some() {
            return;
        }
        let shape = param.shape();
        let n = shape.num_elements();
        let Some(values) = self.flat.get(self.offset..self.offset + n + 1) else {
            self.error = Some(TrainError::BadInput(format!(
                "a flat gradient of {} values is too short for the trained parameters",
                self.flat.len()
            )));
            return;
        };
        self.offset += n + 1;
        if values[n] > 0.0 {
            let device = param.val().device();
            let data = TensorData::new(values[..n].to_vec(), shape);
            let g = Tensor::<B::InnerBackend, D>::from_data(data, &device);
            self.grads.register(param.id, g);
        }
    }
}

impl<B: AutodiffBackend> GroupVisitor<B> for Unflatten<'_> {
    fn enter(&mut self, _: Group) {}
}

/// AdamW's hyper-parameters (Burn's names and defaults; weight decay off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSettings {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl Default for AdamSettings {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 0.0,
        }
    }
}

type State<B> = AdaptorRecord<AdamW, B>;

/// What [`ParamOptimizer::save`] writes: each trained parameter's state, in the set's order.
#[derive(Record)]
struct OptimizerRecord<B: AutodiffBackend> {
    states: Vec<Option<State<B>>>,
}

/// AdamW over the whole parameter set. Burn's AdamW does the arithmetic (so the update is
/// the one `OptimizerAdaptor` gives, bit for bit); this keeps its state by position.
pub struct ParamOptimizer<B: AutodiffBackend> {
    settings: AdamSettings,
    adam: AdamW,
    states: Vec<Option<State<B>>>,
}

impl<B: AutodiffBackend> std::fmt::Debug for ParamOptimizer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamOptimizer")
            .field("settings", &self.settings)
            .field(
                "states",
                &self.states.iter().filter(|s| s.is_some()).count(),
            )
            .finish()
    }
}

impl<B: AutodiffBackend> ParamOptimizer<B> {
    pub fn new(settings: AdamSettings) -> Self {
        let adam = AdamWConfig::new()
            .with_beta_1(settings.beta_1)
            .with_beta_2(settings.beta_2)
            .with_epsilon(settings.epsilon)
            .with_weight_decay(settings.weight_decay)
            .build();
        Self {
            settings,
            adam,
            states: Vec::new(),
        }
    }

    pub fn settings(&self) -> AdamSettings {
        self.settings
    }

    /// One AdamW step of every parameter that has a gradient in `grads`, at its group's
    /// learning rate.
    pub fn step(
        &mut self,
        trained: Trained<B>,
        grads: GradientsParams,
        learning_rates: PerGroup<f64>,
    ) -> Trained<B> {
        let mut mapper = Step {
            adam: &self.adam,
            states: &mut self.states,
            position: 0,
            grads,
            learning_rate: learning_rates[Group::Adapters.index()],
        };
        let policy = trained.policy.map(&mut mapper);
        mapper.learning_rate = learning_rates[Group::Interface.index()];
        let interface = trained.interface.map(|m| m.map(&mut mapper));
        mapper.learning_rate = learning_rates[Group::Router.index()];
        let router = trained.router.map(|m| m.map(&mut mapper));
        Trained {
            policy,
            interface,
            router,
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(
                OptimizerRecord::<B> {
                    states: self.states.clone(),
                },
                path.to_path_buf(),
            )
            .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))
    }

    pub fn load(&mut self, path: &Path, device: &B::Device) -> Result<(), TrainError> {
        let record: OptimizerRecord<B> = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(path.to_path_buf(), device)
            .map_err(|e: RecorderError| {
                TrainError::BadInput(format!("optimizer state {}: {e}", path.display()))
            })?;
        self.states = record.states;
        Ok(())
    }
}

struct Step<'a, B: AutodiffBackend> {
    adam: &'a AdamW,
    states: &'a mut Vec<Option<State<B>>>,
    /// Index of the next trained parameter in the set's order.
    position: usize,
    grads: GradientsParams,
    learning_rate: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Step<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !param.is_require_grad() {
            return param;
        }
        let position = self.position;
        self.position += 1;
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if self.states.len() <= position {
            self.states.resize_with(position + 1, || None);
        }
        let state = self.states[position].take().map(|s| s.into_state::<D>());
        let (updated, state) = self
            .adam
            .step(self.learning_rate, tensor.inner(), grad, state);
        self.states[position] = state.map(AdaptorRecord::from_state);
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Int;
    use musketeers_lm::LoraConfig;

    type Ad = burn::backend::Autodiff<burn_flex::Flex>;

    /// The tiny llama-gqa fixture with rank-2 adapters, and a router over two experts.
    fn modules() -> (Llama<Ad>, Router<Ad>) {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../musketeers-lm/tests/fixtures/llama-gqa");
        let device = Default::default();
        let (config, policy) = musketeers_lm::weights::load::<Ad>(&dir, &device).expect("fixture");
        let lora = LoraConfig {
            rank: 2,
            alpha: 4.0,
            ..Default::default()
        };
        let policy = policy.with_lora(&lora, 7).expect("adapters");
        (policy, Router::new(config.hidden_size, 2, &device))
    }

    /// Gradients of every adapter (the router has none: it took no part in the loss).
    fn policy_gradients(set: &TrainedRef<'_, Ad>) -> GradientsParams {
        let _graphs = crate::method::autodiff_lock::hold();
        let ids = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(vec![3i64, 14, 15, 92], [1, 4]),
            &Default::default(),
        );
        let logits = set.policy.forward(ids, None, false).logits;
        let mut grads = (logits.clone() * logits).sum().backward();
        set.gradients(&mut grads)
    }

    #[test]
    fn flatten_then_unflatten_gives_every_gradient_back_and_marks_the_missing() {
        let (policy, router) = modules();
        let set = TrainedRef {
            policy: &policy,
            interface: None,
            router: Some(&router),
        };
        let grads = policy_gradients(&set);
        let flat = set.flatten(&grads);
        let values: usize = set
            .layout()
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum();
        // Each parameter's values, then its has-a-gradient flag.
        assert_eq!(flat.len(), values + set.layout().len());
        let back = set.unflatten(&flat).expect("unflatten");
        assert_eq!(set.flatten(&back), flat, "a round trip changes nothing");
        let [adapters, interface, router_norm] = set.squared_norms(&back);
        assert!(adapters.expect("adapters") > 0.0);
        assert_eq!(interface, None, "no interface in this set");
        assert_eq!(router_norm, Some(0.0), "the router had no gradient");
        let err = set.unflatten(&flat[1..]).expect_err("one value short");
        assert!(err.to_string().contains("flat gradient"), "{err}");
    }

    #[test]
    fn the_interface_norm_counts_its_gates_per_unit_of_their_argument() {
        let (policy, _) = modules();
        let device = Default::default();
        let scale = 1000.0;
        let interface = musketeers_fusion::LatentInterfaceConfig {
            latent_dim: 8,
            num_latents: 2,
            num_heads: 2,
            ..musketeers_fusion::LatentInterfaceConfig::new(vec![4], 6)
        }
        .init::<Ad>(&mut musketeers_fusion::InitRng::new(0), &device)
        .expect("interface")
        .with_context_gate(3, 2, scale)
        .expect("gates");
        let gate = &interface.context_gate.as_ref().expect("gates").gate;
        let latents = &interface.latents;
        let mut grads = GradientsParams::new();
        // Six gate entries of gradient 2000 (2 per unit of the argument) and latents of
        // gradient 0.5.
        grads.register(gate.id, gate.val().inner().ones_like().mul_scalar(2000.0));
        grads.register(
            latents.id,
            latents.val().inner().ones_like().mul_scalar(0.5),
        );
        let set = TrainedRef {
            policy: &policy,
            interface: Some(&interface),
            router: None,
        };
        let measured = set.squared_norms(&grads)[1].expect("interface");
        let expected = 6.0 * 2.0 * 2.0 + (2 * 8) as f64 * 0.25;
        assert!(
            (measured - expected).abs() < 1e-9,
            "{measured} vs {expected}"
        );
        let ungated = interface.clone();
        let ungated = LatentInterface {
            context_gate: None,
            ..ungated
        };
        let set = TrainedRef {
            interface: Some(&ungated),
            ..set
        };
        let measured = set.squared_norms(&grads)[1].expect("interface");
        assert!(
            (measured - 4.0).abs() < 1e-9,
            "without gates only the latents: {measured}"
        );
    }

    #[test]
    fn scale_multiplies_every_group_norm_by_the_factor_squared() {
        let (policy, _) = modules();
        let set = TrainedRef {
            policy: &policy,
            interface: None,
            router: None,
        };
        let mut grads = policy_gradients(&set);
        let before = set.squared_norms(&grads)[0].expect("adapters");
        set.scale(&mut grads, 0.5);
        let after = set.squared_norms(&grads)[0].expect("adapters");
        assert!((after / before - 0.25).abs() < 1e-5, "{after} / {before}");
    }
}
