"""What the tests stand on (no test module imports another; they all import from here):

- ``hub_server``: the test Hub, a stdlib HTTP server speaking the Hub API to the real client
  (the ``hub`` fixture of tests/conftest.py starts one per test module);
- ``recipes``: the one recipe builder (local or Hub models, optional [eval], [gate], [publish]);
- ``cli``: ``run_hubswap(...)``, the CLI in a fresh process importing this checkout;
- ``standins``: tiny stand-ins for the flagship recipe's three repos, with their real traits;
- ``numpy_family``: experts written without torch (run as a script in the core-install venvs);
- ``venvs``: uv venvs of the core dependencies, for the install tests;
- ``workflow_runner``: runs a GitHub workflow's own ``run:`` steps in order;
- ``mgsm``: MGSM rows and parquet files, as the test Hub serves the dataset;
- ``fixed_build``: the card's fixed build, read by the golden test;
- ``update_goldens``: ``python -m tests.support.update_goldens`` rewrites tests/golden;
- ``helpers``: small helpers (model folders reduced to their safetensors headers);
- ``engine_guard`` (and ``guard_site/``): makes the ``engine`` marker true by construction.
"""
