"""The prompt template shared by run and finetune."""

import json

import pytest

from adpulse_batch.errors import SettingsError
from adpulse_batch.prompts import ADAPTER_METADATA, CHAT_TEMPLATE_KWARGS, INSTRUCTION, PromptBuilder, Template, adapter_template, field_text


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


def tokenizer_of(model_dir):
    from adpulse_batch.model import load_tokenizer
    from adpulse_batch.settings import ModelSettings

    return load_tokenizer(ModelSettings(model=str(model_dir), adapter=None))


@pytest.mark.parametrize("chat", [False, True])
def test_long_descriptions_are_cut_to_fit(family_models, chat):
    tokenizer = tokenizer_of(family_models("llama")[0])
    description = "A soft and breathable cotton shirt for every season. " * 40
    builder = PromptBuilder(Template(chat=chat), tokenizer, 120)
    prompt = builder.build("Shirt", description)
    assert prompt.truncated
    assert len(prompt.ids) <= 120
    assert prompt.ids == builder.encode(prompt.text)
    assert "Shirt: A soft and breathable" in prompt.text
    # The template itself is never cut.
    assert prompt.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n" if chat else "\n\n### Ad:\n")
    alone = len(PromptBuilder(Template(chat=chat), tokenizer, 256).build("", "").ids)
    with pytest.raises(SettingsError, match=f"--max-prompt-tokens {alone - 1} is less than the template alone needs"):
        PromptBuilder(Template(chat=chat), tokenizer, alone - 1).build("Shirt", description)


@pytest.mark.parametrize("arch, bos", [("bloom", False), ("llama", True), ("qwen2", False)])
def test_plain_prompts_are_encoded_as_the_tokenizer_does_by_default(family_models, arch, bos):
    tokenizer = tokenizer_of(family_models(arch)[0])
    text = Template().render("Mug", "Blue")
    prompt = PromptBuilder(Template(), tokenizer, 256).build("Mug", "Blue")
    assert prompt.ids == tokenizer(text)["input_ids"]
    assert (prompt.ids[0] == tokenizer.bos_token_id) == bos


def test_chat_messages_are_the_instruction_and_the_row():
    assert Template().messages("Harem pants", "Loose legs.") == [
        {"role": "system", "content": INSTRUCTION},
        {"role": "user", "content": "Harem pants: Loose legs."},
    ]
    assert Template("Product: {product}\nWrite an ad.").messages("Mug", "") == [
        {"role": "user", "content": "Product: Mug\nWrite an ad."}
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_chat_prompts_are_the_tokenizers_chat_template(family_models, tmp_path, arch):
    from adpulse_batch.testmodel import make_test_model

    if arch == "gemma":  # its chat template refuses a system message: the instruction opens the user's
        make_test_model(tmp_path / arch, arch=arch)
        tokenizer = tokenizer_of(tmp_path / arch)
        messages = [{"role": "user", "content": f"{INSTRUCTION}\n\nMug: Blue and big."}]
    else:
        tokenizer = tokenizer_of(family_models(arch)[0])
        messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "Mug: Blue and big."}]
    builder = PromptBuilder(Template(chat=True), tokenizer, 256)
    # Llama 3's template writes today's date unless given one: the prompt must not change nightly.
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, **CHAT_TEMPLATE_KWARGS)["input_ids"]
    prompt = builder.build("Mug", "Blue and big.")
    assert prompt.ids == expected
    assert ("Today Date: 26 Jul 2024" in prompt.text) == (arch == "llama")
    # The prefix every row shares is where those ids start.
    prefix = builder.prefix_ids()
    assert len(prefix) > 5 and expected[: len(prefix)] == prefix


def test_adapter_directory_carries_its_template(tmp_path):
    assert adapter_template(tmp_path) is None
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"template": "Product: {product}\nAd:"}))
    assert adapter_template(tmp_path) == Template("Product: {product}\nAd:")
    (tmp_path / ADAPTER_METADATA).write_text(json.dumps({"template": "Product: {product}\nAd:", "chat": True}))
    assert adapter_template(tmp_path) == Template("Product: {product}\nAd:", chat=True)


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
