"""The prompt template shared by run and finetune."""

import json

import pytest

from adpulse_batch.errors import SettingsError
from adpulse_batch.prompts import ADAPTER_METADATA, Template, adapter_template, encode, field_text, fit_prompt


def test_default_template_is_the_one_the_original_adapter_learned():
    prompt = Template().render("Harem pants", "A style of pants with a dropped crotch.")
    assert prompt == (
        "You are the world's best Marketing expert. Below is a product and description, please write an "
        "exceptional ad for this product which will capture the readers attention and increase the product "
        "recall value.\n\n### Product and Description:\nHarem pants: A style of pants with a dropped crotch.\n\n### Ad:\n"
    )
    assert Template().prefix.endswith("### Product and Description:\n")


def test_empty_field_leaves_no_trailing_space():
    assert "\nSundress:\n" in Template().render("Sundress", "")


def test_template_needs_a_product_placeholder(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Write an ad for {description}")
    with pytest.raises(SettingsError, match=r"--template .* has no \{product\} placeholder"):
        Template.from_file(path)
    path.write_text("Ad for {product} ({description}):\n")
    assert Template.from_file(path).render("Mug", "blue") == "Ad for Mug (blue):\n"


def test_a_misspelt_placeholder_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Ad for {product}: {descripton}\n")
    with pytest.raises(SettingsError) as refused:
        Template.from_file(path)
    assert str(refused.value) == f"--template {path} has an unknown placeholder {{descripton}}; the known ones are {{product}} and {{description}}"
    with pytest.raises(SettingsError, match=r"unknown placeholders \{Product\}, \{ description \}, \{0\}; the known"):
        Template("{product} {Product} { description } {0}")
    # Other braces are text, sent as they are; there are no escapes.
    text = 'Ad for {product} as JSON {"ad": "..."} or {{ }} {} {{description}}'
    assert Template(text).render("Mug", "blue") == 'Ad for Mug as JSON {"ad": "..."} or {{ }} {} {blue}'


@pytest.mark.parametrize(
    "value, text",
    [
        (None, ""),
        (float("nan"), ""),
        (12.5, "12.5"),
        (7, "7"),
        ("  Harem\tpants \n(new)\x00 ", "Harem pants (new)"),
        ("Crème ☕ 抹茶", "Crème ☕ 抹茶"),
    ],
)
def test_field_text(value, text):
    assert field_text(value) == text


def test_long_descriptions_are_cut_to_fit(test_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(test_model[0])
    template = Template()
    description = "A soft and breathable cotton shirt for every season. " * 40
    ids = encode(tokenizer, template.render("Shirt", description))
    prompt = fit_prompt(template, tokenizer, "Shirt", description, ids, 120)
    assert prompt.truncated
    assert len(prompt.ids) <= 120
    assert prompt.text.startswith(template.prefix + "Shirt: A soft and breathable")
    assert prompt.text.endswith("\n\n### Ad:\n")  # the template itself is never cut
    with pytest.raises(SettingsError, match="--max-prompt-tokens 20 is less than the template alone needs"):
        fit_prompt(template, tokenizer, "Shirt", description, ids, 20)


def test_adapter_directory_carries_its_template(tmp_path):
    assert adapter_template(tmp_path) is None
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"template": "Product: {product}\nAd:"}))
    assert adapter_template(tmp_path) == Template("Product: {product}\nAd:")


def test_rows_are_one_prompt_when_their_fields_are_the_same():
    from adpulse_batch.catalog import Chunk
    from adpulse_batch.plan import Planner

    records = [
        {"name": "Sofa", "description": "Red velvet"},
        {"name": "Sofa: red velvet", "description": "Oak legs"},
        {"name": "Sofa", "description": "Red velvet"},
        {"name": "Sofa", "description": "red velvet: Oak legs"},
    ]
    plan = Planner(Template(), "name", "description").plan(Chunk(10, records=records))
    assert [(p.fields, p.rows) for p in plan.prompts] == [
        (("Sofa", "Red velvet"), [10, 12]),
        (("Sofa: red velvet", "Oak legs"), [11]),
        # Renders as the row above, but a prompt too long is cut field by field: not the same prompt.
        (("Sofa", "red velvet: Oak legs"), [13]),
    ]
    assert plan.prompts[1].text == plan.prompts[2].text
