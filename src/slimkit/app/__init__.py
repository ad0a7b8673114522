"""The application layer: the jobs behind the CLI (compress a model with a recipe, evaluate,
benchmark on the serving runtime, export a saved folder), kept apart from argument parsing so
the CLI, the demo, the benchmarks and the tests share one code path."""
