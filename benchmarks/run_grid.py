"""Run a benchmark protocol (``fedlib grid``, :mod:`fedlib.protocol`): tasks x strategies x seeds, one CSV row each.

    python benchmarks/run_grid.py benchmarks/protocols/cpu-medium.yaml --out runs/cpu-medium \
        --results results/cpu-medium --readme docs/results.md
"""

from fedlib.protocol import main

if __name__ == "__main__":
    main()
