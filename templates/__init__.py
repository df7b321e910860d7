"""Template catalogue: one JSON file per task (installed as promptcls.templates)."""
