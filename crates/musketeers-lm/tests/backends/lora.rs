//! LoRA against PEFT: an adapter PEFT saved gives PEFT's logits, adapters off give the base,
//! a fresh adapter changes nothing, gradients reach only adapters, and our saved files are
//! PEFT's. Fixture: `scripts/fixtures/make-lora-adapter.sh`.

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::ElementConversion;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_lm::{Llama, LoraConfig, weights};
use safetensors::SafeTensors;

use crate::common;
use common::{expected, fixture, input_ids, relative_error};

musketeers_testkit::backend_tests!(
    peft_adapter_gives_peft_logits_and_adapters_off_give_the_base,
    fresh_adapters_leave_the_output_unchanged,
    gradients_reach_only_the_adapters_and_training_moves_only_them,
    saved_adapters_are_peft_files_and_load_back,
);

fn logits<Bk: Backend>(model: &Llama<Bk>, ids: &[i64]) -> Vec<f32> {
    let device = model.embed_tokens.weight.device();
    let input =
        Tensor::<Bk, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device);
    model
        .forward(input, None, false)
        .logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32")
}

fn base<Bk: Backend>(device: &Bk::Device) -> Llama<Bk> {
    weights::load::<Bk>(&fixture("qwen2-bias"), device)
        .expect("base loads")
        .1
}

fn peft_adapter_gives_peft_logits_and_adapters_off_give_the_base<B: Backend>(device: &B::Device) {
    let ids = input_ids(&fixture("qwen2-bias"));
    let adapter_dir = fixture("lora-qwen2-bias");
    let (model, config) = base::<B>(device)
        .load_adapters(&adapter_dir)
        .expect("adapter loads");
    assert_eq!(config.rank, 4);
    assert_eq!(config.scaling(), 4.0);

    let (_, want) = expected(&adapter_dir, "logits");
    let err = relative_error(&logits(&model, &ids), &want);
    assert!(err < 1e-4, "adapted logits relative error {err}");

    let (_, want_base) = expected(&adapter_dir, "base_logits");
    let err = relative_error(&logits(&model.without_adapters(), &ids), &want_base);
    assert!(err < 1e-4, "adapters-off logits relative error {err}");
    // The adapters do matter: the two references are far apart.
    assert!(relative_error(&want, &want_base) > 0.05);

    let err = relative_error(&logits(&model.merge_adapters(), &ids), &want);
    assert!(err < 1e-4, "merged logits relative error {err}");
}

fn fresh_adapters_leave_the_output_unchanged<B: Backend>(device: &B::Device) {
    let ids = input_ids(&fixture("qwen2-bias"));
    let plain = base::<B>(device);
    let want = logits(&plain, &ids);
    let adapted = plain.with_lora(&LoraConfig::default(), 3).expect("lora");
    assert!(adapted.has_adapters());
    // 2 layers x (q 64->64, k 64->32, v 64->32, o 64->64, gate/up 64->112, down 112->64), rank 8.
    let per_layer = 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 112) * 2 + (112 + 64));
    assert_eq!(adapted.adapter_parameter_count(), 2 * per_layer);
    // B = 0 is a no-op: x W + 0. Bit-exact on the CPU; a GPU backend with kernel fusion
    // compiles `x W + x A B` into other kernels than `x W`, which may round differently, so
    // the bound is f32 rounding (a wrong adapter would move the logits by far more).
    let err = relative_error(&logits(&adapted, &ids), &want);
    assert!(
        err < 1e-6,
        "fresh adapters changed the logits: relative error {err}"
    );
}

