"""Model loading: resolve a model name or path (Hugging Face Hub or local) and build the policy and reference models."""
