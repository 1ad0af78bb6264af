from __future__ import annotations

import json

import pytest

from llm_etl_provider.contract.answers import TEXT_ANSWER_SCHEMA
from llm_etl_provider.contract.invocation import DEFAULT_ENTITY_TYPES, TASK_NAMES
from llm_etl_provider.worker.exceptions import ConfigurationError, InvalidOutputError, MissingFieldError
from llm_etl_provider.worker.tasks import PromptTemplate, task_for

CUSTOM_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": 80}},
    "required": ["summary"],
}


def test_template_renders_fields_and_literal_braces():
    template = PromptTemplate("Drug {drug}: {review} {{not a field}}")
    assert template.fields == ("drug", "review")
    assert template.render({"drug": "X", "review": "good", "other": 1}) == "Drug X: good {not a field}"


def test_template_renders_non_strings_as_json():
    assert PromptTemplate("{n} {tags}").render({"n": 3, "tags": ["a"]}) == '3 ["a"]'


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_empty_field_is_reported_by_name(value):
    with pytest.raises(MissingFieldError, match="'review'"):
        PromptTemplate("{review}").render({"review": value})


def test_without_a_template_the_prompt_is_the_whole_record_but_its_id():
    """Any JSONL or CSV works without naming a field: each field in the record's order, a line each, a
    string as it is and another value as compact JSON; the id, and empty fields, are left out."""
    template = PromptTemplate(None, excluded=("uid",))
    record = {
        "title": "Late parcel",
        "uid": 7,
        "stars": 2,
        "tags": ["a", "b"],
        "meta": {"x": None},
        "note": " ",
    }
    assert template.render(record) == 'title: Late parcel\nstars: 2\ntags: ["a","b"]\nmeta: {"x":null}'
    assert template.fields_of(record) == ("title", "stars", "tags", "meta")
    assert template.render({"uid": 1, "text": "ünïcode\nand lines"}) == "text: ünïcode\nand lines"


@pytest.mark.parametrize("record", [{"uid": 1}, {"uid": 1, "text": "", "other": None}])
def test_a_record_with_nothing_but_its_id_is_missing_its_fields(record):
    with pytest.raises(MissingFieldError, match="no field to put in the prompt beside 'uid'") as info:
        PromptTemplate(None, excluded=("uid",)).render(record)
    assert info.value.reason == "missing_field"


def test_a_task_without_a_template_leaves_out_the_workers_id_field():
    task = task_for("sentiment", id_field="review_id")
    assert task.template.render({"review_id": "r1", "review": "Great"}) == "review: Great"


def test_a_task_without_a_template_never_shows_the_model_the_label_column():
    """The label column is the reference answer the run's report measures the model against."""
    task = task_for("sentiment", label_field="rating_label")
    record = {"id": "r1", "review": "Great", "rating_label": "positive"}
    assert task.template.render(record) == "review: Great"
    assert task.fingerprint != task_for("sentiment").fingerprint  # another id field, other prompts
    assert task.fingerprint != task_for("sentiment", id_field="review_id", template="{review}").fingerprint


@pytest.mark.parametrize("template", ["{x.__class__}", "{x[0]}", "{x!r}", "{x:>10}", "{0}", "no fields", "{"])
def test_templates_that_reach_into_objects_or_use_no_field_are_refused(template):
    with pytest.raises(ConfigurationError):
        PromptTemplate(template)


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n != "custom"])
def test_catalogue_tasks_have_valid_object_schemas(name):
    task = task_for(name, template="{review}", **({"categories": ("a", "b")} if name == "tags" else {}))
    assert task.schema["type"] == "object"
    assert task.system_prompt
    assert task.max_tokens > 0


def test_sentiment_accepts_its_labels_and_rejects_others_without_echoing_them():
    task = task_for("sentiment")
    assert task.parse('{"sentiment": "neutral"}', {}) == {"sentiment": "neutral"}
    with pytest.raises(InvalidOutputError) as info:
        task.parse('{"sentiment": "CANARY-ecstatic"}', {})
    assert "$.sentiment" in info.value.detail
    assert "CANARY" not in info.value.detail


def test_answers_that_are_not_json_are_invalid():
    with pytest.raises(InvalidOutputError, match="not JSON"):
        task_for("sentiment").parse('{"sentiment": "posi', {})


def test_tags_are_limited_to_the_given_categories():
    task = task_for("tags", categories=("pain", "sleep", "pain", " "))
    assert task.schema["properties"]["tags"]["items"]["enum"] == ["pain", "sleep"]
    assert "pain, sleep" in task.system_prompt
    with pytest.raises(InvalidOutputError, match=r"\$\.tags\[0\]"):
        task.parse('{"tags": ["cost"]}', {})


def test_tags_need_the_categories_to_choose_from():
    """No list of categories fits any data: the task refuses to guess, naming the flag."""
    with pytest.raises(ConfigurationError, match=r"task 'tags' needs categories \(--categories\)"):
        task_for("tags")


