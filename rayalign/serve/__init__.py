"""Ray Serve deployments: an OpenAI-compatible generation server (transformers backend with
dynamic batching, or vLLM through ``ray.serve.llm``) used for policies, baselines and judges."""
