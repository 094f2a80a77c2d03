"""fedlib: FedPepTAO (Che et al., EMNLP 2023), federated partial prompt tuning with adaptive optimization.

Import the submodules you need (``fedlib.tasks``, ``fedlib.classifier``, ...); importing the package
itself loads nothing heavy and has no side effects.
"""

__version__ = "0.1.0"
