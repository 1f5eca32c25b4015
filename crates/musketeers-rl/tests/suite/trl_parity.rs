//! Loss, gradient, metrics and advantages against TRL's own `GRPOTrainer` code
//! (`scripts/fixtures/make-trl-grpo.sh`, trl 1.16.0), to 1e-6.

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;
use musketeers_rl::{
    GrpoLossConfig, LossInputs, LossType, ScaleRewards, group_advantages, grpo_loss,
};
use serde_json::Value;

type Ad = Autodiff<Flex>;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trl_grpo.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn matrix(v: &Value) -> (Vec<f32>, [usize; 2]) {
    let rows = v.as_array().expect("rows");
    let cols = rows[0].as_array().expect("row").len();
    let data = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
        })
        .collect();
    (data, [rows.len(), cols])
}

fn tensor(v: &Value) -> Tensor<Ad, 2> {
    let (data, shape) = matrix(v);
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: got {got}, TRL {want}"
    );
}

#[test]
fn loss_gradient_and_metrics_equal_trl_for_every_loss_type() {
    let data = fixture();
    let inputs = &data["loss_inputs"];
    let cases = data["loss"].as_array().expect("cases");
    assert_eq!(cases.len(), 16);
    for case in cases {
        let loss_type: LossType =
            serde_json::from_value(case["loss_type"].clone()).expect("loss_type");
        let beta = case["beta"].as_f64().expect("beta");
        let config = GrpoLossConfig {
            beta,
            epsilon: case["epsilon"].as_f64().expect("epsilon"),
            epsilon_high: case["epsilon_high"].as_f64(),
            loss_type,
            max_completion_length: case["max_completion_length"].as_u64().expect("length") as usize,
        };
        let name = format!(
            "{loss_type:?} beta={beta} epsilon_high={:?}",
            config.epsilon_high
        );
        let logps = tensor(&inputs["per_token_logps"]).require_grad();
        let mask = tensor(&inputs["completion_mask"]);
        let advantages: Vec<f32> = inputs["advantages"]
            .as_array()
            .expect("advantages")
            .iter()
            .map(|a| a.as_f64().expect("number") as f32)
            .collect();
        let n = advantages.len();
        let out = grpo_loss(
            LossInputs {
                per_token_logps: logps.clone(),
                old_per_token_logps: Some(tensor(&inputs["old_per_token_logps"])),
                ref_per_token_logps: (beta > 0.0).then(|| tensor(&inputs["ref_per_token_logps"])),
                completion_mask: mask.clone(),
                advantages: Tensor::from_data(
                    TensorData::new(advantages, [n]),
                    &Default::default(),
                ),
                entropies: Some(tensor(&inputs["entropies"])),
                num_items_in_batch: None,
            },
            &config,
        )
        .expect("loss");
        close(
            &format!("{name}: loss"),
            out.metrics.loss,
            case["loss"].as_f64().expect("loss"),
        );
        let grads = out.loss.backward();
        let grad = logps
            .grad(&grads)
            .expect("gradient")
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let (want, _) = matrix(&case["grad"]);
        for (i, (g, w)) in grad.iter().zip(&want).enumerate() {
            close(&format!("{name}: grad[{i}]"), f64::from(*g), f64::from(*w));
        }
        let m = &case["metrics"];
        let metric = |key: &str| {
            m[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: TRL logged no {key}"))
        };
        close(
            &format!("{name}: entropy"),
            out.metrics.entropy.expect("entropy"),
            metric("entropy"),
        );
        close(
            &format!("{name}: low"),
            out.metrics.clip_ratio_low_mean,
            metric("clip_ratio/low_mean"),
        );
        close(
            &format!("{name}: high"),
            out.metrics.clip_ratio_high_mean,
            metric("clip_ratio/high_mean"),
        );
        close(
            &format!("{name}: region"),
            out.metrics.clip_ratio_region_mean,
            metric("clip_ratio/region_mean"),
        );
        close(
            &format!("{name}: low_min"),
            out.metrics.clip_ratio_low_min,
            metric("clip_ratio/low_min"),
        );
        close(
            &format!("{name}: high_max"),
            out.metrics.clip_ratio_high_max,
            metric("clip_ratio/high_max"),
        );
        match out.metrics.kl {
            Some(kl) => close(&format!("{name}: kl"), kl, metric("kl")),
            None => assert!(m.get("kl").is_none(), "{name}: TRL logged a KL"),
        }
    }
}

#[test]
fn advantages_equal_trl_for_every_scaling() {
    let data = fixture();
    let adv = &data["advantages"];
    let rewards: Vec<f32> = adv["rewards"]
        .as_array()
        .expect("rewards")
        .iter()
        .map(|r| r.as_f64().expect("r") as f32)
        .collect();
    let g = adv["num_generations"].as_u64().expect("g") as usize;
    for case in adv["cases"].as_array().expect("cases") {
        let scale: ScaleRewards =
            serde_json::from_value(case["scale_rewards"].clone()).expect("scale");
        let ours = group_advantages(&rewards, g, scale).expect("advantages");
        for (i, (a, w)) in ours
            .values
            .iter()
            .zip(case["advantages"].as_array().expect("values"))
            .enumerate()
        {
            close(
                &format!("{scale:?} advantage {i}"),
                f64::from(*a),
                w.as_f64().expect("w"),
            );
        }
        close(
            &format!("{scale:?} frac_reward_zero_std"),
            f64::from(ours.frac_reward_zero_std),
            case["frac_reward_zero_std"].as_f64().expect("frac"),
        );
        // The all-equal group is flagged whatever the scaling.
        assert_eq!(
            ours.zero_std_group,
            [vec![false; 4], vec![true; 4], vec![false; 4]].concat()
        );
    }
    assert!(group_advantages(&rewards, 5, ScaleRewards::Group).is_err());
    assert!(group_advantages(&[1.0, f32::NAN], 2, ScaleRewards::Group).is_err());
}
