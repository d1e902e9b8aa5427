"""Fine-tuning: SFT with LoRA, DoRA, QLoRA or full weights, through TRL and PEFT."""
