"""The task catalogue: every templates/<task>.json and verbalizers/<task>.json, found the way the loader finds them."""

from __future__ import annotations

import json

import pytest

from promptcls import catalogue
from promptcls.catalogue import (
    EDITS,
    apply_input_edits,
    input_edits,
    list_tasks,
    load_template,
    load_verbalizer,
    task_entry,
)
from promptcls.template import Mask, Template
from promptcls.verbalizer import Verbalizer

TEMPLATE_FILES = catalogue._files("templates")
VERBALIZER_FILES = catalogue._files("verbalizers")
TASKS = list_tasks()


def _template_file(task: str) -> dict:
    return json.loads(TEMPLATE_FILES[task])


def _verbalizer_file(task: str) -> dict:
    return json.loads(VERBALIZER_FILES[task])


def _template_variants() -> list[tuple[str, str]]:
    return [(t, v) for t in TASKS for v in _template_file(t)["templates"]]


def _verbalizer_variants() -> list[tuple[str, str]]:
    return [(t, v) for t in TASKS for v in _verbalizer_file(t)["verbalizers"]]


def _key(task: str) -> str:
    return task.lower().replace("-", "").replace("_", "")


def test_at_least_twenty_tasks():
    assert len(TASKS) >= 20, TASKS


def test_every_task_has_both_files():
    assert set(TEMPLATE_FILES) == set(VERBALIZER_FILES)
    assert sorted(TEMPLATE_FILES) == TASKS


@pytest.mark.parametrize("task", TASKS)
def test_file_names_are_reachable_and_match_their_task(task):
    # load_template normalises the name it is given; a file whose name is not normalised could never be loaded
    assert _key(task) == task
    assert _template_file(task)["task"] == task
    assert _verbalizer_file(task)["task"] == task


@pytest.mark.parametrize("task", TASKS)
def test_defaults_exist(task):
    tf, vf = _template_file(task), _verbalizer_file(task)
    assert tf["default"] in tf["templates"]
    assert vf["default"] in vf["verbalizers"]
    assert load_template(task) == load_template(task, tf["default"])
    assert load_verbalizer(task) == load_verbalizer(task, vf["default"])


@pytest.mark.parametrize("task", TASKS)
def test_fields_and_labels_are_declared(task):
    fields = _template_file(task)["fields"]
    assert isinstance(fields, list) and fields and len(set(fields)) == len(fields)
    labels = _verbalizer_file(task)["labels"]
    assert isinstance(labels, list) and len(labels) >= 2
    assert len({json.dumps(label) for label in labels}) == len(labels)


@pytest.mark.parametrize(("task", "variant"), _template_variants())
def test_template_variant(task, variant):
    tf = _template_file(task)
    data = tf["templates"][variant]
    assert isinstance(data.get("source"), str) and data["source"].strip()
    t = load_template(task, variant)
    assert t == Template(data["template"], prompt_encoder=data.get("prompt_encoder", "none"))
    assert sum(isinstance(p, Mask) for seg in t.segments for p in seg) == 1
    # a variant may use a subset of the task's fields (for data that lacks one), and then says which
    assert set(t.fields) == set(data.get("fields", tf["fields"]))
    assert set(data.get("fields", [])) <= set(tf["fields"]) and data.get("fields") != tf["fields"]
    edits = data.get("input_edits", {})
    assert set(edits) <= set(t.fields) and all(edits.values())
    assert all(name in EDITS for names in edits.values() for name in names)
    assert input_edits(task, variant) == {f: tuple(e) for f, e in edits.items()}
    assert Template.from_dict(t.to_dict()) == t
    assert Template.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    rendered = t.render({f: f"<{f}>" for f in t.fields}, mask_token="<mask>")
    assert sum(r.text.count("<mask>") for r in rendered) == 1
    # a segment that ends in a space before [SEP] would give byte-level BPE a stray space token
    if t.is_pair:
        assert rendered[0].text == rendered[0].text.rstrip()


