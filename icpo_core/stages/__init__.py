"""One module per ``icpo <stage>`` command.

Each module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports (torch,
transformers, datasets, verl, mlflow) inside functions, so that ``icpo --help`` and params validation stay fast.
"""
