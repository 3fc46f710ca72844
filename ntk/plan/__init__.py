"""Planning primitives, below both pipelines/ and train/: how coordinates become windows
(:mod:`.windows`: tiling, kept parts, blending of neighbours) and how work items become batches
(:mod:`.batching`: token budgets). Pure functions of numbers (numpy); import nothing from ntk but errors.
"""
