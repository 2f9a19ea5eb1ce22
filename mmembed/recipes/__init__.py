"""Recipes: one YAML file says which data, encoders, fusion heads, CTR models and checks;
one call runs the cross product, caching every step.

    from mmembed.recipes import load_recipe, run_recipe
    records = run_recipe(load_recipe("recipes/demo.yaml", ["seeds=[1,2]"]))
"""
from __future__ import annotations

from mmembed.recipes.runner import judge, run_recipe
from mmembed.recipes.schema import (REFERENCE_TABLES, DataSpec, EmbeddingSpec, ModelSpec, Recipe,
                                    RecipeError, load_recipe, parse_recipe)

__all__ = ["REFERENCE_TABLES", "DataSpec", "EmbeddingSpec", "ModelSpec", "Recipe", "RecipeError",
           "judge", "load_recipe", "parse_recipe", "run_recipe"]