@pytest.mark.parametrize(("task", "variant"), _verbalizer_variants())
def test_verbalizer_variant(task, variant):
    vf = _verbalizer_file(task)
    data = vf["verbalizers"][variant]
    assert isinstance(data.get("source"), str) and data["source"].strip()
    # compared as JSON so that true/false are not taken for 1/0
    assert json.dumps([c["label"] for c in data["classes"]]) == json.dumps(vf["labels"])
    v = load_verbalizer(task, variant)
    assert json.dumps(list(v.classes)) == json.dumps(vf["labels"])
    assert all(v.words[c["label"]] == tuple(c["words"]) for c in data["classes"])
    assert Verbalizer.from_dict(v.to_dict()) == v
    assert Verbalizer.from_dict(json.loads(json.dumps(v.to_dict()))) == v


@pytest.mark.parametrize("name", ["sst-2", "SST-2", "sst_2", "SST2"])
def test_names_are_normalised(name):
    assert load_template(name) == load_template("sst2")
    assert load_verbalizer(name) == load_verbalizer("sst2")
    assert task_entry(name) == task_entry("sst2")


def test_normalised_multi_word_names():
    assert load_template("yelp_full") == load_template("yelp-full") == load_template("yelpfull")


def test_unknown_task_suggests_a_close_name():
    with pytest.raises(ValueError, match="unknown task 'mnlii'.*did you mean 'mnli'"):
        load_template("mnlii")
    with pytest.raises(ValueError, match="unknown task"):
        load_verbalizer("no-such-task-at-all")


def test_unknown_variant_lists_the_variants():
    with pytest.raises(ValueError, match="its variants are: .*lmbff"):
        load_template("sst2", "no-such-variant")
    with pytest.raises(ValueError, match="its variants are: .*lmbff"):
        load_verbalizer("sst2", "no-such-variant")


def test_catalogue_ships_in_the_wheel(tmp_path):
    """Build the wheel, unpack it away from the checkout, and load the catalogue from there."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("promptcls-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "promptcls/templates/sst2.json" in names and "promptcls/verbalizers/rte.json" in names
    assert "promptcls/data/demo_reviews.csv" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import promptcls, promptcls.catalogue as c; print(promptcls.__file__); print(len(c.list_tasks()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    assert out[0].startswith(str(site)) and int(out[1]) == len(list_tasks())


def test_input_edits_are_lm_bffs_and_opt_in():
    rows = [{"premise": "A man is sleeping.", "hypothesis": "He is asleep."}]
    assert load_template("snli").render(rows[0], mask_token="<mask>")[0].text == "A man is sleeping.? <mask>,"
    edited = apply_input_edits(rows, input_edits("snli"))
    assert edited == [{"premise": "A man is sleeping", "hypothesis": "he is asleep."}]
    assert load_template("snli").render(edited[0], mask_token="<mask>")[0].text == "A man is sleeping? <mask>,"
    assert rows[0]["premise"] == "A man is sleeping."  # the input is not changed
    assert input_edits("sst2") == {} and apply_input_edits(rows, {}) is rows


def test_input_edits_on_a_frame_follow_the_column_mapping():
    import pandas as pd

    frame = pd.DataFrame({"s1": ["One."], "s2": ["Two."], "label": [1]})
    out = apply_input_edits(frame, input_edits("rte"), columns={"premise": "s1", "hypothesis": "s2"})
    assert out.to_dict("records") == [{"s1": "One", "s2": "two.", "label": 1}]
    assert frame.s1.tolist() == ["One."]
    with pytest.raises(ValueError, match="unknown input edit 'shout'; the edits are: drop_last_character"):
        apply_input_edits(frame, {"s1": ["shout"]})


def test_single_field_variants_for_data_as_people_have_it():
    assert load_template("yahoo", "pet-0-question").fields == ("question",)
    assert load_template("dbpedia", "bbt").fields == ("content",)
    assert "0 negative, 1 positive" in task_entry("sst2")["templates"]["description"]
