"""Verbalizer catalogue: one JSON file per task (installed as promptcls.verbalizers)."""
