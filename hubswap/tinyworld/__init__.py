"""A tiny world where layer swapping has something to do: two languages, a math task, a family
of small Llamas trained on the CPU (``family``), and a synthetic MGSM (``mgsm``).

See docs/TINY_WORLD.md for the designs tried and what each one measured.
"""