fn gradients_reach_only_the_adapters_and_training_moves_only_them<B: Backend>(device: &B::Device) {
    let ids = input_ids(&fixture("qwen2-bias"));
    let config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        ..LoraConfig::default()
    };
    let mut model = base::<Autodiff<B>>(device)
        .with_lora(&config, 11)
        .expect("lora");
    let t = ids.len();
    let input =
        || Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), device);
    // Next-token loss on the sequence itself.
    let targets = Tensor::<Autodiff<B>, 2, Int>::from_data(
        TensorData::new(ids[1..].to_vec(), [1, t - 1]),
        device,
    );
    let loss = |model: &Llama<Autodiff<B>>| {
        let logits = model.forward(input(), None, false).logits; // [1, t, vocab]
        let vocab = logits.dims()[2];
        let logp = log_softmax(logits.slice([0..1, 0..t - 1, 0..vocab]), 2);
        -logp.gather(2, targets.clone().unsqueeze_dim(2)).mean()
    };

    let grads = loss(&model).backward();
    let attn = &model.layers[0].self_attn;
    assert!(attn.q_proj.base.weight.val().grad(&grads).is_none());
    assert!(model.embed_tokens.weight.val().grad(&grads).is_none());
    assert!(model.norm.gamma.val().grad(&grads).is_none());
    let adapter = attn.q_proj.adapter.as_ref().expect("q_proj adapter");
    let grad_b = adapter.lora_b.val().grad(&grads).expect("B has a gradient");
    assert!(grad_b.abs().max().into_scalar().elem::<f32>() > 0.0);
    assert!(attn.k_proj.adapter.is_none(), "k_proj is not a target");
    let grads = GradientsParams::from_grads(grads, &model);
    assert_eq!(grads.len(), 2 * 3 * 2, "layers x targets x {{A, B}}");

    let frozen_before = model.layers[1].mlp.down_proj.base.weight.val().into_data();
    let start = loss(&model).into_scalar().elem::<f32>();
    let mut optim = AdamWConfig::new().init::<Autodiff<B>, Llama<Autodiff<B>>>();
    for _ in 0..20 {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let end = loss(&model).into_scalar().elem::<f32>();
    assert!(end < start * 0.9, "loss {start} -> {end}");
    assert_eq!(
        model.layers[1].mlp.down_proj.base.weight.val().into_data(),
        frozen_before,
        "the base must not move"
    );
    // The trained adapters carry over to the inner backend (where rollouts are sampled).
    let err = relative_error(&logits(&model.valid(), &ids), &logits(&model, &ids));
    assert!(err < 1e-5, "inner-backend logits relative error {err}");
}

fn saved_adapters_are_peft_files_and_load_back<B: Backend>(device: &B::Device) {
    let ids = input_ids(&fixture("qwen2-bias"));
    let adapter_dir = fixture("lora-qwen2-bias");
    let (model, config) = base::<B>(device)
        .load_adapters(&adapter_dir)
        .expect("adapter loads");
    let out = tempfile::tempdir().expect("temp dir");
    model
        .save_adapters(out.path(), &config, "qwen2-bias")
        .expect("save");

    let ours = std::fs::read(out.path().join("adapter_model.safetensors")).expect("ours");
    let theirs = std::fs::read(adapter_dir.join("adapter_model.safetensors")).expect("peft's");
    let (ours, theirs) = (
        SafeTensors::deserialize(&ours).expect("ours parses"),
        SafeTensors::deserialize(&theirs).expect("peft's parses"),
    );
    let mut names = ours.names();
    names.sort();
    let mut peft_names = theirs.names();
    peft_names.sort();
    assert_eq!(names, peft_names);
    for name in names {
        let (a, b) = (
            ours.tensor(name).expect("ours"),
            theirs.tensor(name).expect("theirs"),
        );
        assert_eq!(a.shape(), b.shape(), "{name}");
        assert_eq!(a.data(), b.data(), "{name}");
    }

    let (reloaded, reread) = base::<B>(device).load_adapters(out.path()).expect("reload");
    assert_eq!(reread, config);
    assert!(
        logits(&reloaded, &ids) == logits(&model, &ids),
        "reloaded adapters differ"
    );
}

#[test]
fn bad_adapter_configs_are_clear_errors() {
    let bad_target = LoraConfig {
        targets: vec!["qkv".into()],
        ..LoraConfig::default()
    };
    let err = base::<Flex>(&Default::default())
        .with_lora(&bad_target, 0)
        .expect_err("unknown target");
    assert!(err.to_string().contains("\"qkv\""), "{err}");
    let zero_rank = LoraConfig {
        rank: 0,
        ..LoraConfig::default()
    };
    assert!(
        base::<Flex>(&Default::default())
            .with_lora(&zero_rank, 0)
            .is_err()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let source = fixture("lora-qwen2-bias");
    std::fs::copy(
        source.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .expect("copy");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("adapter_config.json")).expect("config"),
    )
    .expect("json");
    let write = |patch: &dyn Fn(&mut serde_json::Value)| {
        let mut c = config.clone();
        patch(&mut c);
        std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).expect("write");
        base::<Flex>(&Default::default())
            .load_adapters(dir.path())
            .map(|_| ())
            .expect_err("must fail")
            .to_string()
    };
    let err = write(&|c| c["use_dora"] = true.into());
    assert!(
        err.contains("use_dora") && err.contains("adapter_config.json"),
        "{err}"
    );
    let err = write(&|c| c["r"] = 8.into());
    assert!(err.contains("lora_A") && err.contains("[4, 64]"), "{err}");
    // Fewer targets than the file holds: tensors would be silently dropped.
    let err = write(&|c| c["target_modules"] = serde_json::json!(["q_proj"]));
    assert!(err.contains("tensors"), "{err}");
}
