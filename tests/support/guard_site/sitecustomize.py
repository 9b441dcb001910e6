# Run by Python at start-up in CLI processes that a test without `engine` starts through
# tests/support/cli.py: importing torch, transformers or vLLM there fails (tests/support/engine_guard.py).
from tests.support.engine_guard import install_in_child

install_in_child()