def test_entities_default_to_types_found_in_any_text():
    task = task_for("entities")
    assert task.schema["properties"]["entities"]["items"]["properties"]["type"]["enum"] == list(
        DEFAULT_ENTITY_TYPES
    )
    assert set(DEFAULT_ENTITY_TYPES) == {"person", "organization", "location", "date"}


def test_entities_of_the_whole_record_are_located_in_its_shown_fields():
    answer = task_for("entities").parse(
        json.dumps({"entities": [{"text": "Ada", "type": "person"}]}), {"id": "Ada-1", "name": "Ada Lovelace"}
    )
    assert answer["entities"][0] | {} == {"text": "Ada", "type": "person", "start": 0, "end": 3}


def test_entities_get_spans_in_the_source_text_or_null_when_invented():
    task = task_for("entities", template="{review}", entity_types=("drug",))
    answer = task.parse(
        json.dumps(
            {"entities": [{"text": "Ibuprofen", "type": "drug"}, {"text": "aspirin", "type": "drug"}]}
        ),
        {"review": "I took ibuprofen for my headache."},
    )
    assert answer["entities"][0] | {} == {"text": "Ibuprofen", "type": "drug", "start": 7, "end": 16}
    assert answer["entities"][1]["start"] is None


def test_custom_task_needs_a_system_prompt_and_answers_json_with_a_schema_or_text_without():
    with pytest.raises(ConfigurationError, match=r"task 'custom' needs system_prompt \(--system-prompt\)"):
        task_for("custom", template="{text}", schema=json.dumps(CUSTOM_SCHEMA))
    task = task_for("custom", template="{text}", system_prompt="Summarise.", schema=json.dumps(CUSTOM_SCHEMA))
    assert task.parse('{"summary": "short"}', {}) == {"summary": "short"}
    assert task.answer_schema == CUSTOM_SCHEMA  # the server constrains the answer to it
    # without a template, the whole record
    whole = task_for("custom", system_prompt="Summarise.", schema=json.dumps(CUSTOM_SCHEMA))
    assert whole.template.render({"id": 1, "text": "x"}) == "text: x"
    # without a schema, a free-text answer: unconstrained, kept whole, never empty
    text = task_for("custom", template="{text}", system_prompt="Summarise.")
    assert text.answer_schema is None
    assert text.parse("Short: it {works}.", {}) == {"text": "Short: it {works}."}
    with pytest.raises(InvalidOutputError, match="empty"):
        text.parse("  \n", {})
    assert text.fingerprint != task.fingerprint


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "not valid"),
        ({"type": "array"}, "JSON object"),
    ],
)
def test_custom_schemas_are_checked(schema, message):
    with pytest.raises(ConfigurationError, match=message):
        task_for("custom", template="{text}", system_prompt="x", schema=json.dumps(schema))


def test_catalogue_tasks_refuse_a_schema_and_unknown_tasks_are_named():
    with pytest.raises(ConfigurationError, match="fixed schema"):
        task_for("sentiment", schema=json.dumps(CUSTOM_SCHEMA))
    with pytest.raises(ValueError, match=r"--task must be one of sentiment, .*, not 'summarise'"):
        task_for("summarise")


def test_fingerprint_changes_with_what_decides_the_output():
    base = task_for("tags", template="{review}", categories=("a", "b"))
    assert base.fingerprint == task_for("tags", template="{review}", categories=("a", "b")).fingerprint
    assert base.fingerprint != task_for("tags", template="{text}", categories=("a", "b")).fingerprint
    assert base.fingerprint != task_for("tags", template="{review}", categories=("a",)).fingerprint
    assert base.fingerprint != task_for("tags", categories=("a", "b")).fingerprint  # the whole record


def test_repeats_in_set_valued_fields_are_dropped_before_validation():
    task = task_for("tags", categories=("pain", "sleep"))
    assert task.parse('{"tags": ["pain", "sleep", "pain", "pain"]}', {}) == {"tags": ["pain", "sleep"]}
    nested = task_for(
        "custom",
        template="{text}",
        system_prompt="x",
        schema=json.dumps(
            {
                "type": "object",
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
                    },
                    "plain": {"type": "array"},
                },
            }
        ),
    )
    assert nested.parse('{"groups": [[1, 1, 2]], "plain": [1, 1]}', {}) == {
        "groups": [[1, 2]],
        "plain": [1, 1],
    }


def test_a_custom_schema_is_inline_json_or_a_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(CUSTOM_SCHEMA))
    task = task_for("custom", template="{text}", system_prompt="Summarise.", schema=str(path))
    assert task.schema == CUSTOM_SCHEMA
    with pytest.raises(ConfigurationError, match="cannot read the schema file"):
        task_for("custom", template="{text}", system_prompt="x", schema=str(tmp_path / "absent.json"))
    path.write_text("[1]")
    with pytest.raises(ConfigurationError, match="must be a JSON object"):
        task_for("custom", template="{text}", system_prompt="x", schema=str(path))


def test_a_custom_task_s_empty_schema_is_a_free_text_answer_as_it_always_was():
    assert task_for("custom", system_prompt="Say it.", schema="{}").schema == TEXT_ANSWER_SCHEMA
