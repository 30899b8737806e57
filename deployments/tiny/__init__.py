"""Tiny random test models, one module per family, apart from the serving code.

Each builder writes a complete model (weights, config, tokenizer) into a folder; a family
names its builders in its ``FAMILY.tiny`` recipes and ``tiny:<recipe>`` sources build them.
"""
