"""ICPO (In-Context Steered Policy Optimization) reproduction: the library behind the pipeline's stages.

No Prefect or DVC in here: ``icpo_core.algorithm`` holds the method as pure torch functions, used by both
engines (``engines.local`` and ``engines.verl``); ``cli`` exposes one ``icpo <stage>`` command per DVC stage.
"""

__version__ = "0.1.0"
