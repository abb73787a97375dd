"""`adpulse-batch finetune`: examples and labels, the round trip through `run`, resume,
the adapter directory, and one-line errors for bad data and flags."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from adpulse_batch.cli import cli
from adpulse_batch.prompts import Template, encode, field_text
from conftest import read_csv, write_csv

# Short ads in the test tokenizer's words, so a tiny model can learn them in seconds.
ADS = [
    ["Harem pants", "Loose-fitting pants with a dropped crotch.", "Discover Harem Pants! Unique   bohemian vibes. Shop now!"],
    ["Lace-up sandals", "Sandals with laces that wrap around the ankle.", "Walk in elegance with our Lace-up Sandals!"],
    ["Sundress", "A flowery yellow sundress with blue polka dots.", "Brighten every summer day with our Sundress."],
    ["Wireless earbuds", "Noise cancellation and twenty hours of battery.", "Twenty hours of pure sound. Order now!"],
    ["Water bottle", "Stainless steel bottle that keeps drinks cold.", " Stay refreshed all day. Free shipping!"],
    ["Coffee mug", "Ceramic mug, dishwasher safe, 350 ml.", "Start your morning right with a cup you love."],
    ["Running shoes", "A cushioned sole and a breathable mesh upper.", "Run further, feel lighter. Shop now!"],
    ["Yoga mat", "Non-slip, six millimetres thick.", "Find your balance today!"],
]
ALL_LINEAR = "query_key_value,dense,dense_h_to_4h,dense_4h_to_h"
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model trains faster on one thread, and far faster where the two cores are
    shared with other work: two threads then wait on each other (measured: 8 s against 53 s
    for the round trip's 200 steps on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def finetune_cli(*args, env=None):
    return CliRunner().invoke(cli, ["finetune", *[str(a) for a in args]], env=env, catch_exceptions=False)


def tokenizer_of(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def trained(test_model, tmp_path_factory):
    """An adapter trained on ADS until it knows them: (data csv, adapter dir, finetune result)."""
    root = tmp_path_factory.mktemp("trained")
    data = write_csv(root / "ads.csv", ["product", "description", "ad"], ADS)
    result = finetune_cli(
        data, "-o", root / "adapter", "--model", test_model[0], "--lora-target-modules", ALL_LINEAR,
        "--learning-rate", 1e-2, "--batch-size", 8, "--grad-accum", 1, "--max-steps", 200, "--warmup-steps", 10,
        "--eval-fraction", 0, "--save-steps", 0, "--log-steps", 50, "--merge",
    )
    assert result.exit_code == 0, result.stderr
    return data, root / "adapter", result


def test_example_masks_the_prompt_and_ends_with_eos(test_model, tmp_path):
    from adpulse_batch.catalog import open_catalog
    from adpulse_batch.finetune import IGNORE, Padder, build_example
    from adpulse_batch.plan import Planner, encode_prompts
    from adpulse_batch.prompts import PromptBuilder
    from adpulse_batch.training_data import TrainingRow

    tokenizer = tokenizer_of(test_model[0])
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (3, 2)
    template = Template()
    builder = PromptBuilder(template, tokenizer, 256)
    row = TrainingRow("Coffee mug", "Ceramic mug, dishwasher safe.", "Start your morning right!")
    example, truncated = build_example(builder, row)
    prompt = encode(tokenizer, template.render(row.product, row.description))
    ad = encode(tokenizer, row.ad)
    assert not truncated
    assert example.input_ids == prompt + ad + [2]
    assert example.labels == [IGNORE] * len(prompt) + ad + [2]

    # The prompt is token for token what `run` feeds the model for the same row.
    catalog = open_catalog(write_csv(tmp_path / "row.csv", ["name", "description"], [[row.product, row.description]]))
    plan = Planner(template, "name", "description").plan(next(catalog.chunks()))
    encode_prompts(builder, plan.prompts)
    assert plan.prompts[0].prompt.ids == prompt

    short, _ = build_example(builder, TrainingRow("Mug", "", "Buy it!"))
    batch = Padder(tokenizer.pad_token_id)([example, short])
    width = len(example.input_ids)
    pad = width - len(short.input_ids)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["input_ids"][1, -pad:].tolist() == [3] * pad
    assert batch["labels"][1, -pad:].tolist() == [IGNORE] * pad
    assert batch["attention_mask"][1].tolist() == [1] * len(short.input_ids) + [0] * pad
    assert batch["labels"][1, len(short.input_ids) - 1].item() == 2  # the EOS label, right before the padding
    # Padding is masked by position: a tokenizer padding with its EOS id still learns the EOS.
    same_ids = Padder(pad_id=2)([example, short])
    assert same_ids["labels"][1, : len(short.input_ids)].tolist() == short.labels


def test_long_prompts_are_cut_as_run_cuts_them(test_model):
    from adpulse_batch.finetune import IGNORE, build_example
    from adpulse_batch.prompts import PromptBuilder
    from adpulse_batch.training_data import TrainingRow

    tokenizer = tokenizer_of(test_model[0])
    row = TrainingRow("Shirt", "A soft cotton shirt. " * 60, "Feel good in what you wear.")
    example, truncated = build_example(PromptBuilder(Template(), tokenizer, 100), row)
    ad = encode(tokenizer, row.ad) + [2]
    assert truncated
    assert example.labels == [IGNORE] * (len(example.labels) - len(ad)) + ad
    assert len(example.input_ids) - len(ad) <= 100


def test_round_trip_run_writes_the_trained_ads_and_stops_by_itself(trained, test_model, tmp_path):
    data, adapter, result = trained
    assert "trained 200 steps in" in result.stderr.splitlines()[-1]
    out, report = tmp_path / "ads.csv", tmp_path / "report.json"
    catalog = write_csv(tmp_path / "catalog.csv", ["name", "description"], [r[:2] for r in ADS])
    # The adapter directory is all run needs: base model, tokenizer and template come from it.
    ran = CliRunner().invoke(
        cli, ["run", str(catalog), "-o", str(out), "--adapter", str(adapter), "--max-new-tokens", str(MAX_NEW_TOKENS),
              "--report", str(report), "-q"], catch_exceptions=False,
    )
    assert ran.exit_code == 0, ran.stderr
    expected = [field_text(ad) for _, _, ad in ADS]
    tokenizer = tokenizer_of(adapter)
    assert max(len(encode(tokenizer, ad)) for ad in expected) < MAX_NEW_TOKENS - 8
    written = [row[2] for row in read_csv(out)[1]]
    assert sum(a == b for a, b in zip(written, expected)) >= 7, list(zip(written, expected))

    # Each reproduced ad ended with the EOS token the model learned, not at the token limit.
    from adpulse_batch.generate import load_generator
    from adpulse_batch.model import load_template
    from adpulse_batch.prompts import PromptBuilder
    from adpulse_batch.settings import GenerationSettings, ModelSettings

    model_settings = ModelSettings(adapter=str(adapter), device="cpu")
    builder = PromptBuilder(load_template(model_settings, None), tokenizer, 256)
    generator = load_generator(model_settings, builder, GenerationSettings(max_new_tokens=MAX_NEW_TOKENS), device=torch.device("cpu"))
    generations = generator.generate([builder.build(p, d) for p, d, _ in ADS], batch_size=8)
    stopped = [g[0].finish == "eos" and g[0].text == ad for g, ad in zip(generations, expected)]
    assert sum(stopped) >= 7
    assert json.loads(report.read_text())["new_tokens"] < len(ADS) * MAX_NEW_TOKENS / 2


@pytest.mark.parametrize("arch, chat", [("llama", False), ("qwen2", True)])
def test_round_trip_on_other_families(family_models, tmp_path, arch, chat):
    # Llama: BOS added and two end-of-text ids; Qwen2 with --chat: trained and run on its
    # chat template, which the adapter records, so run needs no --chat.
    model_dir, _ = family_models(arch)
    data = write_csv(tmp_path / "ads.csv", ["product", "description", "ad"], ADS)
    trained = finetune_cli(
        data, "-o", tmp_path / "adapter", "--model", model_dir, "--lora-target-modules", "all-linear",
        *(["--chat"] if chat else []), "--learning-rate", 1e-2, "--batch-size", 8, "--grad-accum", 1, "--max-steps", 200,
        "--warmup-steps", 10, "--eval-fraction", 0, "--save-steps", 0, "--log-steps", 50,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    meta = json.loads((tmp_path / "adapter" / "adpulse.json").read_text())
    assert meta["chat"] is chat and meta["settings"]["lora"]["target_modules"] == ["all-linear"]
    catalog = write_csv(tmp_path / "catalog.csv", ["name", "description"], [r[:2] for r in ADS])
    ran = CliRunner().invoke(
        cli, ["run", str(catalog), "-o", str(tmp_path / "ads.out.csv"), "--adapter", str(tmp_path / "adapter"),
              "--max-new-tokens", str(MAX_NEW_TOKENS), "--report", str(tmp_path / "report.json"), "-q"], catch_exceptions=False,
    )  # fmt: skip
    assert ran.exit_code == 0, ran.stderr
    written = [row[2] for row in read_csv(tmp_path / "ads.out.csv")[1]]
    expected = [field_text(ad) for _, _, ad in ADS]
    assert sum(a == b for a, b in zip(written, expected)) >= 7, list(zip(written, expected))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chat"] is chat and report["new_tokens"] < len(ADS) * MAX_NEW_TOKENS / 2  # it stopped by itself


def test_merged_model_writes_the_same_ads(trained, tmp_path):
    _, adapter, _ = trained
    catalog = write_csv(tmp_path / "catalog.csv", ["name", "description"], [r[:2] for r in ADS[:4]])
    common = ["--max-new-tokens", str(MAX_NEW_TOKENS), "-q"]
    for name, flags in (("adapter", ["--adapter", str(adapter)]), ("merged", ["--adapter", "none", "--model", str(adapter / "merged")])):
        ran = CliRunner().invoke(cli, ["run", str(catalog), "-o", str(tmp_path / f"{name}.csv"), *flags, *common], catch_exceptions=False)
        assert ran.exit_code == 0, ran.stderr
    assert read_csv(tmp_path / "merged.csv") == read_csv(tmp_path / "adapter.csv")


def test_adapter_directory_is_plain_peft_and_describes_itself(trained, test_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adpulse_batch import __version__
    from adpulse_batch.training_data import read_training_data

    data, adapter, _ = trained
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(test_model[0].resolve())
    assert config["r"] == 16 and config["lora_alpha"] == 32 and sorted(config["target_modules"]) == sorted(ALL_LINEAR.split(","))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), adapter)
    assert any(name.endswith("lora_B.default.weight") and p.abs().sum() > 0 for name, p in model.named_parameters())
    assert (adapter / "tokenizer_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    meta = json.loads((adapter / "adpulse.json").read_text())
    assert meta["version"] == __version__
    assert meta["template"] == Template().text
    assert meta["base_model"] == str(test_model[0].resolve())
    assert meta["columns"] == {"product": "product", "description": "description", "ad": "ad"}
    assert meta["data"]["sha256"] == read_training_data(str(data), eval_fraction=0).fingerprint
    assert (meta["data"]["train_rows"], meta["data"]["eval_rows"]) == (8, 0)
    assert meta["settings"]["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ALL_LINEAR.split(",")}
    training = meta["settings"]["training"]
    assert (training["learning_rate"], training["batch_size"], training["grad_accum"], training["max_steps"]) == (0.01, 8, 1, 200)
    assert (training["warmup_steps"], training["seed"], training["quantize"]) == (10, 42, None)
    assert meta["settings"]["precision"] == "float32"
    assert [step for step, _ in meta["history"]["train"]] == [50, 100, 150, 200]
    assert meta["history"]["train"][-1][1] < 0.1 < meta["history"]["train"][0][1]
    result = meta["result"]
    assert result["steps"] == 200 and result["train_loss"] == meta["history"]["train"][-1][1] and result["eval_loss"] is None
    assert 0 < result["trainable_parameters"] < result["total_parameters"] and result["seconds"] > 0


def test_resume_gives_the_weights_of_an_uninterrupted_run(test_model, tmp_path):
    from safetensors.torch import load_file

    data = write_csv(tmp_path / "ads.csv", ["product", "description", "ad"], ADS)
    common = ["--model", test_model[0], "--batch-size", 2, "--grad-accum", 2, "--max-steps", 8, "--warmup-steps", 2,
              "--save-steps", 4, "--eval-steps", 3, "--log-steps", 2, "--eval-fraction", 0.25, "--learning-rate", 1e-2]
    whole = finetune_cli(data, "-o", tmp_path / "whole", *common)
    assert whole.exit_code == 0, whole.stderr
    # A run stopped after its step-4 checkpoint leaves that checkpoint and nothing else.
    (tmp_path / "stopped").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", tmp_path / "stopped" / "checkpoint-4")
    resumed = finetune_cli(data, "-o", tmp_path / "stopped", *common, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "checkpoint-4" in resumed.stderr
    assert "step 2/8: train loss" in whole.stderr and "step 2/8: train loss" not in resumed.stderr  # steps 1-4 not retrained
    a, b = load_file(tmp_path / "whole" / "adapter_model.safetensors"), load_file(tmp_path / "stopped" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    history = [json.loads((tmp_path / d / "adpulse.json").read_text())["history"] for d in ("whole", "stopped")]
    assert history[0] == history[1] and [s for s, _ in history[0]["eval"]] == [3, 6, 8]

    # Resuming with other settings would be neither run: refused, naming the setting.
    other = finetune_cli(data, "-o", tmp_path / "stopped", *common, "--resume", "--lora-r", 8)
    assert other.exit_code == 2
    assert other.stderr.startswith("Error: --resume: ") and "was trained with lora.r 16, this run has 8" in other.stderr
    again = finetune_cli(data, "-o", tmp_path / "whole", *common)
    assert again.exit_code == 2
    assert again.stderr.strip() == (
        f"Error: -o {tmp_path / 'whole'} already holds an adapter or checkpoints; "
        "pass --resume to continue its training, or name a new directory"
    )


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.csv", b"product,description\nMug,Blue\n",
         "Error: no ad column found (looked for ad, ad_copy, ad_text, advert, advertisement); "
         "its columns are: 'product', 'description'; name it with --ad-column COLUMN"),
        ("d.csv", b"title,body,ad_copy\nMug,Blue,\nPen,Black,  \n,,Buy it\n",
         "Error: {path} has no usable training rows (3 read, 2 with an empty ad, 1 with no product name or description)"),
        ("d.csv", b"product,description,ad\n",
         "Error: {path} has no usable training rows (0 read)"),
        ("d.csv", "product,description,ad\nCrème,x,y\n".encode("cp1252"),
         "Error: {path} line 2 is not valid utf-8 (byte 0xe8); pass the file's encoding with --encoding, e.g. --encoding cp1252"),
        ("d.parquet", b"not parquet", "Error: {path} is not a valid Parquet file: "),
        ("d.txt", b"product,description,ad\n", "Error: input {path} has the suffix '.txt'; use one of .csv, .parquet, .jsonl"),
    ],
)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(test_model, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    result = finetune_cli(path, "-o", tmp_path / "adapter", "--model", test_model[0])
    assert result.exit_code == 2
    assert result.stderr.startswith(message.format(path=path))
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "adapter").exists()


def test_missing_data_and_unreachable_hub_dataset(test_model, tmp_path):
    result = finetune_cli(tmp_path / "nope.csv", "-o", tmp_path / "a", "--model", test_model[0])
    assert (result.exit_code, result.stderr.strip()) == (2, f"Error: data {tmp_path / 'nope.csv'} does not exist")
    # Tests run with HF_HUB_OFFLINE=1: the Hub cannot be reached.
    result = finetune_cli("hf://datasets/c-s-ale/Product-Descriptions-and-Ads", "-o", tmp_path / "a", "--model", test_model[0])
    line = result.stderr.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1
    assert line.startswith("Error: cannot read the Hub dataset hf://datasets/c-s-ale/Product-Descriptions-and-Ads (")
    assert line.endswith(
        "download it where the Hub is reachable "
        "(`hf download c-s-ale/Product-Descriptions-and-Ads --repo-type dataset --local-dir DIR`) and pass DIR"
    )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "4bit"], "Error: --quantize 4bit needs a CUDA GPU (bitsandbytes quantizes on the GPU); drop it to train unquantized"),
        (["--max-steps", "10", "--epochs", "2"], "Error: use just one of --max-steps or --epochs"),
        (["--lora-target-modules", "query_key_value,qkv"],
         "Error: --lora-target-modules: 'qkv' is not a linear layer of {model}; its linear layers are: "
         "dense, dense_4h_to_h, dense_h_to_4h, lm_head, query_key_value"),
        (["--dtype", "bfloat16"], "Error: --dtype bfloat16: finetune trains in float32 on CPU; half precision needs --device cuda"),
        (["--eval-fraction", "1"], "Error: --eval-fraction must be at least 0 and below 1, not 1.0"),
        (["--eval-fraction", "0.95"], "Error: --eval-fraction 0.95 holds out all 8 usable rows; pass --eval-fraction 0"),
        (["--lora-dropout", "1"], "Error: --lora-dropout must be at least 0 and below 1, not 1.0"),
        (["--resume"], "Error: --resume: {out} holds no checkpoint (checkpoint-N, written every --save-steps)"),
        (["--quantize", "2bit"], "Error: Invalid value for '--quantize': '2bit' is not one of '8bit', '4bit'."),
    ],
)
def test_bad_invocations_are_one_line_and_exit_2(test_model, tmp_path, args, message):
    data = write_csv(tmp_path / "ads.csv", ["product", "description", "ad"], ADS)
    out = tmp_path / "adapter"
    result = finetune_cli(data, "-o", out, "--model", test_model[0], "--device", "cpu", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message.format(model=test_model[0].resolve(), out=out))
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_interrupt_points_at_resume(monkeypatch, test_model, tmp_path):
    from adpulse_batch import finetune

    def interrupted(settings, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "finetune", interrupted)
    result = finetune_cli(tmp_path / "ads.csv", "-o", tmp_path / "a", "--model", test_model[0])
    assert result.exit_code == 130
    assert result.stderr == (
        f"Error: interrupted; pass --resume to continue from the newest checkpoint in {tmp_path / 'a'}, if one was written\n"
    )


def test_quantize_without_bitsandbytes_says_how_to_get_it(monkeypatch, test_model, tmp_path):
    from adpulse_batch import finetune
    from adpulse_batch.errors import SettingsError
    from adpulse_batch.settings import FinetuneSettings, ModelSettings, TrainingSettings

    # As on a CUDA machine without bitsandbytes: refused before anything is read or loaded.
    monkeypatch.setattr(finetune, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(finetune, "_precision", lambda device, dtype: (torch.bfloat16, "bf16 mixed"))
    monkeypatch.setattr(finetune, "is_bitsandbytes_available", lambda: False)
    settings = FinetuneSettings(
        data=str(tmp_path / "unread.csv"), output=tmp_path / "a", model=ModelSettings(model=str(test_model[0]), adapter=None),
        training=TrainingSettings(quantize="8bit"),
    )
    needs = f"--quantize 8bit needs bitsandbytes {finetune.BITSANDBYTES_MIN_VERSION} or later: pip install 'adpulse-batch[quantize]'"
    with pytest.raises(SettingsError) as raised:
        finetune.prepare(settings)
    assert str(raised.value) == needs


def test_splits_from_file_names_and_held_out_rows(tmp_path):
    from adpulse_batch.training_data import read_training_data, split_of

    assert split_of("data/train-00000-of-00001-5a3e1f.parquet") == "train"
    assert split_of("data/test-00000-of-00001-da7439d21cc2d71e.parquet") == "test"
    assert split_of("validation/part-0.jsonl") == "validation"
    assert split_of("latest.csv") == "train" and split_of("ads.csv") == "train"

    rows = [[f"Product {i}", f"Description {i}", f"Ad {i}"] for i in range(20)]
    data = write_csv(tmp_path / "ads.csv", ["product", "description", "ad"], rows)
    held = read_training_data(str(data), eval_fraction=0.1, seed=42)
    assert (len(held.train), len(held.eval)) == (18, 2)
    assert {r.product for r in held.train} | {r.product for r in held.eval} == {r[0] for r in rows}
    assert read_training_data(str(data), eval_fraction=0.1, seed=42).eval == held.eval
    assert read_training_data(str(data), eval_fraction=0.1, seed=7).eval != held.eval
    assert read_training_data(str(data), eval_fraction=0).eval == []

    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    write_csv(folder / "data" / "train.csv", ["product", "description", "ad"], rows[:15])
    write_csv(folder / "data" / "test.csv", ["product", "description", "ad"], rows[15:])
    (folder / "README.md").write_text("not data")
    split = read_training_data(str(folder), eval_fraction=0.1)
    assert [r.product for r in split.train] == [r[0] for r in rows[:15]]
    assert [r.product for r in split.eval] == [r[0] for r in rows[15:]]
    assert split.eval_source == "the test split (5 rows)"


def test_hub_dataset_is_read_through_its_file_system(monkeypatch, tmp_path):
    """hf://datasets/OWNER/NAME goes through an fsspec file system: here a local folder laid
    out as the Hub lays out a pushed dataset (the real Hub cannot be reached from tests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    from adpulse_batch import training_data

    repo = tmp_path / "hub" / "datasets" / "acme" / "ads" / "data"
    repo.mkdir(parents=True)
    columns = ["product", "description", "ad"]
    table = {c: [r[i] for r in ADS] for i, c in enumerate(columns)}
    pq.write_table(pa.table({c: v[:6] for c, v in table.items()}), repo / "train-00000-of-00001-0a1b2c.parquet")
    pq.write_table(pa.table({c: v[6:] for c, v in table.items()}), repo / "test-00000-of-00001-3d4e5f.parquet")
    (repo.parent / "README.md").write_text("---\nlicense: mit\n---\n")
    monkeypatch.setattr(training_data, "hub_filesystem", lambda: DirFileSystem(str(tmp_path / "hub"), LocalFileSystem()))

    data = training_data.read_training_data("hf://datasets/acme/ads", eval_fraction=0.1)
    assert [r.product for r in data.train] == [r[0] for r in ADS[:6]]
    assert [r.product for r in data.eval] == [r[0] for r in ADS[6:]]
    assert data.train[4].ad == "Stay refreshed all day. Free shipping!"  # cells cleaned as run cleans them
    assert data.eval_source == "the test split (2 rows)"

    (repo / "validation-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(training_data.InputError) as raised:
        training_data.read_training_data("hf://datasets/acme/ads")
    assert str(raised.value).startswith("hf://datasets/acme/ads/data/validation-00000-of-00001.parquet is not a valid Parquet file")


def test_two_processes_train_data_parallel(test_model, tmp_path):
    """What `accelerate launch -m adpulse_batch finetune` does on several GPUs, on CPU: two
    processes (torchrun, gloo), one adapter, one voice. Also: unusable rows are dropped and
    counted, and a --template file is what the adapter records."""
    import os
    import subprocess
    import sys

    unusable = [["Pen", "Black ink", ""], ["Cup", "Blue", "  "], ["", "", "An ad for nothing"]]
    data = write_csv(tmp_path / "ads.csv", ["product", "description", "ad"], ADS + unusable)
    template = tmp_path / "template.txt"
    template.write_text("Product: {product}\nDetails: {description}\nAd:\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "adpulse_batch", "finetune", str(data), "-o", str(tmp_path / "adapter"), "--model", str(test_model[0]),
        "--device", "cpu", "--max-steps", "4", "--batch-size", "2", "--grad-accum", "1", "--warmup-steps", "0",
        "--eval-fraction", "0.25", "--eval-steps", "2", "--save-steps", "2", "--template", str(template),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    summaries = [line for line in done.stderr.splitlines() if line.startswith("trained ")]
    assert len(summaries) == 1 and summaries[0].startswith("trained 4 steps in")
    assert done.stderr.count("adpulse-batch: 6 training rows; eval rows: 2 rows held out (--eval-fraction 0.25)") == 1
    assert done.stderr.count("adpulse-batch: dropped 2 rows with an empty ad") == 1
    assert done.stderr.count("adpulse-batch: dropped 1 row with no product name or description") == 1
    meta = json.loads((tmp_path / "adapter" / "adpulse.json").read_text())
    assert meta["settings"]["processes"] == 2
    assert meta["template"] == template.read_text()  # what run will prompt with
    assert [step for step, _ in meta["history"]["eval"]] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "adapter").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
