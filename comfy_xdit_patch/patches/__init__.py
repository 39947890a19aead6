"""Per-model adapters: what each model family needs to run sequence-parallel through ComfyUI's hooks."""
