"""Recipes: complete uses of the general uniflow-hf APIs on one dataset (`uniflow_hf.recipes.fmnist`)."""
