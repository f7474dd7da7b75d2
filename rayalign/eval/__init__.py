"""Safety evaluation: benchmarks, judges' logic, metrics, reports (pure), and the wiring that
sends prompts through Ray Data to a Ray Serve endpoint (:mod:`rayalign.eval.runner`)."""
