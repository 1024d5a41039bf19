"""π0 / π0.5 vision-language-action models in Flax linen, weight-compatible with openpi.

Owns the model configuration (`config.Pi0Config`), the SigLIP vision tower (`siglip`), the Gemma
mixture of the PaliGemma LLM and the action expert (`gemma`), LoRA (`lora`), the π0 glue with the
pure functional API (`pi0`: init_params, compute_loss, sample_actions, prefill, predict_velocity),
the value head used by critics (`value_head`) and the prompt tokenizer (`tokenizer`).
"""
