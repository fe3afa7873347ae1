"""One EOS rule for every generation path: the generation config's ids (an id or a list), then the tokenizer's."""

import json
from types import SimpleNamespace

from icpo_core.rollout.eos import eos_token_ids, eos_token_ids_of_dir


def test_model_and_folder_give_the_same_ids_and_the_config_is_not_written():
    tok = SimpleNamespace(eos_token_id=2)
    gen_list = [7, 2, 7]
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=gen_list))
    assert eos_token_ids(model, tok) == [7, 2]
    assert gen_list == [7, 2, 7]  # the model's own generation config is read, never appended to
    assert eos_token_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=5)), tok) == [5, 2]
    assert eos_token_ids(SimpleNamespace(), SimpleNamespace(eos_token_id=None)) == []


def test_folder_reads_generation_config_then_config(tmp_path):
    tok = SimpleNamespace(eos_token_id=2)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert eos_token_ids_of_dir(tmp_path, tok) == [9, 2]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 4]}))
    assert eos_token_ids_of_dir(tmp_path, tok) == [3, 4, 2]
    assert eos_token_ids_of_dir(tmp_path / "missing", tok) == [2]
