"""Which model pairs and drafting options vLLM can use (speculative decoding), decided before any
engine starts."""

import json

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from glimp_integrations import GlimpConfigError
from glimp_integrations.backends.speculative import speculative_config

pytestmark = pytest.mark.vllm  # vLLM's speculative configuration


def _model_folder(path, tokens, embedding_rows, added=()):
    """A folder with a word-level tokenizer over `tokens` (plus `added` special tokens) and a
    config whose embedding table has `embedding_rows` rows: all that the pair check reads."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(added)})
    tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": embedding_rows}))
    return str(path)


BASE = ["<unk>", "a", "b", "c", "d"]


def test_one_vocabulary_and_one_table_size_drafts_plainly(tmp_path):
    small = _model_folder(tmp_path / "small", BASE, 8)
    large = _model_folder(tmp_path / "large", BASE, 8, added=["<think>"])
    assert speculative_config(small, large, True) == {
        "model": small,
        "method": "draft_model",
        "num_speculative_tokens": 3,
    }
    assert speculative_config(small, large, {"num_speculative_tokens": 5})["num_speculative_tokens"] == 5


def test_one_vocabulary_with_padded_tables_maps_the_drafts_tokens(tmp_path):
    # Qwen3-4B (151,936 rows) drafting for DeepSeek-R1-Distill-Qwen-32B (152,064 rows) is this case.
    small = _model_folder(tmp_path / "small", BASE, 8)
    large = _model_folder(tmp_path / "large", BASE, 16)
    config = speculative_config(small, large, True)
    assert config["use_heterogeneous_vocab"] is True and config["model"] == small


def test_different_vocabularies_fail_with_the_reason(tmp_path):
    small = _model_folder(tmp_path / "small", BASE, 8)
    large = _model_folder(tmp_path / "large", ["<unk>", "a", "c", "b", "d"], 8)
    with pytest.raises(GlimpConfigError, match="tokenize differently.*speculative=False"):
        speculative_config(small, large, True)


def test_methods_that_need_no_draft_model_skip_the_vocabulary_check():
    ngram = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}
    assert speculative_config("missing", "missing", ngram) == ngram
    eagle = {"method": "eagle3", "model": "some/eagle-head"}
    assert speculative_config("missing", "missing", eagle) == {**eagle, "num_speculative_tokens": 3}


@pytest.mark.parametrize(
    "option, fragment",
    [
        ({"num_speculative_tokens": 0}, r"`speculative\['num_speculative_tokens'\]` must be a positive int; got 0"),
        ({"method": "telepathy"}, r"`speculative\['method'\]` must be one of vLLM's methods \(ngram, .*draft_model"),
        ({"method": "eagle"}, r"`speculative\['model'\]` must name the eagle drafter"),
        ("yes", r"`speculative` must be True, False or a dict"),
    ],
)
def test_bad_options_fail_before_loading_anything(option, fragment):
    with pytest.raises(GlimpConfigError, match=fragment):
        speculative_config("missing", "missing", option)
